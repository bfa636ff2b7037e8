"""Typed config: YAML + dotted overrides, unknown keys and bad values are one-line errors."""

import dataclasses
import os

import pytest

from megakd.config import Config, load_config
from megakd.errors import ConfigError

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny_cpu.yaml")


def test_tiny_config_loads_with_required_keys():
    cfg = load_config(TINY)
    for key in ("parallel.tp", "parallel.pp", "train.iters", "train.micro_batch_size",
                "train.global_batch_size", "train.seq_length", "data.prefix", "checkpoint.save",
                "checkpoint.load", "checkpoint.interval", "log.tensorboard_dir"):
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key
    assert cfg.model.arch == "llama" and cfg.optim.lr_schedule == "wsd"


def test_overrides_are_yaml_typed():
    cfg = load_config(TINY, ["parallel.tp=2", "optim.lr=1e-3", "checkpoint.load=null",
                             "data.prefix=[0.3, a, 0.7, b]", "model.fp8=false"])
    assert cfg.parallel.tp == 2 and cfg.optim.lr == 1e-3 and cfg.checkpoint.load is None
    assert cfg.data.prefix == [0.3, "a", 0.7, "b"]


@pytest.mark.parametrize("override, message", [
    (["train.itres=5"], "unknown config key 'train.itres' (did you mean 'train.iters'?)"),
    (["trian.iters=5"], "unknown config key 'trian'"),
    (["train.iters=five"], "config key 'train.iters' expects int, got 'five'"),
    (["model.arch=bert"], "config key 'model.arch' must be one of ['llama', 'gpt2'], got 'bert'"),
    (["parallel.tp=3"], "parallel.tp=3 does not divide model.num_attention_heads=4"),
    (["model.num_query_groups=3"], "model.num_query_groups=3 must divide"),
    (["train.global_batch_size=6", "train.micro_batch_size=4"], "is not a multiple of"),
    (["parallel.pp=3"], "parallel.pp=3 does not divide model.num_layers=4"),
    (["train.iters=-1"], "train.iters=-1 must not be negative"),
    (["noequals"], "is not of the form key.sub=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(TINY, override)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_world_size_checks():
    cfg = load_config(TINY, ["parallel.tp=2"])
    with pytest.raises(ConfigError, match="world size 3 is not a multiple"):
        cfg.validate(world_size=3)
    with pytest.raises(ConfigError, match="micro_batch_size\\*data_parallel"):
        load_config(TINY, ["train.global_batch_size=4"], world_size=4)


def test_missing_file_and_defaults(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    assert Config().parallel.tp == 1
    with pytest.raises(ConfigError, match="data.prefix is not set"):
        load_config(None)


def test_teacher_runs_as_the_student_unless_set():
    from megakd.config import Runtime

    cfg = load_config(TINY, ["model.precision=bf16", "model.transformer_impl=local"])
    assert cfg.teacher.precision is None and cfg.teacher.transformer_impl is None
    assert cfg.teacher_runtime() == Runtime(precision="bf16", transformer_impl="local")
    cfg = load_config(TINY, ["model.precision=bf16", "teacher.precision=fp32",
                             "teacher.transformer_impl=transformer_engine"])
    assert cfg.teacher_runtime() == Runtime(precision="fp32", transformer_impl="transformer_engine")
    # what a saved model then runs as: the runtime's settings, forward-only, never FP8
    saved = dataclasses.replace(cfg.model, precision="fp16", fp8=True, hidden_dropout=0.1)
    ran = cfg.teacher_runtime().apply(saved)
    assert (ran.precision, ran.transformer_impl, ran.fp8, ran.hidden_dropout) == (
        "fp32", "transformer_engine", False, 0.0)
    with pytest.raises(ConfigError, match="'teacher.precision' must be one of"):
        load_config(TINY, ["teacher.precision=fp8"])
