"""Offline-KD training step time vs LM-only step time on the tiny config, in one process.

    python benchmarks/bench_offline_kd.py [--steps 8] [--pairs 2] [--tokens 65536]

Needs the demo data (scripts/demo.sh). Builds a small dataset from the first `--tokens` Shakespeare
tokens (documents of <= 1024 tokens), writes a logits store for it with `write_store` (random sparse
rows, ~50 entries per token like SmolLM2 at top-p 0.95 / top-k 100 on real text: the values do not
change the cost), then alternates an LM-only Trainer and an offline-KD Trainer (configs/tiny_cpu.yaml,
1 rank, one thread) `--pairs` times; the figure is the median step time after 2 warm-up steps, and
the ratio pairs each KD run with the LM run next to it.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DEMO = os.path.join(REPO, ".cache", "demo", "shakespeare_text_document")
TOKENIZER = os.path.join(REPO, ".cache", "assets", "gpt2-tokenizer")
TOP_K = 100


def make_data(work, n_tokens):
    """A <= n_tokens slice of the demo corpus as its own dataset, and a random store for it."""
    from megakd.data.indexed import open_indexed, write_indexed
    from megakd.data.logits_store import write_store
    from megakd.data.tokenizer import load_tokenizer, vocab_fingerprint

    demo = open_indexed(DEMO)
    flat = numpy.concatenate([demo.get(d) for d in range(min(len(demo), 4))])[:n_tokens].astype(numpy.int64)
    docs = [flat[i:i + 1024] for i in range(0, len(flat), 1024)]
    prefix = os.path.join(work, "slice")
    write_indexed(prefix, (d.tolist() for d in docs), 50257)
    tok = load_tokenizer(TOKENIZER)
    rng = numpy.random.default_rng(0)

    def rows():
        for d, doc in enumerate(docs):
            ids, lps = [], []
            for _ in range(len(doc)):
                k = int(rng.integers(10, TOP_K + 1))
                i = rng.choice(50257, size=k, replace=False)
                p = rng.dirichlet(numpy.ones(k))
                ids.append(i.astype(numpy.int64))
                lps.append(numpy.log(p).astype(numpy.float32))
            yield d, ids, lps

    store = os.path.join(work, "store")
    write_store(store, prefix, rows(), vocab_size=len(tok), vocab_fingerprint=vocab_fingerprint(tok),
                tokenizer=TOKENIZER, top_k=TOP_K, top_p=1.0, temperature=1.0)
    return prefix, store


def step_times(overrides, steps):
    from megakd import platform
    from megakd.config import load_config
    from megakd.training.trainer import Trainer

    cfg = load_config(os.path.join(REPO, "configs", "tiny_cpu.yaml"), overrides)
    trainer = Trainer(cfg)
    trainer.ddp.train()
    times, extra = [], {}
    try:
        for _ in range(steps + 2):
            start = time.perf_counter()
            metrics = trainer.train_step()
            times.append(time.perf_counter() - start)
            for k in ("lookup time", "lookup wait"):
                if k in metrics:
                    extra.setdefault(k, []).append(metrics[k])
    finally:
        platform.destroy()
    return statistics.median(times[2:]), {k: statistics.median(v[2:]) for k, v in extra.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=65536)
    args = parser.parse_args()
    if not os.path.exists(DEMO + ".idx"):
        sys.exit("error: demo data missing; run scripts/demo.sh first (it fetches and preprocesses it)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        prefix, store = make_data(work, args.tokens)
        base = [f"data.prefix={prefix}", f"data.tokenizer={TOKENIZER}", f"data.cache_dir={work}/cache",
                "train.eval_interval=0", "checkpoint.save=null", "log.tensorboard_dir=null",
                f"train.iters={args.steps + 2}"]
        kd = base + ["kd.source=offline", f"kd.store={store}", "kd.top_p=1.0", f"kd.top_k={TOP_K}",
                     "kd.temperature=1.0", "kd.alpha=0.9"]
        ratios = []
        for pair in range(args.pairs):
            lm, _ = step_times(base, args.steps)
            off, extra = step_times(kd, args.steps)
            ratios.append(off / lm)
            print(f"pair {pair}: lm-only {lm:.3f} s/step, offline kd {off:.3f} s/step, ratio "
                  f"{off / lm:.2f}x; lookup {extra['lookup time']:.4f} s/step on the thread, "
                  f"wait {extra['lookup wait']:.4f} s/step", flush=True)
        print(f"median ratio offline-KD / LM-only step: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
