"""Step time of LM-only training vs online KD with a co-located teacher, at PP=1 and PP=2.

    python benchmarks/bench_colocated_pp.py [--iters 12] [--seq 128]

Needs the demo data (scripts/demo.sh makes it). Student: configs/tiny_cpu.yaml (4 x 128); teacher:
a random 8 x 256 Llama (about 4x the student's compute; speed does not depend on its weights).
Global batch 8 in micro-batches of 2 (4 per step, so 1F1B has something to overlap). Each run is
a real torchrun job (one thread per rank); figures are median step times after warm-up; the
ratio co-located / LM-only is taken at the same PP, measured in the same invocation.
"""

import argparse
import os
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
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    if not os.path.exists(os.path.join(REPO, ".cache/demo/shakespeare_text_document.idx")):
        sys.exit("error: demo data missing; run scripts/demo.sh first (it fetches and preprocesses it)")
    results = {}
    with tempfile.TemporaryDirectory() as root:
        teacher = os.path.join(root, "teacher")
        make_teacher(teacher, root)
        for pp in (1, 2):
            for name, extra in {"LM only": [], "co-located": [*KD, f"teacher.checkpoint={teacher}"]}.items():
                with tempfile.TemporaryDirectory() as work:
                    results[pp, name] = run(pp, [f"parallel.pp={pp}", "train.micro_batch_size=2",
                                                 *extra], args.iters, args.seq, work)
    tokens = 8 * args.seq
    print(f"{'layout':24s} {'step s':>8s} {'tokens/s':>10s} {'vs LM only':>11s}")
    for (pp, name), t in results.items():
        print(f"{f'pp{pp} ({pp} rank) {name}':24s} {t:8.3f} {tokens / t:10.0f} "
              f"{t / results[pp, 'LM only']:10.2f}x")


if __name__ == "__main__":
    main()
