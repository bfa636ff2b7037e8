"""LM-only training throughput of the tiny config at TP=1 and TP=2 (and DP=2) on this machine.

    python benchmarks/bench_train_step.py [--iters 20] [--seq 128]

Needs the demo data (scripts/demo.sh makes it). Each layout is a real torchrun job; the figure is the
median step time after warm-up, read from the job's metrics file; ratios are against TP=1 measured
in the same invocation. Every rank uses one thread, so TP=1 uses one core and the 2-rank layouts two.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = {"tp1 (1 rank)": (1, []), "tp2 (2 ranks)": (2, ["parallel.tp=2"]),
           "dp2 (2 ranks)": (2, [])}


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc, overrides, iters, seq, workdir, stat=statistics.median):
    metrics = os.path.join(workdir, "metrics.jsonl")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(_port()), os.path.join(REPO, "examples", "pretrain_pd.py"),
           "--config", os.path.join(REPO, "configs", "tiny_cpu.yaml"), f"train.iters={iters}",
           f"train.seq_length={seq}", "train.eval_interval=0", "checkpoint.save=null",
           "log.tensorboard_dir=null", "log.interval=1", f"log.metrics_file={metrics}",
           f"data.cache_dir={workdir}/cache", *overrides]
    # One thread per rank: on a shared 2-core box, 2-thread OpenMP regions stall on their barriers
    # whenever another process holds a core, which makes a 1-rank/2-thread baseline meaningless.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    steps = [json.loads(line)["step time"] for line in open(metrics)]
    return stat(steps[3:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    if not os.path.exists(os.path.join(REPO, ".cache/demo/shakespeare_text_document.idx")):
        sys.exit("error: demo data missing; run scripts/demo.sh first (it fetches and preprocesses it)")
    tokens = 8 * args.seq  # tiny_cpu global batch 8
    results = {}
    for name, (nproc, overrides) in LAYOUTS.items():
        with tempfile.TemporaryDirectory() as work:
            results[name] = run(nproc, overrides, args.iters, args.seq, work)
    base = results["tp1 (1 rank)"]
    print(f"{'layout':16s} {'step s':>8s} {'tokens/s':>10s} {'vs tp1':>7s}")
    for name, t in results.items():
        print(f"{name:16s} {t:8.3f} {tokens / t:10.0f} {base / t:7.2f}x")


if __name__ == "__main__":
    main()
