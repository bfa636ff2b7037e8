"""model.fp8: megatron-core's FP8 recipe on the TransformerConfig, run by Transformer Engine's linears.

On CPU: the one-line errors (the machine-independent rules through the real config; what a machine
without FP8 says, with its CUDA answers stood in for; the CPU case end to end is in
test_cli_errors.py) and the recipe the TransformerConfig carries. On a GPU of compute capability
>= 8.9 with TE: one training step whose TE linears really compute in FP8.
"""

import math
import sys

import pytest
import torch

from dist_utils import tiny_args

from megakd.config import load_config
from megakd.errors import ConfigError, PlatformError
from megakd.models import gpt
from megakd.platform import fp8

FP8 = ["model.fp8=true", "model.precision=bf16"]


def _config(*overrides):
    return load_config(None, ["data.prefix=p", "data.tokenizer=t", *overrides])


def _one_line(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message and all(p in message for p in parts), message


@pytest.fixture
def fp8_gpu(monkeypatch):
    """This process as a machine FP8 runs on: CUDA, compute capability 9.0, TE importable."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(fp8, "transformer_engine_error", lambda: None)


@pytest.mark.parametrize("overrides, parts", [
    (["model.fp8=true"], ["model.fp8 needs model.precision=bf16 or fp16", "model.fp8=false"]),
    ([*FP8, "model.transformer_impl=local"],
     ["model.transformer_impl=local does not have", "set it to auto or transformer_engine"]),
], ids=["fp32", "local"])
def test_config_rules_are_one_line_errors(overrides, parts):
    with pytest.raises(ConfigError) as e:
        _config(*overrides)
    _one_line(e, *parts)


def test_resolved_transformer_config_carries_the_fp8_recipe(fp8_gpu):
    cfg = _config(*FP8)
    tc = gpt.transformer_config(cfg.model, cfg.parallel)
    assert (tc.fp8, tc.fp8_recipe, tc.fp8_amax_history_len, tc.fp8_amax_compute_algo) == (
        "hybrid", "delayed", 1024, "max")
    assert tc.bf16 and tc.params_dtype == torch.bfloat16  # what the output layer and the rest keep
    assert gpt.use_transformer_engine(cfg.model)  # the TE spec: its linears are what run in FP8
    assert gpt.transformer_config(_config().model, cfg.parallel).fp8 is None


def test_local_spec_with_fp8_is_refused_where_fp8_could_run(fp8_gpu):
    """It used to train silently without FP8 on such a machine (an unvalidated ModelConfig too)."""
    cfg = _config(*FP8)
    cfg.model.transformer_impl = "local"
    with pytest.raises(ConfigError) as e:
        gpt.transformer_config(cfg.model, cfg.parallel)
    _one_line(e, "model.transformer_impl=local")


@pytest.mark.parametrize("cuda, cc, te_error, parts", [
    (False, None, None, ["needs a CUDA GPU", "set model.fp8=false"]),
    (True, (8, 6), None, ["compute capability >= 8.9", "this one is 8.6", "set model.fp8=false"]),
    (True, (8, 9), "ImportError", ["needs Transformer Engine (import failed: ImportError)",
                                   "transformer-engine[pytorch]", "model.fp8=false"]),
], ids=["no-cuda", "ampere", "no-te"])
def test_machines_without_fp8_are_one_line_platform_errors(monkeypatch, cuda, cc, te_error, parts):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cc)
    monkeypatch.setattr(fp8, "transformer_engine_error", lambda: te_error)
    cfg = _config(*FP8)
    with pytest.raises(PlatformError) as e:
        gpt.transformer_config(cfg.model, cfg.parallel)
    _one_line(e, *parts)


def test_a_failing_te_import_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_engine", None)  # import fails
    assert fp8.transformer_engine_error() == "ModuleNotFoundError"


@pytest.mark.gpu
def test_fp8_step_runs_the_te_linears_in_fp8(tiny_corpus, tmp_path):
    """One bf16 training step with model.fp8=true: every TE linear of the decoder computes inside
    TE's FP8 autocast, with FP8 on; the output layer outside it."""
    try:
        import transformer_engine.pytorch as te
        from transformer_engine.pytorch.fp8 import FP8GlobalStateManager
    except Exception as e:  # ImportError, or TE's own errors when its CUDA libraries are missing
        pytest.skip(f"Transformer Engine is not importable here ({type(e).__name__}: {e})")
    cc = torch.cuda.get_device_capability()
    if cc < fp8.MIN_CAPABILITY:
        pytest.skip(f"FP8 needs compute capability >= 8.9, this GPU is {cc[0]}.{cc[1]}")
    from megakd import platform
    from megakd.training.trainer import Trainer

    cfg = load_config(None, tiny_args(tiny_corpus, tmp_path, **{
        "model.precision": "bf16", "model.fp8": True, "train.iters": 1}))
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = (FP8GlobalStateManager.is_fp8_enabled(), bool(getattr(module, "fp8", False)))
        return hook

    try:
        trainer = Trainer(cfg)
        linears = [n for n, m in trainer.model.named_modules()
                   if isinstance(m, (te.Linear, te.LayerNormLinear))]
        for name in linears:
            trainer.model.get_submodule(name).register_forward_hook(record(name))
        trainer.model.output_layer.register_forward_hook(record("output_layer"))
        metrics = trainer.train_step()
    finally:
        platform.destroy()
    assert len(linears) == 4 * cfg.model.num_layers, linears  # qkv, proj, fc1, fc2 per layer
    assert all(seen[name] == (True, True) for name in linears), seen
    assert not isinstance(trainer.model.output_layer, te.Linear) and not seen["output_layer"][0]
    assert math.isfinite(metrics["lm loss"]) and math.isfinite(metrics["grad norm"])
