"""model.fp8 (what it covers: its docstring in megakd/config.py) the way megatron-core does it.

The recipe goes on the TransformerConfig; megatron-core's TransformerBlock then runs its layers
inside Transformer Engine's fp8_autocast, where only TE modules (the TE layer spec's linears) compute
in FP8. The output layer is megatron's own ColumnParallelLinear, outside the block, so the logits and
the losses on them stay in bf16/fp32. Asking for FP8 where it cannot run is a one-line PlatformError
naming the fix, never a silent fallback.
"""

from megakd.errors import PlatformError

MIN_CAPABILITY = (8, 9)  # Ada and Hopper: the first GPUs with FP8 tensor cores

RECIPE = dict(fp8="hybrid", fp8_recipe="delayed", fp8_amax_history_len=1024,
              fp8_amax_compute_algo="max")
"""TransformerConfig fields: E4M3 forward, E5M2 gradients, scales from the largest amax of the last
1024 steps (the settings of Megatron-LM's FP8 training examples)."""


def transformer_engine_error():
    """None when Transformer Engine's PyTorch API imports here, else the name of the failure."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception as e:  # ImportError, or TE's own errors when its CUDA libraries are missing
        return type(e).__name__
    return None


def require_fp8() -> None:
    """Raise the one-line PlatformError that says why FP8 cannot run here (CUDA, compute capability
    >= 8.9, Transformer Engine), if it cannot."""
    import torch

    if not torch.cuda.is_available():
        raise PlatformError("model.fp8 needs a CUDA GPU (none is available here); set model.fp8=false")
    cc = tuple(torch.cuda.get_device_capability())
    if cc < MIN_CAPABILITY:
        raise PlatformError(f"model.fp8 needs a GPU of compute capability >= 8.9 (Ada, Hopper or newer; "
                            f"this one is {cc[0]}.{cc[1]}); set model.fp8=false")
    error = transformer_engine_error()
    if error is not None:
        raise PlatformError(f"model.fp8 needs Transformer Engine (import failed: {error}); use the GPU "
                            f"container (Dockerfile) or install transformer-engine[pytorch], or set "
                            f"model.fp8=false")
