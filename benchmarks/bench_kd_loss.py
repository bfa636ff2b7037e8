"""Benchmark: forward + backward of forward-KL distillation on [tokens x V] logits, single process, CPU.

Methods
  megakd      megakd.losses.distill_loss(student, teacher, kind="fkl")  (fused, token-chunked)
  naive       F.kl_div(log_softmax(student.float()), log_softmax(teacher.float()), log_target=True)
  and, with the output projection included (hidden [tokens, H] @ W[V, H]^T for student and teacher),
  because Liger-Kernel only ships the fused-linear form:
  megakd+proj, naive+proj, liger+proj (LigerFusedLinearJSDLoss with beta=0, which is KL(teacher||student),
  weight_hard_loss=0, compiled=False, its default chunk of 1024 tokens)

Threads: --threads (default 1) torch intra-op threads in every subprocess, the same for all methods.
Time: each (V, dtype) runs in one fresh subprocess; the methods are interleaved (1 warm-up, then --reps
rounds) so machine noise hits them alike; the best and the median round are printed, and the
speed-up (best against best) is against naive of the same process.
Memory: each (method, V, dtype) runs once in its own fresh subprocess; after the inputs exist (and
one tiny warm-up call initialised the libraries) the kernel's peak-RSS mark is reset
(`echo 5 > /proc/self/clear_refs`), and peak extra = VmHWM - VmRSS before the call. It counts every
byte the call touches beyond the inputs, including the returned gradients (the student-logits gradient
alone is 1x the student logits' bytes).

    python benchmarks/bench_kd_loss.py            # V in {32000, 49152, 131072}, fp32 and bf16
    python benchmarks/bench_kd_loss.py --quick    # V=32000, fp32, one round
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for megakd

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LOGIT_METHODS = ("naive", "megakd")
PROJ_METHODS = ("naive+proj", "megakd+proj", "liger+proj")


# ---------------------------------------------------------------- the methods (fwd + bwd once)

def naive_kl(s, t):
    ls, lt = F.log_softmax(s.float(), dim=-1), F.log_softmax(t.float(), dim=-1)
    return F.kl_div(ls, lt, log_target=True, reduction="none").sum(dim=-1)


def megakd_kl(s, t):
    from megakd.losses import distill_loss

    return distill_loss(s, t, kind="fkl")


def run_logits(method, s, t):
    s.grad = None
    loss = {"naive": naive_kl, "megakd": megakd_kl}[method](s, t)
    loss.sum().backward()
    return s.grad


def run_proj(method, xs, ws, xt, wt):
    xs.grad = ws.grad = None
    if method == "liger+proj":
        from liger_kernel.chunked_loss.jsd_loss import LigerFusedLinearJSDLoss

        loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.0, compiled=False)
        labels = torch.zeros(xs.shape[0], dtype=torch.long)
        loss = loss_fn(xs, ws, xt, wt, labels)
    else:
        with torch.no_grad():
            t = xt @ wt.T
        s = xs @ ws.T
        loss = (naive_kl if method == "naive+proj" else megakd_kl)(s, t).sum()
    loss.backward()
    return xs.grad, ws.grad


# ---------------------------------------------------------------- inputs

def logit_inputs(tokens, vocab, dtype):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(tokens, vocab, generator=g, dtype=dtype).mul_(2).requires_grad_()
    t = torch.randn(tokens, vocab, generator=g, dtype=dtype).mul_(2)
    return s, t


def proj_inputs(tokens, vocab, hidden, dtype):
    g = torch.Generator().manual_seed(0)
    mk = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype).mul_(shape[-1] ** -0.25)  # noqa: E731
    return mk(tokens, hidden).requires_grad_(), mk(vocab, hidden).requires_grad_(), mk(tokens, hidden), mk(vocab, hidden)


def call(method, inputs):
    return run_proj(method, *inputs) if method in PROJ_METHODS else run_logits(method, *inputs)


def make_inputs(method, a, vocab, dtype):
    if method in PROJ_METHODS:
        return proj_inputs(a.tokens, vocab, a.hidden, dtype)
    return logit_inputs(a.tokens, vocab, dtype)


# ---------------------------------------------------------------- workers (fresh subprocesses)

def _status_kib(key):
    return int(re.search(rf"^{key}:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1))


def worker_time(a, vocab, dtype):
    methods = [m for m in a.methods if m in LOGIT_METHODS]
    times = {m: [] for m in a.methods}
    for group in (methods, [m for m in a.methods if m in PROJ_METHODS]):
        if not group:
            continue
        inputs = make_inputs(group[0], a, vocab, dtype)
        for rnd in range(a.reps + 1):  # round 0 is the warm-up
            for m in group:
                t0 = time.perf_counter()
                out = call(m, inputs)
                dt = time.perf_counter() - t0
                del out
                if rnd:
                    times[m].append(dt)
        del inputs
    return times


def worker_mem(a, vocab, dtype):
    (method,) = a.methods
    call(method, make_inputs(method, a, min(vocab, 512), dtype))  # initialise libraries / kernels
    inputs = make_inputs(method, a, vocab, dtype)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    out = call(method, inputs)
    peak = _status_kib("VmHWM")
    del out
    return {"peak_extra_bytes": (peak - before) * 1024}


# ---------------------------------------------------------------- driver

def spawn(mode, method_list, vocab, dtype_name, a):
    cmd = [sys.executable, __file__, "--worker", mode, "--vocab", str(vocab), "--dtype", dtype_name,
           "--tokens", str(a.tokens), "--hidden", str(a.hidden), "--reps", str(a.reps), "--methods", *method_list]
    cmd += ["--threads", str(a.threads)]
    # memory runs only: a fixed mmap threshold makes glibc return every large freed block to the OS at
    # once, so RSS follows the live tensors instead of a heap that silently recycles freed memory (it would
    # slow the timing runs down with page faults, so those keep the default allocator)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536") if mode == "mem" else None
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _best(times, method):
    """Fastest round: on a shared machine other load only ever adds time, so the minimum is the
    least noisy estimate (the median is printed beside it)."""
    return min(times[method]) if times.get(method) and "error" not in times else None


def _median(times, method):
    return statistics.median(times[method]) if times.get(method) and "error" not in times else None


def liger_available():
    try:
        import liger_kernel.chunked_loss.jsd_loss  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="V=32000, fp32, one round")
    p.add_argument("--vocab", type=int, nargs="+", default=[32000, 49152, 131072])
    p.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the output projection (proj methods)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=list(LOGIT_METHODS + PROJ_METHODS))
    p.add_argument("--no-proj", action="store_true", help="skip the methods that include the projection")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1 keeps timings stable on a shared 2-core machine)")
    p.add_argument("--worker", choices=["time", "mem"], help=argparse.SUPPRESS)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    if a.worker:
        vocab, dtype = a.vocab[0], DTYPES[a.dtype[0]]
        out = worker_time(a, vocab, dtype) if a.worker == "time" else worker_mem(a, vocab, dtype)
        print(json.dumps(out))
        return

    if a.quick:
        a.vocab, a.dtype, a.reps = [32000], ["fp32"], 1
    methods = [m for m in a.methods if not (a.no_proj and m in PROJ_METHODS)]
    missing = liger_available()
    if missing and "liger+proj" in methods:
        print(f"# liger-kernel not importable ({missing}); skipping liger+proj")
        methods.remove("liger+proj")
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, tokens {a.tokens}, "
          f"hidden {a.hidden} (proj), reps {a.reps}; time: best and median of the rounds, speed-up from the best; memory: peak extra RSS")
    print(f"{'V':>7} {'dtype':>5} {'method':>12} {'best s':>8} {'median s':>8} {'x naive':>8} {'extra MiB':>10} {'/ logits':>8}")
    for vocab in a.vocab:
        for dname in a.dtype:
            logits_bytes = a.tokens * vocab * DTYPES[dname].itemsize
            times = spawn("time", methods, vocab, dname, a)
            for m in methods:
                mem = spawn("mem", [m], vocab, dname, a)
                t, med = _best(times, m), _median(times, m)
                base = _best(times, "naive+proj" if m in PROJ_METHODS else "naive")
                speed = f"{base / t:8.2f}" if t and base else f"{'-':>8}"
                extra = mem.get("peak_extra_bytes")
                mem_s = f"{extra / 2**20:10.0f} {extra / logits_bytes:8.2f}" if extra is not None else f"{mem.get('error', '?')}"
                t_s = f"{t:8.3f} {med:8.3f}" if t else f"{str(times.get('error', '-'))[:17]:>17}"
                print(f"{vocab:>7} {dname:>5} {m:>12} {t_s} {speed} {mem_s}", flush=True)


if __name__ == "__main__":
    main()
