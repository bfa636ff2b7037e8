"""Step time of every PD path against LM-only, and dump speed against the bare teacher forward.

    python benchmarks/bench_gpu_paths.py --work .gpu/paths            # GPU shapes (issue "GPU-speed teacher paths")
    python benchmarks/bench_gpu_paths.py --work /tmp/p --tiny          # the same pipeline, CPU-sized

Self-contained (no downloads, no assets): a word-level tokenizer of --vocab tokens and a corpus of random
Zipf-distributed token ids are made here; the teacher is a random-init checkpoint saved by a 0-step
run. Then, each as a real `examples/pretrain_pd.py` / `tools/dump_teacher_logits.py` process of one rank:
LM-only, co-located online PD, the dump, offline PD from the dump. The bare teacher forward is timed in
its own process on the same batch shape. Step time = median of the metrics file's `step time` after
--warmup steps; every ratio is against LM-only (or the bare forward) of the same run. Prints a table
and, with --json, writes the rows.
Defaults are issue 19's shapes: 12 x 768 bf16 student, 24 x 1024 teacher, seq 1024, 8 x 1024 tokens
per step, GPT-2-sized vocabulary, top-p 0.95 / top-k 50.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
TRUNC = {"top_p": 0.95, "top_k": 50}


def make_corpus(root: str, vocab: int, tokens: int, seed: int = 0):
    """(tokenizer dir, data prefix): a word-level tokenizer of `vocab` ids (id 0 = end of document)
    and documents of Zipf-distributed ids, so the logits span the whole vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from megakd.data.indexed import write_indexed

    tok_dir, prefix = os.path.join(root, "tokenizer"), os.path.join(root, "corpus_text_document")
    if os.path.isfile(prefix + ".idx"):
        return tok_dir, prefix
    words = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(tok_dir)
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < tokens:
        n = int(rng.integers(256, 2048))
        ids = np.minimum(rng.zipf(1.2, n), vocab - 1).astype(np.int64)
        docs.append(ids.tolist() + [0])
        total += n + 1
    write_indexed(prefix, docs, vocab)
    return tok_dir, prefix


def shapes(tiny: bool) -> dict:
    if tiny:
        return {"student": (2, 64, 4), "teacher": (4, 96, 4), "seq": 64, "mbs": 2, "gbs": 4}
    return {"student": (12, 768, 12), "teacher": (24, 1024, 16), "seq": 1024, "mbs": 8, "gbs": 8}


def model_args(layers_hidden_heads) -> list:
    n, h, a = layers_hidden_heads
    return [f"model.num_layers={n}", f"model.hidden_size={h}", f"model.num_attention_heads={a}"]


def run(cmd: list, log: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        f.write(proc.stdout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}); see {log}:\n"
                           + proc.stdout[-3000:])
    return proc.stdout


def train(name: str, work: str, common: list, extra: list, iters: int) -> dict:
    metrics = os.path.join(work, f"{name}.jsonl")
    if os.path.exists(metrics):
        os.remove(metrics)
    run([sys.executable, os.path.join(REPO, "examples", "pretrain_pd.py"), *common,
         f"train.iters={iters}", f"log.metrics_file={metrics}", *extra], os.path.join(work, f"{name}.log"))
    return {int(r["iter"]): r for r in map(json.loads, open(metrics)) if r.get("split") == "train"}


def median_step(rows: dict, warmup: int) -> float:
    return statistics.median(r["step time"] for it, r in rows.items() if it > warmup)


def bare_forward(ckpt: str, seq: int, mbs: int, vocab: int, steps: int) -> float:
    """Worker: tokens/s of the teacher's forward alone (in the precision it was saved in, which the
    dump is told to run at too), batches of the dump's shape."""
    import torch

    from megakd import platform
    from megakd.convert.convert import load_checkpoint_model

    env = platform.init_model_parallel(1, 1, seed=0)
    model, _ = load_checkpoint_model(ckpt)
    model.eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(vocab, (mbs, seq), generator=g).to(env.device)
    positions = torch.arange(seq, device=env.device)[None].expand(mbs, seq)
    times = []
    with torch.inference_mode():
        for _ in range(steps + 2):
            platform.synchronize()
            start = time.perf_counter()
            model(tokens, positions, None)
            platform.synchronize()
            times.append(time.perf_counter() - start)
    return mbs * seq / statistics.median(times[2:])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, help="folder for the corpus, checkpoints, store and logs")
    p.add_argument("--tiny", action="store_true", help="CPU-sized shapes (a dry run of the pipeline)")
    p.add_argument("--iters", type=int, default=16)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    s = shapes(a.tiny)
    if a.worker:
        print(json.dumps({"tokens/s": bare_forward(a.worker, s["seq"], s["mbs"], a.vocab, a.iters)}))
        return
    os.makedirs(a.work, exist_ok=True)
    corpus_tokens = (a.iters + 2) * s["gbs"] * s["seq"] * 2
    tok_dir, prefix = make_corpus(os.path.join(a.work, "corpus"), a.vocab, corpus_tokens)
    common = [f"data.prefix={prefix}", f"data.tokenizer={tok_dir}", "data.split=100,0,0",
              f"data.cache_dir={a.work}/cache", f"train.seq_length={s['seq']}",
              f"train.micro_batch_size={s['mbs']}", f"train.global_batch_size={s['gbs']}",
              "train.eval_interval=0", f"model.precision={a.precision}", "log.interval=1",
              "log.tensorboard_dir=null", "checkpoint.save=null", "optim.warmup_iters=1"]
    teacher = os.path.join(a.work, "teacher")
    if not os.path.isdir(teacher):
        train("teacher_init", a.work, common + model_args(s["teacher"]),
              [f"checkpoint.save={teacher}"], 0)
    student = common + model_args(s["student"])
    kd = ["kd.kind=fkl", "kd.alpha=0.9", f"kd.top_p={TRUNC['top_p']}", f"kd.top_k={TRUNC['top_k']}"]
    rows = []

    def row(name, seconds, base, unit="s/step"):
        rows.append({"name": name, "value": seconds, "unit": unit, "ratio": seconds / base})

    lm = median_step(train("lm_only", a.work, student, [], a.iters), a.warmup)
    row("LM-only step", lm, lm)
    colo = train("colocated", a.work, student, kd + ["kd.source=online", f"teacher.checkpoint={teacher}"],
                 a.iters)
    row("co-located PD step", median_step(colo, a.warmup), lm)
    store = os.path.join(a.work, "store")
    out = run([sys.executable, os.path.join(REPO, "tools", "dump_teacher_logits.py"), "--teacher", teacher,
               "--tokenizer", tok_dir, "--data-prefix", prefix, "--output", store,
               "--top-p", str(TRUNC["top_p"]), "--top-k", str(TRUNC["top_k"]), "--window", str(s["seq"]),
               "--stride", str(s["seq"]), "--micro-batch-size", str(s["mbs"]), "--precision", a.precision,
               "--no-progress"],
              os.path.join(a.work, "dump.log"))
    done = re.search(r"([0-9,]+) tokens on rank 0 in ([0-9.]+) s", out)
    offline = train("offline", a.work, student, kd + ["kd.source=offline", f"kd.store={store}"], a.iters)
    row("offline PD step", median_step(offline, a.warmup), lm)
    bare = json.loads(run([sys.executable, __file__, "--work", a.work, "--worker", teacher,
                           "--vocab", str(a.vocab), "--iters", str(a.iters)] + (["--tiny"] if a.tiny else []),
                          os.path.join(a.work, "bare.log")).strip().splitlines()[-1])["tokens/s"]
    row("bare teacher forward", s["gbs"] * s["seq"] / bare, lm)  # per student step's tokens
    if done and float(done.group(2)) > 0:
        dump_tps = int(done.group(1).replace(",", "")) / float(done.group(2))
        rows.append({"name": "dump tokens/s", "value": dump_tps, "unit": "tokens/s", "ratio": dump_tps / bare})
    rows.append({"name": "bare forward tokens/s", "value": bare, "unit": "tokens/s", "ratio": 1.0})
    for r in rows:
        print(f"{r['name']:<24} {r['value']:>12.4g} {r['unit']:<9} {r['ratio']:>7.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
