"""FP8 for the output layer through Transformer Engine (Hopper or newer GPUs only).

Only the output projection's GEMM runs in FP8 (inside TE's autocast); the KD and LM losses that
consume its logits always accumulate in fp32 (megakd.losses). Asking for FP8 where it cannot run is
a one-line PlatformError naming the fix, never a silent fallback.
"""

import contextlib

from megakd.errors import PlatformError

MIN_CAPABILITY = (9, 0)  # Hopper
RECIPES = ("delayed", "current")


def _transformer_engine():
    """Import TE's PyTorch API, or raise the PlatformError that says how to get it."""
    try:
        import transformer_engine.pytorch as te
        from transformer_engine.common import recipe
    except Exception as e:  # ImportError, or TE's own errors when its CUDA libraries are missing
        raise PlatformError(
            f"fp8 needs Transformer Engine (import failed: {type(e).__name__}); "
            "install transformer-engine[pytorch] on a CUDA machine or set fp8 off"
        ) from None
    return te, recipe


def require_fp8():
    """Check that FP8 can run here (CUDA, compute capability >= 9.0, TE importable); return TE's modules."""
    import torch

    if not torch.cuda.is_available():
        raise PlatformError("fp8 needs a CUDA GPU (none is available here); set fp8 off to run without it")
    cc = torch.cuda.get_device_capability()
    if tuple(cc) < MIN_CAPABILITY:
        raise PlatformError(
            f"fp8 needs a Hopper-or-newer GPU (compute capability >= 9.0, this one is {cc[0]}.{cc[1]}); "
            "set fp8 off"
        )
    return _transformer_engine()


def make_recipe(recipe_module, kind="delayed"):
    """TE recipe: 'delayed' = DelayedScaling (amax history), 'current' = Float8CurrentScaling.
    HYBRID = E4M3 forward, E5M2 gradients."""
    fmt = recipe_module.Format.HYBRID
    if kind == "delayed":
        return recipe_module.DelayedScaling(fp8_format=fmt, amax_history_len=1024, amax_compute_algo="max")
    if kind == "current":
        return recipe_module.Float8CurrentScaling(fp8_format=fmt)
    raise ValueError(f"unknown fp8 recipe {kind!r}; choose one of {list(RECIPES)}")


@contextlib.contextmanager
def fp8_output_context(enabled: bool, recipe: str = "delayed", amax_group=None):
    """Run the enclosed TE layers (the output layer) in FP8; a no-op when not enabled.

    amax_group: process group over which TE reduces amax (e.g. the TP group)."""
    if not enabled:
        yield
        return
    if recipe not in RECIPES:
        raise ValueError(f"unknown fp8 recipe {recipe!r}; choose one of {list(RECIPES)}")
    te, recipe_module = require_fp8()
    fp8_recipe = make_recipe(recipe_module, recipe)
    if hasattr(te, "autocast"):  # newer TE renamed fp8_autocast to autocast (old name deprecated)
        ctx = te.autocast(enabled=True, recipe=fp8_recipe, amax_reduction_group=amax_group)
    else:
        ctx = te.fp8_autocast(enabled=True, fp8_recipe=fp8_recipe, fp8_group=amax_group)
    with ctx:
        yield
