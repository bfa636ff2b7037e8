"""Step time of online KD by teacher placement: LM-only, co-located teacher, dedicated teacher ranks.

    python benchmarks/bench_teacher_placement.py [--iters 24] [--seq 256] [--teacher-layers 8]

A tiny student (2 layers x 128) and a teacher with --teacher-layers layers of the same width (8: ~4x the
student's forward), on a synthetic corpus with a 256-token tokenizer made here (no downloads). Each
layout is a real torchrun job; figures are median step times after 4 warm-up steps, read from the job's
metrics file. The teacher's forward per step is what the teacher rank reports (mean over the run,
forward + top-k truncation), and also co-located minus LM-only. The dedicated job uses one student
rank + one teacher rank (two processes, one thread each), the others one process.
Target (issue 5): dedicated <= 1.15 x max(student step, teacher forward per step).
"""

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = ["kd.source=online", "kd.kind=fkl", "kd.top_p=0.95", "kd.top_k=32", "kd.alpha=0.9"]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corpus(root):
    from megakd.data.indexed import write_indexed
    from megakd.data.tokenizer import MegatronTokenizer, build_tiny_tokenizer, load_tokenizer

    rng = random.Random(0)
    words = "the of and to in a is that king queen lord love night day sword crown blood heart".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(50, 400))) + "." for _ in range(600)]
    tok_dir = build_tiny_tokenizer(texts, os.path.join(root, "tokenizer"), vocab_size=256)
    tok = MegatronTokenizer(load_tokenizer(tok_dir))
    prefix = os.path.join(root, "corpus_text_document")
    write_indexed(prefix, (tok.tokenize(t) + [tok.eod] for t in texts), tok.vocab_size)
    return tok_dir, prefix


def _job(nproc, args, workdir):
    metrics = os.path.join(workdir, "metrics.jsonl")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(_port()), os.path.join(REPO, "examples", "pretrain_pd.py"),
           *args, "log.interval=1", f"log.metrics_file={metrics}", "log.tensorboard_dir=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    out = subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True).stdout
    teacher = re.search(r"\[teacher\] .*forward ([0-9.]+) s/step", out)
    rows = [json.loads(line) for line in open(metrics)] if os.path.exists(metrics) else []
    return rows, float(teacher.group(1)) if teacher else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=24)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--teacher-layers", type=int, default=8)
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    with tempfile.TemporaryDirectory() as root:
        tok, prefix = _corpus(root)
        base = [f"data.prefix={prefix}", f"data.tokenizer={tok}", f"data.cache_dir={root}/cache",
                "data.split=100,0,0", "model.hidden_size=128", "model.num_attention_heads=4",
                "model.num_query_groups=2", f"train.seq_length={args.seq}", "train.micro_batch_size=4",
                "train.global_batch_size=8", "train.eval_interval=0", "checkpoint.save=null"]
        teacher = os.path.join(root, "teacher")
        _job(1, base + [f"model.num_layers={args.teacher_layers}", "train.iters=0",
                        f"checkpoint.save={teacher}"], root)
        student = base + ["model.num_layers=2", f"train.iters={args.iters}"]
        layouts = {
            "lm only (1 rank)": (1, student),
            "co-located (1 rank)": (1, student + KD + [f"teacher.checkpoint={teacher}"]),
            "dedicated (1 student + 1 teacher rank)": (2, student + KD + [
                f"teacher.checkpoint={teacher}", "teacher.placement=dedicated", "teacher.ranks=1",
                "teacher.prefetch=2"]),
        }
        steps, waits = {}, {}
        for name, (nproc, job_args) in layouts.items():
            with tempfile.TemporaryDirectory() as work:
                rows, teacher_fwd = _job(nproc, job_args, work)
            steps[name] = statistics.median(r["step time"] for r in rows[4:])
            waits[name] = statistics.median(r.get("teacher wait", 0.0) for r in rows[4:])
    lm, coloc, ded = steps.values()
    print(f"{'layout':40s} {'step s':>8s} {'teacher wait s':>15s}")
    for name, t in steps.items():
        print(f"{name:40s} {t:8.3f} {waits[name]:15.3f}")
    print(f"{'teacher forward per step (co-loc - lm)':40s} {coloc - lm:8.3f}")
    print(f"{'teacher forward per step (teacher rank)':40s} {teacher_fwd:8.3f}")
    print(f"co-located / lm only: {coloc / lm:.2f}x")
    print(f"dedicated / max(lm only, teacher forward on its rank): {ded / max(lm, teacher_fwd):.2f} "
          f"(target <= 1.15)")


if __name__ == "__main__":
    main()
