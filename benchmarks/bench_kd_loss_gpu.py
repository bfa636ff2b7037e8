"""KD loss on one device: megakd's fused losses against naive PyTorch, torch.compile(naive) and Liger.

    python benchmarks/bench_kd_loss_gpu.py                       # CUDA, bf16, N=8192, V in {50304, 131072}
    python benchmarks/bench_kd_loss_gpu.py --tokens 256 --vocab 4096 --reps 2   # CPU dry run

Forward + backward of forward KL (dense teacher logits) and of the fused LM + KD pass (a top-k sparse
target + labels), median of --reps after a warm-up (compilation happens in the warm-up). Memory (CUDA
only) = peak bytes allocated during the call beyond the inputs, in units of the student logits' bytes
(the returned gradient alone is 1.0x). The bar (issue "GPU-speed KD losses") is torch.compile(naive).
Liger (`liger_kernel.transformers.LigerJSD`, beta=0 is forward KL) runs only where it imports.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megakd.losses import SparseTarget, distill_loss  # noqa: E402


def naive_kl(s, t):
    ls, lt = F.log_softmax(s.float(), dim=-1), F.log_softmax(t.float(), dim=-1)
    return F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1)


def naive_sparse_lm_kd(s, ids, logprobs, labels):
    ls = F.log_softmax(s.float(), dim=-1)
    ce = -ls.gather(-1, labels[:, None])[:, 0]
    kd = (logprobs.exp() * (logprobs - ls.gather(-1, ids))).sum(-1)
    return torch.stack([ce, kd])


def methods(dense_teacher, target, labels):
    compiled_kl = torch.compile(naive_kl)
    compiled_sparse = torch.compile(naive_sparse_lm_kd)
    out = {
        "naive": lambda s: naive_kl(s, dense_teacher),
        "compile(naive)": lambda s: compiled_kl(s, dense_teacher),
        "megakd dense": lambda s: distill_loss(s, dense_teacher, kind="fkl"),
        "naive sparse LM+KD": lambda s: naive_sparse_lm_kd(s, target.ids, target.logprobs, labels),
        "compile(naive sparse LM+KD)": lambda s: compiled_sparse(s, target.ids, target.logprobs, labels),
        "megakd sparse LM+KD": lambda s: distill_loss(s, target, kind="fkl", labels=labels),
    }
    try:
        from liger_kernel.transformers import LigerJSD

        jsd = LigerJSD(beta=0.0)
        # LigerJSD(beta=0) = KL(P || Q) with P the second argument (teacher), both log-probs
        out["liger JSD(beta=0)"] = lambda s: jsd(F.log_softmax(s.float(), -1),
                                               F.log_softmax(dense_teacher.float(), -1))
    except Exception:
        pass
    return out


def measure(fn, s, reps: int, cuda: bool):
    """(median seconds, peak extra bytes or None) of forward + backward."""
    x = s.detach().clone().requires_grad_()
    fn(x).sum().backward()  # warm-up (and compilation)
    times = []
    peak = None
    for _ in range(reps):
        x.grad = None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        fn(x).sum().backward()
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, nargs="+", default=[50304, 131072])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    rows = []
    for V in a.vocab:
        g = torch.Generator().manual_seed(0)
        s = (3 * torch.randn(a.tokens, V, generator=g)).to(dtype).to(device)
        t = (3 * torch.randn(a.tokens, V, generator=g)).to(dtype).to(device)
        top = t.float().log_softmax(-1).topk(a.top_k, dim=-1)
        target = SparseTarget(top.indices, top.values)
        labels = torch.randint(V, (a.tokens,), generator=g).to(device)
        logits_bytes = s.numel() * s.element_size()
        results = {}
        for name, fn in methods(t, target, labels).items():
            try:
                results[name] = measure(fn, s, a.reps, cuda)
            except Exception as e:  # a method that cannot run here is reported, not fatal
                print(f"V={V} {name}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
        bar = results.get("compile(naive)", results["naive"])[0]
        for name, (sec, peak) in results.items():
            rows.append({"vocab": V, "method": name, "ms": 1e3 * sec, "vs compile(naive)": sec / bar,
                         "memory / logits": None if peak is None else peak / logits_bytes})
            mem = "" if peak is None else f"{peak / logits_bytes:6.2f}x logits"
            print(f"V={V:<7} {name:<30} {1e3 * sec:9.3f} ms  {sec / bar:7.2f}x compile(naive)  {mem}",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
