"""megakd.platform.fp8: the error path on machines without FP8, and the TE call on a stand-in TE."""

import contextlib
import sys
import types

import pytest
import torch

from megakd.errors import PlatformError
from megakd.platform import fp8


def test_disabled_is_a_no_op():
    with fp8.fp8_output_context(False):
        x = torch.ones(2) * 3
    assert x.sum() == 6


def test_no_cuda_is_a_one_line_platform_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PlatformError, match="CUDA GPU.*set fp8 off") as err:
        with fp8.fp8_output_context(True):
            pass
    assert "\n" not in str(err.value)


def test_pre_hopper_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.raises(PlatformError, match="compute capability >= 9.0, this one is 8.0"):
        fp8.require_fp8()


def test_missing_transformer_engine_names_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setitem(sys.modules, "transformer_engine", None)  # import fails
    with pytest.raises(PlatformError, match="install transformer-engine"):
        fp8.require_fp8()


@pytest.mark.parametrize("new_api", [True, False])
@pytest.mark.parametrize("recipe", ["delayed", "current"])
def test_enabled_enters_te_autocast_with_the_recipe(monkeypatch, new_api, recipe):
    """With a stand-in TE (its real signatures), the context enters TE's autocast with our recipe."""
    calls = []

    @contextlib.contextmanager
    def autocast(enabled=True, calibrating=False, recipe=None, amax_reduction_group=None, _graph=False):
        calls.append(("autocast", enabled, recipe, amax_reduction_group))
        yield

    @contextlib.contextmanager
    def fp8_autocast(enabled=True, calibrating=False, fp8_recipe=None, fp8_group=None, _graph=False):
        calls.append(("fp8_autocast", enabled, fp8_recipe, fp8_group))
        yield

    te_pt = types.SimpleNamespace(fp8_autocast=fp8_autocast, **({"autocast": autocast} if new_api else {}))
    rec = types.SimpleNamespace(
        Format=types.SimpleNamespace(HYBRID="HYBRID"),
        DelayedScaling=lambda **kw: ("DelayedScaling", kw),
        Float8CurrentScaling=lambda **kw: ("Float8CurrentScaling", kw),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(fp8, "_transformer_engine", lambda: (te_pt, rec))
    with fp8.fp8_output_context(True, recipe=recipe, amax_group="tp"):
        pass
    (name, enabled, used_recipe, group), = calls
    assert name == ("autocast" if new_api else "fp8_autocast") and enabled and group == "tp"
    assert used_recipe[0] == {"delayed": "DelayedScaling", "current": "Float8CurrentScaling"}[recipe]
    assert used_recipe[1]["fp8_format"] == "HYBRID"


def test_unknown_recipe():
    with pytest.raises(ValueError, match="fp8 recipe"):
        with fp8.fp8_output_context(True, recipe="mxfp4"):
            pass
