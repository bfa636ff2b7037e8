"""Resume: 8 steps straight == 4 steps, crash (SIGKILL), resume from the checkpoint, 4 more steps."""

import os

from dist_utils import read_metrics, run_job, tiny_args

from megakd.checkpoint import latest_iteration
from megakd.platform.faults import KILL_AT_ITER


def test_kill_and_resume_reproduces_uninterrupted_run(tiny_corpus, tmp_path):
    common = {"train.iters": 8, "checkpoint.interval": 4, "train.eval_interval": 4,
              "optim.lr_schedule": "wsd"}
    straight = tmp_path / "straight"
    run_job(tiny_args(tiny_corpus, straight, **common, **{"checkpoint.save": straight / "ckpt"}))

    crashed = tmp_path / "crashed"
    ckpt = crashed / "ckpt"
    proc = run_job(tiny_args(tiny_corpus, crashed, **common, **{"checkpoint.save": ckpt}),
                   env={KILL_AT_ITER: "6"}, check=False)
    assert proc.returncode != 0, "the fault injection should have killed the job"
    assert latest_iteration(ckpt) == 4
    assert not os.path.exists(ckpt / "iter_0000008")

    resumed = tmp_path / "resumed"
    run_job(tiny_args(tiny_corpus, resumed, **common,
                      **{"checkpoint.save": ckpt, "checkpoint.load": ckpt}))
    assert latest_iteration(ckpt) == 8

    want = read_metrics(straight / "metrics.jsonl")
    first = read_metrics(crashed / "metrics.jsonl")
    second = read_metrics(resumed / "metrics.jsonl")
    assert sorted(second) == [5, 6, 7, 8]
    for it in range(1, 9):
        got = first[it] if it <= 4 else second[it]
        for key in ("lm loss", "lr", "grad norm"):
            assert got[key] == want[it][key], (it, key)
    # validation at iteration 8 ran on the same held-out batches
    assert read_metrics(resumed / "metrics.jsonl", "valid")[8]["lm loss"] == \
        read_metrics(straight / "metrics.jsonl", "valid")[8]["lm loss"]
