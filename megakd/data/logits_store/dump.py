"""Dump a teacher's truncated next-token distributions over an indexed dataset into a logits store.

Every rank runs the teacher forward-only (TP inside it); the store's shards (fixed by the dataset)
go round-robin to the data-parallel ranks and TP rank 0 of each writes its own. A document longer
than `window` is covered by windows `stride` apart; each window emits only the positions past the
previous window's end, so every position but the first `window` has >= window - stride tokens of
left context. Targets come from `megakd.losses.truncate_teacher`, the trainer's own online maths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from megakd.data.logits_store import store as st
from megakd.data.shards import assigned, shard_written, write_json_atomic
from megakd.errors import ConfigError, DataError, StoreError

RUN_FILE = "dump.json"  # the settings of a dump in progress: a rerun must match them


@dataclass
class DumpArgs:
    data_prefix: str
    tokenizer: str
    output: str
    teacher: Optional[str] = None  # megakd dist checkpoint
    teacher_hf: Optional[str] = None  # or a local HF model dir / .gguf (converted once, cached)
    top_p: float = 0.95
    top_k: int = 100
    temperature: float = 1.0
    window: int = 2048
    stride: int = 1536
    tp: int = 1
    micro_batch_size: int = 4
    codec: str = "zlib"
    max_kl: float = 1e-3
    block_rows: int = 1024
    shard_tokens: int = 1 << 17
    progress: bool = True
    timeout_minutes: float = 60.0

    def validate(self) -> None:
        if (self.teacher is None) == (self.teacher_hf is None):
            raise ConfigError("pass exactly one of --teacher CHECKPOINT and --teacher-hf DIR")
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1 (the store keeps at most top-k ids per token), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0 or not self.temperature > 0:
            raise ConfigError(f"--top-p must be in (0, 1] and --temperature > 0 (got {self.top_p}, {self.temperature})")
        if self.window < 1 or not 1 <= self.stride <= self.window:
            raise ConfigError(f"need --window >= 1 and 1 <= --stride <= --window (got {self.window}, {self.stride})")
        if self.micro_batch_size < 1 or self.tp < 1:
            raise ConfigError("--micro-batch-size and --tp must be >= 1")
        st.StoreMeta(vocab_size=1, top_k=self.top_k, codec=self.codec, max_kl=self.max_kl,
                     block_rows=self.block_rows, shard_tokens=self.shard_tokens).validate()


def windows(length: int, window: int, stride: int) -> List[Tuple[int, int, int]]:
    """(start, end, first emitted position) of the teacher windows over a document of `length`
    tokens; the emitted ranges tile [0, length) in order."""
    out, emitted = [], 0
    start = 0
    while emitted < length:
        end = min(start + window, length)
        out.append((start, end, emitted))
        emitted = end
        start = min(start + stride, max(0, length - window))
    return out


def teacher_fingerprint(path: str, common: dict) -> str:
    """Identity of a teacher checkpoint: its recorded config and the names + sizes of its files."""
    digest = hashlib.sha256(json.dumps(common, sort_keys=True, default=str).encode())
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(f"{os.path.relpath(full, path)}:{os.path.getsize(full)};".encode())
    return digest.hexdigest()[:16]


def _forward_rows(model, pieces: List[np.ndarray], args: DumpArgs, device) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Padded teacher forward of token pieces -> per piece (ids [n, K], logprobs [n, K])."""
    from megatron.core import parallel_state as ps

    from megakd.losses import truncate_teacher

    width = max(len(p) for p in pieces)
    tokens = torch.zeros(len(pieces), width, dtype=torch.long)
    for r, p in enumerate(pieces):
        tokens[r, :len(p)] = torch.from_numpy(p.astype(np.int64))
    position_ids = torch.arange(width).unsqueeze(0).expand(len(pieces), -1)
    with torch.no_grad():
        logits = model(tokens.to(device), position_ids.to(device), None)
        target = truncate_teacher(logits, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                  tp_group=ps.get_tensor_model_parallel_group())
    ids, lp = target.ids.cpu().numpy(), target.logprobs.float().cpu().numpy()
    return [(ids[r, :len(p)], lp[r, :len(p)]) for r, p in enumerate(pieces)]


def dump_shard(model, tokens, first: int, num: int, lengths: np.ndarray, args: DumpArgs, vocab_size: int,
               device, writer: Optional[st.ShardWriter], bar) -> None:
    """Teacher rows of documents [first, first+num) into `writer` (None: compute only, TP rank > 0).

    Windows are batched by length (less padding) in groups of 16 micro-batches, then written back
    in document order. Batching depends only on the shard, so any DP size writes the same bytes."""
    pieces = [(d, s, e, emit) for d in range(first, first + num)
              for s, e, emit in windows(int(lengths[d]), args.window, args.stride)]
    group = 16 * args.micro_batch_size
    done: Dict[int, List[Tuple[np.ndarray, np.ndarray]]] = {}
    next_doc = first
    for g in range(0, len(pieces), group):
        chunk = pieces[g:g + group]
        order = sorted(range(len(chunk)), key=lambda i: (-(chunk[i][2] - chunk[i][1]), i))
        results = {}
        for b in range(0, len(order), args.micro_batch_size):
            idx = order[b:b + args.micro_batch_size]
            toks = [np.asarray(tokens.get(chunk[i][0], offset=chunk[i][1], length=chunk[i][2] - chunk[i][1]))
                    for i in idx]
            top = max(int(t.max()) for t in toks)
            if top >= vocab_size:
                raise DataError(f"dataset {args.data_prefix} has token id {top} >= the tokenizer's "
                                f"{vocab_size} (document {chunk[idx[0]][0]}); tokenize it with {args.tokenizer}")
            for i, out in zip(idx, _forward_rows(model, toks, args, device)):
                d, s, e, emit = chunk[i]
                results[i] = (out[0][emit - s:], out[1][emit - s:])
            bar.update(sum(chunk[i][2] - chunk[i][3] for i in idx))
        for i in range(len(chunk)):
            done.setdefault(chunk[i][0], []).append(results[i])
        # write every document whose windows are all done, in order
        while next_doc < first + num:
            n_pieces = len(windows(int(lengths[next_doc]), args.window, args.stride))
            if len(done.get(next_doc, [])) < n_pieces:
                break
            parts = done.pop(next_doc)
            if writer is not None:
                rows = st.codec.rows_from_padded(np.concatenate([p[0] for p in parts]),
                                                 np.concatenate([p[1] for p in parts]))
                writer.add(rows)
            next_doc += 1


def _prepare(args: DumpArgs, meta: st.StoreMeta) -> bool:
    """Rank 0 creates the output and its settings file; every rank checks a previous run there
    used the same settings. True when the store is already complete."""
    manifest = os.path.join(args.output, st.MANIFEST)
    run_file = os.path.join(args.output, RUN_FILE)
    want = {"format": st.FORMAT, "meta": dataclasses.asdict(meta)}
    box = [None]
    if dist.get_rank() == 0:
        try:
            os.makedirs(args.output, exist_ok=True)
            if not os.path.isfile(run_file) and not os.path.isfile(manifest):
                if any(n.startswith("shard-") for n in os.listdir(args.output)):
                    raise StoreError(f"{args.output} holds shards but no {RUN_FILE}; delete it or pass another --output")
                write_json_atomic(run_file, want)
        except (StoreError, OSError) as e:
            box[0] = StoreError(str(e)) if isinstance(e, OSError) else e
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise box[0]
    if os.path.isfile(manifest):
        with open(manifest) as f:
            have = json.load(f)
        if {"format": have.get("format"), "meta": have.get("meta")} == want:
            return True
        raise StoreError(f"{args.output} already holds a logits store of another dataset, teacher or "
                         "settings; delete it or pass another --output")
    with open(run_file) as f:
        if json.load(f) != want:
            raise StoreError(f"{args.output} holds a partial dump with other settings; rerun with the "
                             f"same arguments, or delete {args.output}")
    return False


@dataclass
class DumpResult:
    meta: st.StoreMeta
    tokens: int  # tokens this rank dumped now (0 when the store was already complete)
    seconds: float  # wall time of this rank's loop (forwards, truncation, encoding, shard writes)


def dump(args: DumpArgs) -> DumpResult:
    """Dump the teacher's truncated distributions over `args.data_prefix` into `args.output`."""
    from megatron.core import parallel_state as ps
    from tqdm import tqdm

    from megakd import platform
    from megakd.config import ParallelConfig, TeacherConfig
    from megakd.convert.convert import read_checkpoint_config
    from megakd.data.indexed import open_indexed
    from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer, vocab_fingerprint
    from megakd.teacher.loading import load_teacher, teacher_path

    args.validate()
    meta, lengths = st.dataset_meta(args.data_prefix, st.StoreMeta(vocab_size=1, top_k=args.top_k))
    tokenizer = MegatronTokenizer(load_tokenizer(args.tokenizer))
    env = platform.init_model_parallel(args.tp, 1, seed=0, timeout_minutes=args.timeout_minutes)
    path = teacher_path(TeacherConfig(checkpoint=args.teacher, hf_path=args.teacher_hf))
    model = load_teacher(path, ParallelConfig(tp=args.tp), tokenizer, args.tokenizer)
    if model.position_embedding_type == "learned_absolute" and args.window > model.max_sequence_length:
        raise ConfigError(f"--window {args.window} exceeds the {model.max_sequence_length} positions "
                          f"teacher {path} has learned; pass --window {model.max_sequence_length} or less")
    meta = dataclasses.replace(
        meta, vocab_size=tokenizer.vocab_size, vocab_fingerprint=vocab_fingerprint(tokenizer.hf_tokenizer),
        tokenizer=os.path.abspath(args.tokenizer),
        teacher=os.path.abspath(args.teacher or args.teacher_hf),
        teacher_fingerprint=teacher_fingerprint(path, read_checkpoint_config(path)[1]),
        top_p=args.top_p, temperature=args.temperature, window=args.window, stride=args.stride,
        codec=args.codec, max_kl=args.max_kl, block_rows=args.block_rows, shard_tokens=args.shard_tokens)
    if _prepare(args, meta):
        if env.rank == 0:
            print(f"{args.output}: already complete ({meta.num_tokens:,} tokens)", flush=True)
        return DumpResult(meta, 0, 0.0)

    plan = st.shard_plan(lengths, args.shard_tokens)
    is_writer = ps.get_tensor_model_parallel_rank() == 0
    mine = assigned(len(plan), ps.get_data_parallel_world_size(), ps.get_data_parallel_rank(),
                    lambda k: os.path.isfile(os.path.join(args.output, st.shard_file(k))))
    dist.barrier()  # every rank has listed the finished shards before any new one appears
    todo = sum(int(lengths[a:a + n].sum()) for a, n in (plan[k] for k in mine))
    bar = tqdm(total=todo, unit="tok", unit_scale=True, desc="teacher logits", mininterval=1.0,
               disable=(env.rank != 0) or not args.progress, dynamic_ncols=True)
    tokens = open_indexed(args.data_prefix)
    start, written = time.perf_counter(), 0
    for k in mine:
        first, num = plan[k]
        writer = st.ShardWriter(os.path.join(args.output, st.shard_file(k)), meta) if is_writer else None
        dump_shard(model, tokens, first, num, lengths, args, meta.vocab_size, env.device, writer, bar)
        if writer is not None:
            writer.close()
            written += 1
            shard_written(written)
    bar.close()
    elapsed = time.perf_counter() - start
    dist.barrier()
    if env.rank == 0:
        st.finish_store(args.output, meta, plan)
        os.remove(os.path.join(args.output, RUN_FILE))
        size = sum(os.path.getsize(os.path.join(args.output, st.shard_file(k))) for k in range(len(plan)))
        print(f"dumped {meta.num_tokens:,} tokens of {meta.num_docs:,} documents -> {args.output} "
              f"({size / meta.num_tokens:.1f} B/token; {todo:,} tokens on rank 0 in {elapsed:.1f} s)", flush=True)
    dist.barrier()
    return DumpResult(meta, todo, elapsed)
