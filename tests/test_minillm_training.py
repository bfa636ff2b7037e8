"""MiniLLM and its baselines end to end (examples/train_minillm.py on CPU/gloo).

The teacher is a tiny model fine-tuned on a toy instruction task (answer = the prompt's words
reversed); the student is smaller and only briefly fine-tuned, so the two really differ.
"""

import json
import math
import os
import random

import pytest

from conftest import WORDS
from dist_utils import REPO, read_metrics, run_job

from megakd.config import load_config
from megakd.errors import ConfigError

SCRIPT = os.path.join(REPO, "examples", "train_minillm.py")
SMALL = {"model.num_layers": 1, "model.hidden_size": 32}


def write_task(path, n, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            w = rng.choices(WORDS[:30], k=rng.randint(2, 4))
            f.write(json.dumps({"prompt": " ".join(w), "response": " ".join(reversed(w)) + "."}) + "\n")
    return path


@pytest.fixture(scope="module")
def task(tiny_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("minillm")
    return {"tok": tiny_corpus[0], "prefix": tiny_corpus[1], "work": work,
            "train": write_task(work / "train.jsonl", 64, 0), "valid": write_task(work / "valid.jsonl", 8, 1)}


def train(task, method, work, nproc=1, **overrides):
    args = {"data.tokenizer": task["tok"], "minillm.train_data": task["train"],
            "minillm.valid_data": task["valid"], "model.num_layers": 2, "model.hidden_size": 64,
            "model.num_attention_heads": 4, "model.num_query_groups": 2, "train.seq_length": 64,
            "train.micro_batch_size": 4, "train.global_batch_size": 8, "optim.lr": 3e-3,
            "optim.warmup_iters": 1, "minillm.max_new_tokens": 16, "log.interval": 1,
            "log.metrics_file": f"{work}/metrics.jsonl", **overrides}
    run_job(["--method", method, *[f"{k}={v}" for k, v in args.items()]], nproc=nproc, script=SCRIPT)
    return read_metrics(f"{work}/metrics.jsonl"), read_metrics(f"{work}/metrics.jsonl", "valid")


@pytest.fixture(scope="module")
def models(task):
    w = task["work"]
    teacher, student = w / "teacher", w / "student"
    train(task, "sft", w / "t", **{"train.iters": 40, "optim.lr_schedule": "constant",
                                   "checkpoint.save": teacher})
    train(task, "sft", w / "s", **SMALL, **{"train.iters": 10, "checkpoint.save": student})
    return {"teacher.checkpoint": teacher, "checkpoint.pretrained": student}


def test_minillm_lowers_reverse_kl_to_teacher_on_held_out_prompts(task, models, tmp_path):
    steps, valid = train(task, "minillm", tmp_path, **SMALL, **models,
                         **{"train.iters": 16, "optim.lr": 3e-3, "optim.lr_schedule": "constant"})
    first, last = valid[0], valid[16]
    assert last["rkl_sampled"] < first["rkl_sampled"] - 0.1, (first, last)
    assert last["rkl_reference"] < first["rkl_reference"], (first, last)
    for key in ("reward", "reverse kl", "clip fraction", "response length", "importance weight"):
        assert key in steps[1]


def test_minillm_tp2_and_dp2_match_one_process_with_mixing_clipping_and_lm_term(task, models, tmp_path):
    args = {**SMALL, **models, "train.iters": 4, "minillm.teacher_mix": 0.2, "minillm.lm_coef": 0.5,
            "data.prefix": task["prefix"], "data.cache_dir": tmp_path / "cache",
            "minillm.valid_data": "null"}
    ref, _ = train(task, "minillm", tmp_path / "tp1", **args)
    assert 0 < ref[2]["importance weight"] and ref[2]["lm loss"] > 0
    for name, layout in {"tp2": {"parallel.tp": 2}, "dp2": {}}.items():
        got, _ = train(task, "minillm", tmp_path / name, nproc=2, **args, **layout)
        for key in ("loss", "reward", "reverse kl", "clip fraction", "lm loss", "grad norm", "response length"):
            assert [got[i][key] for i in range(1, 5)] == pytest.approx(
                [ref[i][key] for i in range(1, 5)], rel=2e-4, abs=1e-6), (name, key)


def bf16_minillm_run(task, models, work):
    """Two MiniLLM steps of a bf16 student (the teacher in its own fp32) through every path that
    makes tensors: teacher-mixed rollouts, the LM term, evaluation. Every logged number is finite and
    no step is skipped. Runs on the device the job finds (tests/test_gpu_minillm.py: CUDA)."""
    steps, valid = train(task, "minillm", work, **SMALL, **models,
                         **{"train.iters": 2, "model.precision": "bf16", "minillm.teacher_mix": 0.2,
                            "minillm.lm_coef": 0.5, "data.prefix": task["prefix"],
                            "data.cache_dir": work / "cache"})
    assert sorted(steps) == [1, 2] and sorted(valid) == [0, 2]
    for m in [*steps.values(), *valid.values()]:
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
        assert "skipped" not in m, m
    assert steps[1]["lm loss"] > 0 and steps[1]["response length"] > 0
    return steps, valid


def test_minillm_in_bf16_ends_with_finite_losses(task, models, tmp_path):
    bf16_minillm_run(task, models, tmp_path)


def test_kd_and_seqkd_baselines(task, models, tmp_path):
    kd, _ = train(task, "kd", tmp_path / "kd", **SMALL, **models,
                  **{"train.iters": 3, "kd.alpha": 0.5, "minillm.valid_data": "null"})
    assert kd[1]["kd loss"] > 0.05 and kd[1]["loss"] == pytest.approx(
        0.5 * kd[1]["lm loss"] + 0.5 * kd[1]["kd loss"], rel=1e-5)
    seqkd, _ = train(task, "seqkd", tmp_path / "seqkd", **SMALL, **models,
                     **{"train.iters": 1, "minillm.valid_data": "null"})
    # same student, same first batch of prompts: the KD run's LM term is the CE on the references,
    # SeqKD's targets are the teacher's answers
    assert seqkd[1]["lm loss"] != pytest.approx(kd[1]["lm loss"], rel=1e-3)


@pytest.mark.parametrize("overrides, message", [
    (["minillm.method=minillm"], "needs minillm.train_data"),
    (["minillm.method=kd", "minillm.train_data=x.jsonl"], "needs exactly one of teacher.checkpoint"),
    (["minillm.method=minillm", "minillm.train_data=x", "teacher.checkpoint=t", "minillm.lm_coef=1"],
     "needs pre-training data in data.prefix"),
    (["minillm.method=sft", "minillm.train_data=x", "parallel.pp=2"], "parallel.pp=1 only"),
    (["minillm.method=sft", "minillm.train_data=x", "checkpoint.load=c"], "cannot resume"),
    (["minillm.method=minillm", "minillm.train_data=x", "teacher.checkpoint=t",
      "minillm.teacher_mix=1.0"], "minillm.teacher_mix=1.0 must be in [0, 1)"),
])
def test_minillm_config_errors(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.tokenizer=t", *overrides])
    assert message in str(e.value)


def test_tools_preprocess_generate_and_evaluate(task, models, tmp_path):
    """preprocess_sft keeps the prompt/response boundary; the teacher's greedy answers
    (generate_responses, 2 DP ranks) are what the teacher itself reproduces at a tiny temperature
    (Rouge-L 100), and its reverse KL to itself is 0."""
    import importlib.util

    from megakd.data.indexed import read_parts
    from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
    from megakd.minillm.data import encode, read_jsonl

    spec = importlib.util.spec_from_file_location("preprocess_sft", os.path.join(REPO, "tools", "preprocess_sft.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    prefix = str(tmp_path / "valid_sft")
    tool.main(["--input", str(task["valid"]), "--tokenizer", task["tok"], "--output-prefix", prefix,
               "--max-length", "64"])
    tok = MegatronTokenizer(load_tokenizer(task["tok"]))
    assert read_parts(prefix) == [list(encode(tok, r, 64)) for r in read_jsonl(task["valid"])]

    teacher = str(models["teacher.checkpoint"])
    answers = tmp_path / "answers.jsonl"
    run_job(["--model", teacher, "--tokenizer", task["tok"], "--input", task["valid"], "--output", answers,
             "--max-new-tokens", 12], nproc=2, script=os.path.join(REPO, "tools", "generate_responses.py"))
    assert [r["prompt"] for r in read_jsonl(answers)] == [r["prompt"] for r in read_jsonl(task["valid"])]
    out = tmp_path / "eval.json"
    run_job(["--student", teacher, "--teacher", teacher, "--tokenizer", task["tok"], "--data", answers,
             "--seeds", 1, 2, "--temperature", 1e-4, "--max-new-tokens", 12, "--output", out],
            script=os.path.join(REPO, "tools", "eval_generation.py"))
    result = json.loads(out.read_text())
    assert result["rougeL"] == pytest.approx(100.0) and result["rougeL_seed2"] == pytest.approx(100.0)
    assert result["rkl_reference"] == pytest.approx(0.0, abs=1e-6)
