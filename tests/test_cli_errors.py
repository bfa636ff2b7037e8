"""Bad input to the training entry point: one line on stderr, exit status 2, nothing written."""

import os
import shutil

import pytest
import torch

from dist_utils import run_job, tiny_args


def _fails_with_one_line(args, expect, tmp_path, nproc=1):
    proc = run_job(args, nproc=nproc, check=False, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert lines and expect in lines[0], proc.stderr[-2000:]
    if nproc == 1:
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == lines[:1], proc.stderr[-2000:]
    else:  # torchrun prints its own ChildFailedError summary; no megakd frames in it
        assert len(lines) >= nproc and 'megakd/' not in proc.stderr.replace(lines[0], "")
    assert not os.path.exists(tmp_path / "metrics.jsonl")
    return proc


@pytest.mark.parametrize("overrides, expect", [
    ({"train.itres": 3}, "unknown config key 'train.itres' (did you mean 'train.iters'?)"),
    ({"parallel.tp": 3}, "parallel.tp=3 does not divide model.num_attention_heads=4"),
    ({"data.prefix": "/nonexistent/corpus"}, "missing /nonexistent/corpus.idx"),
    ({"data.tokenizer": "/nonexistent/tok"}, "tokenizer path /nonexistent/tok does not exist"),
    ({"checkpoint.pretrained": "/nonexistent/ckpt"}, "checkpoint path /nonexistent/ckpt does not exist"),
    pytest.param({"model.fp8": True, "model.precision": "bf16"}, "model.fp8 needs a CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only case")),
], ids=["unknown-key", "tp-heads", "data-prefix", "tokenizer", "checkpoint", "fp8-on-cpu"])
def test_bad_config(overrides, expect, tiny_corpus, tmp_path):
    _fails_with_one_line(tiny_args(tiny_corpus, tmp_path, **overrides), expect, tmp_path)


@pytest.mark.parametrize("damage", ["truncate-idx", "truncate-bin", "garbage-idx"])
def test_corrupt_dataset(damage, tiny_corpus, tmp_path):
    tok_dir, prefix = tiny_corpus
    copy = str(tmp_path / "copy")
    for ext in (".bin", ".idx"):
        shutil.copy(prefix + ext, copy + ext)
    path = copy + (".bin" if damage == "truncate-bin" else ".idx")
    size = os.path.getsize(path)
    if damage == "garbage-idx":
        with open(path, "r+b") as f:
            f.write(b"NOTANIDX" * 2)
    else:
        os.truncate(path, size // 2)
    _fails_with_one_line(tiny_args((tok_dir, copy), tmp_path), "dataset", tmp_path)


def test_world_size_not_multiple_of_model_parallel(tiny_corpus, tmp_path):
    """Under torchrun every rank names the problem in one line (torchrun adds its own summary)."""
    _fails_with_one_line(tiny_args(tiny_corpus, tmp_path, **{"parallel.tp": 2, "parallel.pp": 2}),
                         "world size 2 is not a multiple of parallel.tp*parallel.pp=4", tmp_path,
                         nproc=2)
