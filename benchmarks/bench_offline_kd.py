"""Offline-KD training step time vs LM-only step time on the tiny config, in one process.

    python benchmarks/bench_offline_kd.py [--steps 8] [--pairs 2] [--tokens 65536] [--head-rounds 8]

Needs the demo data (scripts/demo.sh). Builds a small dataset from the first `--tokens` Shakespeare
tokens (documents of <= 1024 tokens), writes a logits store for it with `write_store` (random sparse
rows, ~50 entries per token like SmolLM2 at top-p 0.95 / top-k 100 on real text: the values do not
change the cost), then alternates an LM-only Trainer and an offline-KD Trainer (configs/tiny_cpu.yaml,
1 rank, one thread) `--pairs` times; the figure is the median step time after 2 warm-up steps, and
the ratio pairs each KD run with the LM run next to it.

Then, where a step's KD cost sits: the loss head alone (output layer + losses, forward + backward, one
micro-batch of the tiny config: [s=128, b=4] tokens, hidden 128, V 50304, sparse targets of 10-100
entries), interleaved `--head-rounds` times in one process: LM only (megatron's vocab-parallel CE on
the [s, b, V] logits, as GPTModel computes it), the previous unfused KD head (GPTModel's [b, s, V]
transpose copy, a copy for megatron's in-place CE, then the sparse KD loss) and the fused one
(`distill_loss(..., labels=, grad_in_logits=True)` on the [s, b, V] logits, as the trainer does now).
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


def head_times(rounds):
    """Median seconds of one forward + backward of each loss head (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megakd import platform
    from megakd.losses import SparseTarget, distill_loss

    platform.init_distributed()
    platform.init_model_parallel(1, 1)
    s, b, h, v = 128, 4, 128, 50304
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(s, b, h, generator=g)
    weight = (0.05 * torch.randn(v, h, generator=g)).requires_grad_()
    labels = torch.randint(v, (b, s), generator=g)
    ids = torch.stack([torch.randperm(v, generator=g)[:TOP_K] for _ in range(b * s)]).reshape(b, s, TOP_K)
    used = torch.arange(TOP_K) < torch.randint(10, TOP_K + 1, (b, s, 1), generator=g)
    logprobs = torch.randn(b, s, TOP_K, generator=g).masked_fill(~used, float("-inf")).log_softmax(-1)
    target = SparseTarget(ids.masked_fill(~used, -1), logprobs)  # [b, s, k], as the store gives it
    mask, alpha = torch.ones(b, s), 0.9

    def lm_only():
        lm = vocab_parallel_cross_entropy(F.linear(hidden, weight), labels.t().contiguous()).t()
        (lm * mask).sum().backward()

    def unfused():
        logits = F.linear(hidden, weight).transpose(0, 1).contiguous()  # GPTModel's [b, s, V] copy
        lm = vocab_parallel_cross_entropy(logits.transpose(0, 1).clone(memory_format=torch.contiguous_format),
                                          labels.t().contiguous()).t()
        kd = distill_loss(logits, target, loss_mask=mask)
        (((1 - alpha) * lm + alpha * kd) * mask).sum().backward()

    def fused():
        sb = SparseTarget(target.ids.transpose(0, 1), target.logprobs.transpose(0, 1))
        lm, kd = distill_loss(F.linear(hidden, weight), sb, labels=labels.t(), loss_mask=mask.t(),
                              grad_in_logits=True).transpose(1, 2)
        (((1 - alpha) * lm + alpha * kd) * mask).sum().backward()

    heads = {"lm-only": lm_only, "unfused kd": unfused, "fused kd": fused}
    times = {name: [] for name in heads}
    try:
        for _ in range(rounds + 1):  # the first round warms up
            for name, run in heads.items():
                weight.grad = None
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    finally:
        platform.destroy()
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--head-rounds", type=int, default=8, help="rounds of the loss-head comparison (0: skip)")
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
    if args.head_rounds:
        t = head_times(args.head_rounds)
        print("loss head, one micro-batch, fwd + bwd: " + ", ".join(f"{k} {v:.3f} s" for k, v in t.items()))
        print(f"  unfused / lm-only {t['unfused kd'] / t['lm-only']:.2f}x, fused / lm-only "
              f"{t['fused kd'] / t['lm-only']:.2f}x, fused / unfused {t['fused kd'] / t['unfused kd']:.2f}x")


if __name__ == "__main__":
    main()
