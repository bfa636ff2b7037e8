"""The GPU check: the GPU test tier and the GPU benchmarks in one run, printed as one table.

    bash scripts/gpu_check.sh              # the entry point (sets PYTHONPATH, carried wheels)
    python benchmarks/gpu_check.py --out OUT [--tiny] [--skip-tests]

1. `pytest -m "gpu or multigpu"`: the real paths on CUDA + NCCL in bf16 (tests/test_gpu*.py, test_fp8.py),
   one row per test with pass / fail / skip (and why);
2. benchmarks/bench_kd_loss_gpu.py: the KD losses against naive / torch.compile(naive) / Liger;
3. benchmarks/bench_gpu_paths.py: LM-only, co-located, offline and bare-teacher step times with their
   ratios to LM-only, and the dump's tokens/s against the bare forward's.
Each stage has a time budget so the whole check ends within about 8 minutes on one H200; a stage that
fails or runs out of time is a FAIL row, not a lost run. Writes OUT/gpu_check.md (the table) and the
stages' JSON and logs; exits non-zero when anything failed.
"""

import argparse
import json
import os
import platform as pyplatform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stage(cmd, log, budget_s):
    """Run one stage; (ok, seconds, tail of its output)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=budget_s)
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
            f.write(f"\n[gpu_check] stopped after its budget of {budget_s} s\n")
    with open(log) as f:
        tail = f.read()[-1500:]
    return ok, time.perf_counter() - start, tail


def test_rows(junit: str):
    """(name, result, seconds, note) per test case of a junit xml file."""
    if not os.path.exists(junit):
        return []
    rows = []
    for case in ET.parse(junit).iter("testcase"):
        result, note = "pass", ""
        for kind, label in (("failure", "FAIL"), ("error", "FAIL"), ("skipped", "skip")):
            el = case.find(kind)
            if el is not None:
                result, note = label, (el.get("message") or "").splitlines()[0][:90] if el.get("message") else ""
                break
        rows.append((f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", result,
                     float(case.get("time", 0)), note))
    return rows


def environment() -> str:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    try:
        import transformer_engine  # noqa: F401

        te = "TE " + getattr(transformer_engine, "__version__", "?")
    except Exception:
        te = "no Transformer Engine"
    try:
        import megatron.core as mc

        mcore = "megatron-core " + mc.__version__
    except Exception:
        mcore = "no megatron-core"
    return (f"{gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); {mcore}; {te}; "
            f"python {pyplatform.python_version()}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(REPO, ".gpu", "out"))
    p.add_argument("--work", default=os.path.join(REPO, ".gpu", "work"))
    p.add_argument("--tiny", action="store_true", help="CPU-sized benchmarks (a dry run of the check)")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--budget", type=float, default=1.0, help="scale every stage's time budget")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    os.makedirs(a.work, exist_ok=True)
    py = sys.executable
    lines = [f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')}", "", environment(), "",
             "| check | result | time s | value | ratio |", "|---|---|---|---|---|"]
    failed = False

    if not a.skip_tests:
        junit = os.path.join(a.out, "gpu_tier.xml")
        ok, sec, tail = stage([py, "-m", "pytest", "tests", "-m", "gpu or multigpu", "-q", "-ra",
                               "-p", "no:cacheprovider", f"--junitxml={junit}"],
                              os.path.join(a.out, "gpu_tier.log"), int(300 * a.budget))
        rows = test_rows(junit)
        for name, result, t, note in rows:
            lines.append(f"| {name} | {result} | {t:.1f} | {note} | |")
        failed |= any(r[1] == "FAIL" for r in rows) or (not ok and not rows)
        if not ok and not any(r[1] == "FAIL" for r in rows):
            lines.append(f"| GPU tier (pytest) | FAIL | {sec:.0f} | {tail.strip().splitlines()[-1][:90]} | |")
            failed = True

    loss_json = os.path.join(a.out, "kd_loss.json")
    loss_args = ["--tokens", "256", "--vocab", "4096", "--reps", "2"] if a.tiny else []
    ok, sec, tail = stage([py, os.path.join(REPO, "benchmarks", "bench_kd_loss_gpu.py"), "--json", loss_json,
                           *loss_args], os.path.join(a.out, "kd_loss.log"), int(120 * a.budget))
    if ok:
        for r in json.load(open(loss_json)):
            mem = "" if r["memory / logits"] is None else f", {r['memory / logits']:.2f}x logits"
            lines.append(f"| KD loss V={r['vocab']} {r['method']} | ran | | {r['ms']:.3f} ms{mem} "
                         f"| {r['vs compile(naive)']:.2f}x compile(naive) |")
    else:
        failed = True
        lines.append(f"| KD loss benchmark | FAIL | {sec:.0f} | see kd_loss.log | |")

    paths_json = os.path.join(a.out, "paths.json")
    ok, sec, tail = stage([py, os.path.join(REPO, "benchmarks", "bench_gpu_paths.py"), "--work",
                           os.path.join(a.work, "paths"), "--json", paths_json]
                          + (["--tiny", "--iters", "6", "--warmup", "2"] if a.tiny else []),
                          os.path.join(a.out, "paths.log"), int(240 * a.budget))
    if ok:
        for r in json.load(open(paths_json)):
            base = "bare forward" if r["unit"] == "tokens/s" else "LM-only"
            lines.append(f"| {r['name']} | ran | | {r['value']:.4g} {r['unit']} | {r['ratio']:.2f}x {base} |")
    else:
        failed = True
        lines.append(f"| PD paths benchmark | FAIL | {sec:.0f} | see paths.log | |")

    lines += ["", "Overall: " + ("FAIL" if failed else "PASS")]
    table = "\n".join(lines)
    print(table, flush=True)
    with open(os.path.join(a.out, "gpu_check.md"), "w") as f:
        f.write(table + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
