"""Step time of LM-only training vs online KD with a co-located teacher, at PP=1 and PP=2.

    python benchmarks/bench_colocated_pp.py [--iters 10] [--seq 128] [--pairs 2]

Needs the demo data (scripts/demo.sh makes it). Student: configs/tiny_cpu.yaml (4 x 128); teacher:
a random 8 x 256 Llama (about 4x the student's compute; speed does not depend on its weights).
Global batch 8 in micro-batches of 2 (4 per step, so 1F1B has something to overlap). Each run is
a real torchrun job (one thread per rank); a run's figure is its fastest step after warm-up (the
least disturbed by other jobs on a shared machine).
LM-only and co-located runs alternate (`--pairs` times per PP) and the reported ratio is the median
over pairs of co-located / LM-only at the same PP, so load from other jobs hits both sides alike.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

from bench_train_step import REPO, run

TEACHER = ["model.num_layers=8", "model.hidden_size=256", "model.num_attention_heads=8",
           "model.num_query_groups=4"]
KD = ["kd.source=online", "kd.kind=fkl", "kd.top_p=0.95", "kd.top_k=50", "kd.alpha=0.9"]


def make_teacher(path: str, workdir: str):
    cmd = [sys.executable, os.path.join(REPO, "examples", "pretrain_pd.py"), "--config",
           os.path.join(REPO, "configs", "tiny_cpu.yaml"), "train.iters=0", f"checkpoint.save={path}",
           "log.tensorboard_dir=null", f"data.cache_dir={workdir}/cache", *TEACHER]
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    if not os.path.exists(os.path.join(REPO, ".cache/demo/shakespeare_text_document.idx")):
        sys.exit("error: demo data missing; run scripts/demo.sh first (it fetches and preprocesses it)")
    times = {}  # (pp, name) -> step time of each pair
    with tempfile.TemporaryDirectory() as root:
        teacher = os.path.join(root, "teacher")
        make_teacher(teacher, root)
        runs = {"LM only": [], "co-located": [*KD, f"teacher.checkpoint={teacher}"]}
        for _ in range(args.pairs):
            for pp in (1, 2):
                for name, extra in runs.items():
                    with tempfile.TemporaryDirectory() as work:
                        times.setdefault((pp, name), []).append(run(
                            pp, [f"parallel.pp={pp}", "train.micro_batch_size=2", *extra],
                            args.iters, args.seq, work, stat=min))
    tokens = 8 * args.seq
    print(f"{'layout':24s} {'best step s (pairs)':>20s} {'tokens/s':>9s} {'vs LM only':>11s}")
    for (pp, name), t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, times[pp, "LM only"]))
        print(f"{f'pp{pp} ({pp} rank) {name}':24s} {', '.join(f'{x:.2f}' for x in t):>20s} "
              f"{tokens / statistics.median(t):9.0f} {ratio:10.2f}x")


if __name__ == "__main__":
    main()
