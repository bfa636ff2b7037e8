"""TargetSpec: the KD target (kind, kind args, temperature, top-p, top-k) as one frozen value,
validated once, built from the config and taken whole by the loss and the truncation."""

import dataclasses

import pytest
import torch

try:  # tests/ as a package or as a plain directory on sys.path
    from tests import losses_reference as ref
except ImportError:
    import losses_reference as ref
from megakd.config import load_config
from megakd.errors import ConfigError
from megakd.losses import KINDS, TargetSpec, distill_loss, fuses_lm, keep_top, truncate_teacher
from megakd.losses.targets import SparseTarget


def logits(*shape, seed=0):
    return 2.0 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "kld"}, "kd.kind='kld' is not one of"),
    ({"temperature": 0.0}, "kd.temperature must be a finite number > 0, got 0.0"),
    ({"temperature": float("inf")}, "kd.temperature must be a finite number > 0"),
    ({"top_p": 0.0}, "kd.top_p must be in (0, 1], got 0.0"),
    ({"top_p": 1.5}, "kd.top_p must be in (0, 1], got 1.5"),
    ({"top_k": -1}, "kd.top_k must be an int >= 0 (0 = no top-k), got -1"),
    ({"top_k": 2.5}, "kd.top_k must be an int >= 0"),
    ({"kind": "mse", "top_k": 5}, "kd.kind=mse compares full logits: set kd.top_p=1.0 and kd.top_k=0"),
    ({"kind": "fkl", "kind_args": {"beta": 0.5}}, "kind 'fkl' takes no argument(s) ['beta']; its parameters: none"),
    ({"kind": "jsd", "kind_args": {"skew": 0.5}}, "kind 'jsd' takes no argument(s) ['skew']; its parameters: ['beta']"),
    ({"kind": "jsd", "kind_args": {"beta": 1.0}}, "beta must be in (0, 1) for kind 'jsd', got 1.0"),
    ({"kind": "sfkl", "kind_args": {"skew": 0.0}}, "skew must be in (0, 1) for kind 'sfkl', got 0.0"),
    ({"kind": "srkl", "kind_args": {"skew": "a lot"}}, "kind 'srkl' takes numbers for ['skew']"),
])
def test_invalid_settings_are_one_line_config_errors_naming_the_key(kwargs, message):
    with pytest.raises(ConfigError) as e:
        TargetSpec(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "kind_args" in kwargs or "kd." in str(e.value)
    if "kind_args" in kwargs:
        assert str(e.value).startswith("kd.kind_args=")


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_args_are_checked_against_the_kinds_own_parameters(kind):
    """Every kind accepts exactly the parameters its term declares in losses/terms.py, and an
    unknown one is refused with the kind's parameters named."""
    params = KINDS[kind][1]
    spec = TargetSpec(kind, {p: 0.3 for p in params})
    assert spec.args == {p: 0.3 for p in params}
    assert all(getattr(spec.term(), p) == 0.3 for p in params)
    with pytest.raises(ConfigError, match=f"its parameters: {list(params) or 'none'}".replace("[", r"\[")):
        TargetSpec(kind, {"not_a_parameter": 0.3})


def test_spec_is_frozen_hashable_and_owns_its_kind_args():
    args = {"beta": 0.3}
    spec = TargetSpec("jsd", args, temperature=2.0, top_p=0.9, top_k=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.top_k = 0
    args["beta"] = 0.9  # the caller's mapping is copied, not kept
    assert spec.args == {"beta": 0.3} and spec.kind_args == (("beta", 0.3),)
    assert spec == TargetSpec("jsd", (("beta", 0.3),), 2.0, 0.9, 8) and len({spec, TargetSpec("jsd", {"beta": 0.3}, 2.0, 0.9, 8)}) == 1
    assert spec.truncates and spec.sparse and not spec.untruncated().truncates
    assert spec.untruncated() == TargetSpec("jsd", {"beta": 0.3}, 2.0)
    assert TargetSpec("nll").sparse and not TargetSpec("fkl").sparse


def test_spec_form_equals_the_keyword_form():
    s, t = logits(3, 4, 11, seed=1), logits(3, 4, 11, seed=2)
    spec = TargetSpec("sfkl", {"skew": 0.2}, temperature=1.5, top_p=0.9, top_k=5)
    torch.testing.assert_close(distill_loss(s, t, spec),
                               distill_loss(s, t, kind="sfkl", temperature=1.5, top_p=0.9, top_k=5, skew=0.2),
                               rtol=0, atol=0)
    a, b = truncate_teacher(t, spec), truncate_teacher(t, temperature=1.5, top_p=0.9, top_k=5)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.logprobs, b.logprobs)
    wide = truncate_teacher(t, temperature=1.5, top_k=8)
    kept, again = keep_top(wide, spec), keep_top(wide, top_p=0.9, top_k=5)
    assert torch.equal(kept.ids, again.ids) and torch.equal(kept.logprobs, again.logprobs)
    assert fuses_lm(t, spec) and not fuses_lm(t, spec.untruncated()) and fuses_lm(a, spec.untruncated())
    with pytest.raises(ValueError, match="either a TargetSpec or loose settings"):
        distill_loss(s, t, spec, top_k=3)
    with pytest.raises(ValueError, match="spec must be a TargetSpec"):
        distill_loss(s, t, {"kind": "fkl"})


def test_a_truncating_spec_cuts_a_sparse_target_again():
    s, t = logits(2, 5, 13, seed=3), logits(2, 5, 13, seed=4)
    spec = TargetSpec("rkl", temperature=2.0, top_p=0.8, top_k=4)
    wide = truncate_teacher(t, temperature=2.0)
    got = distill_loss(s, wide, spec)
    torch.testing.assert_close(got, distill_loss(s, keep_top(wide, spec), spec.untruncated()), rtol=0, atol=0)
    assert isinstance(wide, SparseTarget)


def test_config_kind_args_reach_the_loss():
    """kd.kind=jsd with kd.kind_args={beta: 0.3}: the spec built from the config gives the loss at
    beta 0.3 (the plain reference's), not at the default 0.5."""
    cfg = load_config(None, ["data.prefix=p", "data.tokenizer=t", "kd.kind=jsd", "kd.kind_args={beta: 0.3}",
                             "kd.temperature=1.5", "kd.top_k=6"])
    spec = cfg.kd.spec()
    assert spec == TargetSpec("jsd", {"beta": 0.3}, temperature=1.5, top_k=6)
    s, t = logits(2, 3, 17, seed=5), logits(2, 3, 17, seed=6)
    got = distill_loss(s, t, spec)
    torch.testing.assert_close(got, ref.loss(s, t, "jsd", 1.5, 1.0, 6, beta=0.3))
    default = distill_loss(s, t, TargetSpec("jsd", temperature=1.5, top_k=6))
    torch.testing.assert_close(default, ref.loss(s, t, "jsd", 1.5, 1.0, 6))
    assert (got - default).abs().min() > 1e-4
    dotted = load_config(None, ["data.prefix=p", "data.tokenizer=t", "kd.kind=jsd", "kd.kind_args.beta=0.3"])
    assert dotted.kd.kind_args == {"beta": 0.3}


@pytest.mark.parametrize("override, message", [
    (["kd.kind=jsd", "kd.kind_args={beta: 1.5}"], "kd.kind_args={'beta': 1.5}: beta must be in (0, 1) for kind 'jsd'"),
    (["kd.kind_args={beta: 0.3}"], "kd.kind_args={'beta': 0.3}: kind 'fkl' takes no argument(s) ['beta']; its parameters: none"),
    (["kd.kind_args=0.3"], "config key 'kd.kind_args' expects a mapping"),
    (["kd.kind=jsd", "kd.kind_args={beta: high}"], "config key 'kd.kind_args.beta' expects float, got 'high'"),
    (["kd.top_p=0"], "kd.top_p must be in (0, 1], got 0.0"),
    (["kd.temperature=-1"], "kd.temperature must be a finite number > 0, got -1.0"),
])
def test_config_refuses_bad_kd_settings_when_loading(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.prefix=p", "data.tokenizer=t", *override])
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("flags, message", [
    ({"top_p": 0.0}, "--top-p must be in (0, 1], got 0.0"),
    ({"temperature": -1.0}, "--temperature must be a finite number > 0, got -1.0"),
])
def test_dump_arguments_are_checked_by_the_spec_naming_the_flags(flags, message):
    from megakd.teacher.dump import DumpArgs

    args = DumpArgs("prefix", "tokenizer", "out", teacher="ckpt", **flags)
    with pytest.raises(ConfigError) as e:
        args.validate()
    assert str(e.value) == message
    ok = DumpArgs("prefix", "tokenizer", "out", teacher="ckpt", top_p=0.9, top_k=7, temperature=2.0)
    ok.validate()
    assert ok.spec == TargetSpec(temperature=2.0, top_p=0.9, top_k=7)
