"""MiniPLM scoring throughput vs a bare teacher + reference forward on the same tokens.

    python benchmarks/bench_miniplm_score.py [--instances 16] [--length 512] [--mbs 4] [--repeats 6]

Builds two random Llama-style models (teacher 4x256, reference 2x128, GPT-2-sized vocabulary 50304)
as megakd checkpoints and a random-token corpus in a temporary folder, then times, in one process:
  * bare:  teacher(x, labels=y) + reference(x, labels=y) over pre-built batches (nothing else);
  * score: megakd.miniplm.score.score()'s loop (instance slicing, batching, both forwards,
           per-instance means, atomic shard writes), read from its own timer (model loading and
           the final assembly excluded; both are once per run).
Runs alternate (bare, score, bare, score, ...): on shared, noisy cores the figure is the median
over the pairs of bare time / score time (each pair ran back to back), with the best-of ratio
beside it. Prints one JSON line.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

VOCAB = 50257


def _save_model(path, layers, hidden, seq):
    from megatron.core import dist_checkpointing

    from megakd.config import Config, ModelConfig, ParallelConfig
    from megakd.models import build_model

    cfg = Config(model=ModelConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=4,
                                   num_query_groups=2))
    cfg.train.seq_length = seq
    model = build_model(cfg.model, ParallelConfig(), VOCAB, seq)
    os.makedirs(path)
    dist_checkpointing.save({"model": model.sharded_state_dict(), "config": cfg.to_dict(),
                             "vocab_size": VOCAB, "iteration": 0}, path)


def bare_seconds(teacher, reference, batches):
    start = time.perf_counter()
    with torch.no_grad():
        for tokens, pos, labels in batches:
            teacher(tokens, pos, None, labels=labels)
            reference(tokens, pos, None, labels=labels)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=16)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--mbs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=6)
    args = p.parse_args()

    from megakd import platform
    from megakd.data.indexed import write_indexed
    from megakd.miniplm.instances import Instances
    from megakd.inference import load_for_inference
    from megakd.miniplm.score import ScoreArgs, score

    platform.init_model_parallel(1, 1, seed=0)
    tmp = tempfile.mkdtemp(prefix="bench_miniplm_")
    _save_model(f"{tmp}/teacher", 4, 256, args.length)
    _save_model(f"{tmp}/reference", 2, 128, args.length)
    rng = numpy.random.default_rng(0)
    n_tokens = args.instances * args.length
    docs = numpy.split(rng.integers(1, VOCAB, n_tokens), numpy.arange(700, n_tokens, 700))
    write_indexed(f"{tmp}/corpus", docs, VOCAB)

    teacher = load_for_inference(f"{tmp}/teacher").model
    reference = load_for_inference(f"{tmp}/reference").model
    inst = Instances([f"{tmp}/corpus"], "chunks", args.length)
    batches = []
    for b in range(0, len(inst), args.mbs):
        ids = range(b, min(b + args.mbs, len(inst)))
        x = torch.from_numpy(numpy.stack([inst.tokens(i) for i in ids]).astype(numpy.int64))
        batches.append((x[:, :-1], torch.arange(x.shape[1] - 1)[None].expand(len(x), -1), x[:, 1:]))
    bare_seconds(teacher, reference, batches[:1])  # warm-up

    bare, scored = [], []
    for r in range(args.repeats):
        bare.append(bare_seconds(teacher, reference, batches))
        res = score(ScoreArgs(f"{tmp}/teacher", f"{tmp}/reference", [f"{tmp}/corpus"],
                              f"{tmp}/scores{r}", instance_length=args.length,
                              micro_batch_size=args.mbs, shard_size=16, progress=False))
        scored.append(res.seconds)
    platform.destroy()
    shutil.rmtree(tmp)
    tokens = len(inst) * (args.length - 1)
    out = {"instances": len(inst), "instance_length": args.length, "micro_batch_size": args.mbs,
           "threads": torch.get_num_threads(),
           "bare_tokens_per_s": round(tokens / min(bare), 1),
           "score_tokens_per_s": round(tokens / min(scored), 1),
           "score_instances_per_s": round(len(inst) / min(scored), 2),
           "ratio_median_of_pairs": round(float(numpy.median(numpy.array(bare) / scored)), 3),
           "ratio_best_of": round(min(bare) / min(scored), 3),
           "bare_s": [round(x, 2) for x in bare], "score_s": [round(x, 2) for x in scored]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
