"""Dump a teacher's truncated next-token distributions over an indexed dataset into a logits store.

The offline teacher source's producer: it lives with the other teacher sources; the store format it
writes (reader, writer, codec) is `megakd.data.logits_store`.

Every rank runs the teacher forward-only (TP inside it); the store's shards (fixed by the dataset)
go round-robin to the data-parallel ranks and TP rank 0 of each writes its own. A document longer
than `window` is covered by windows `stride` apart; each window emits only the positions past the
previous window's end, so every position but the first `window` has >= window - stride tokens of
left context. Targets come from `megakd.losses.truncate_teacher`, the trainer's own online maths.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import List, Literal, Optional, Tuple, get_args

import numpy as np
import torch

from megakd.config import Precision, TransformerImpl
from megakd.data.logits_store import codec
from megakd.data.logits_store import store as st
from megakd.data.shards import assigned, start_or_resume
from megakd.errors import ConfigError, DataError, StoreError
from megakd.inference import right_pad
from megakd.losses.spec import TargetSpec
from megakd.platform import comm, faults
from megakd.toolargs import ToolArgs, flag

RUN_FILE = "dump.json"  # the settings the dump started with: a rerun must match them


@dataclass
class DumpArgs(ToolArgs):
    """tools/dump_teacher_logits.py's settings (flags: --data-prefix, --top-p, ...)."""

    data_prefix: str
    """indexed dataset prefix (<prefix>.bin/.idx)"""
    tokenizer: str
    """the dataset's tokenizer (dir or .gguf); must be the teacher's"""
    output: str
    """store directory (created)"""
    teacher: Optional[str] = None
    """teacher megakd dist checkpoint (dir or iter_* dir)"""
    teacher_hf: Optional[str] = None
    """or a local Hugging Face model dir / .gguf (converted once, cached)"""
    precision: Precision = "fp32"
    """what the teacher runs in (recorded in the store; no student to follow here); bf16 halves its memory"""
    transformer_impl: TransformerImpl = "auto"
    """the teacher's layer spec (auto: Transformer Engine where TE and CUDA are)"""
    top_p: float = 0.95
    """nucleus kept per token (PD paper: 0.95)"""
    top_k: int = 100
    """at most this many ids per token (PD paper: 50-100)"""
    temperature: float = 1.0
    """teacher temperature before truncation"""
    window: int = 2048
    """tokens per teacher forward; longer documents get overlapping windows"""
    stride: int = 1536
    """window step: every token past the first window has >= window - stride tokens of context"""
    tp: int = 1
    """tensor-parallel size of the teacher"""
    micro_batch_size: int = 4
    """windows per forward"""
    codec: Literal["zlib", "lzma"] = "zlib"
    """block compression (lzma: ~8% smaller, slower)"""
    max_kl: float = 1e-3
    """per-token bound on KL(stored || exact truncated) of the quantised probabilities"""
    block_rows: int = 1024
    """token positions per compressed block"""
    shard_tokens: int = 1 << 17
    """tokens per resumable shard file"""
    timeout_minutes: float = 60.0
    """collective timeout"""
    progress: bool = True
    """progress bar"""

    def validate(self) -> None:
        if (self.teacher is None) == (self.teacher_hf is None):
            raise ConfigError("pass exactly one of --teacher CHECKPOINT and --teacher-hf DIR")
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1 (the store keeps at most top-k ids per token), got {self.top_k}")
        try:
            self.spec
        except ConfigError as e:  # the spec names kd.* keys: name this tool's flags instead
            message = str(e)
            for key in ("temperature", "top_p", "top_k"):
                message = message.replace(f"kd.{key}", flag(key))
            raise ConfigError(message) from None
        if self.window < 1 or not 1 <= self.stride <= self.window:
            raise ConfigError(f"need --window >= 1 and 1 <= --stride <= --window (got {self.window}, {self.stride})")
        if self.micro_batch_size < 1 or self.tp < 1:
            raise ConfigError("--micro-batch-size and --tp must be >= 1")
        if self.precision not in get_args(Precision) or self.transformer_impl not in get_args(TransformerImpl):
            raise ConfigError(f"--precision must be one of {list(get_args(Precision))} and --transformer-impl "
                              f"one of {list(get_args(TransformerImpl))} (got {self.precision}, {self.transformer_impl})")
        st.StoreMeta(vocab_size=1, top_k=self.top_k, codec=self.codec, max_kl=self.max_kl,
                     block_rows=self.block_rows, shard_tokens=self.shard_tokens).validate()

    @functools.cached_property
    def spec(self) -> TargetSpec:
        """The truncation the store holds (temperature, top-p, top-k), validated when first built."""
        return TargetSpec(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


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

    tokens, position_ids = right_pad(pieces)
    with torch.no_grad():
        logits = model(tokens.to(device), position_ids.to(device), None)
        target = truncate_teacher(logits, args.spec, tp_group=ps.get_tensor_model_parallel_group())
    ids, lp = target.ids.cpu().numpy(), target.logprobs.float().cpu().numpy()
    return [(ids[r, :len(p)], lp[r, :len(p)]) for r, p in enumerate(pieces)]


def dump_shard(model, tokens, first: int, num: int, lengths: np.ndarray, args: DumpArgs, vocab_size: int,
               device, writer: Optional[st.ShardWriter], bar) -> None:
    """Teacher rows of documents [first, first+num) into `writer` (None: compute only, TP rank > 0).

    The shard's windows are batched by length (less padding) and added back in document order;
    batching depends only on the shard, so any DP size writes the same bytes."""
    pieces = [(d, s, e, emit) for d in range(first, first + num)
              for s, e, emit in windows(int(lengths[d]), args.window, args.stride)]
    order = sorted(range(len(pieces)), key=lambda i: (-(pieces[i][2] - pieces[i][1]), i))
    rows: List[Optional[codec.Rows]] = [None] * len(pieces)
    for b in range(0, len(order), args.micro_batch_size):
        idx = order[b:b + args.micro_batch_size]
        toks = [np.asarray(tokens.get(pieces[i][0], offset=pieces[i][1], length=pieces[i][2] - pieces[i][1]))
                for i in idx]
        top = max(int(t.max()) for t in toks)
        if top >= vocab_size:
            raise DataError(f"dataset {args.data_prefix} has token id {top} >= the tokenizer's "
                            f"{vocab_size} (document {pieces[idx[0]][0]}); tokenize it with {args.tokenizer}")
        for i, (ids, lp) in zip(idx, _forward_rows(model, toks, args, device)):
            _, s, _, emit = pieces[i]
            rows[i] = codec.rows_from_padded(ids[emit - s:], lp[emit - s:])
        bar.update(sum(pieces[i][2] - pieces[i][3] for i in idx))
    if writer is not None:
        for r in rows:  # pieces are in document order, a document's windows in token order
            writer.add(r)


def _prepare(args: DumpArgs, meta: st.StoreMeta) -> bool:
    """Check a previous run in the output used the same settings (its dump.json; a finished store
    also has store.json), else start one. True when the store is already complete."""
    want = {"format": st.FORMAT, "meta": dataclasses.asdict(meta)}
    manifest = os.path.join(args.output, st.MANIFEST)
    if os.path.isfile(manifest):
        with open(manifest) as f:
            have = json.load(f)
        if {"format": have.get("format"), "meta": have.get("meta")} == want:
            return True
        raise StoreError(f"{args.output} already holds a logits store of another dataset, teacher or "
                         "settings; delete it or pass another --output")
    start_or_resume(os.path.join(args.output, RUN_FILE), want,
                    StoreError(f"{args.output} holds a partial dump with other settings; rerun with the "
                               f"same arguments, or delete {args.output}"))
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
    from megakd.config import Runtime
    from megakd.teacher.loading import load_teacher, teacher_path

    args.validate()
    meta, lengths = st.dataset_meta(args.data_prefix, st.StoreMeta(vocab_size=1, top_k=args.spec.top_k))
    tokenizer = MegatronTokenizer(load_tokenizer(args.tokenizer))
    env = platform.init_model_parallel(args.tp, 1, seed=0, timeout_minutes=args.timeout_minutes)
    path = teacher_path(TeacherConfig(checkpoint=args.teacher, hf_path=args.teacher_hf))
    model = load_teacher(path, ParallelConfig(tp=args.tp), tokenizer, args.tokenizer,
                         runtime=Runtime(args.precision, args.transformer_impl))
    if model.position_embedding_type == "learned_absolute" and args.window > model.max_sequence_length:
        raise ConfigError(f"--window {args.window} exceeds the {model.max_sequence_length} positions "
                          f"teacher {path} has learned; pass --window {model.max_sequence_length} or less")
    meta = dataclasses.replace(
        meta, vocab_size=tokenizer.vocab_size, vocab_fingerprint=vocab_fingerprint(tokenizer.hf_tokenizer),
        tokenizer=os.path.abspath(args.tokenizer),
        teacher=os.path.abspath(args.teacher or args.teacher_hf),
        teacher_fingerprint=teacher_fingerprint(path, read_checkpoint_config(path)[1]),
        teacher_precision=args.precision,
        top_p=args.spec.top_p, temperature=args.spec.temperature, window=args.window, stride=args.stride,
        codec=args.codec, max_kl=args.max_kl, block_rows=args.block_rows, shard_tokens=args.shard_tokens)
    if _prepare(args, meta):
        if env.rank == 0:
            print(f"{args.output}: already complete ({meta.num_tokens:,} tokens)", flush=True)
        return DumpResult(meta, 0, 0.0)

    plan = st.shard_plan(lengths, args.shard_tokens)
    is_writer = ps.get_tensor_model_parallel_rank() == 0
    mine = assigned(len(plan), ps.get_data_parallel_world_size(), ps.get_data_parallel_rank(),
                    lambda k: os.path.isfile(os.path.join(args.output, st.shard_file(k))))
    comm.barrier()  # every rank has listed the finished shards before any new one appears
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
            faults.shard_written(written)
    bar.close()
    elapsed = time.perf_counter() - start
    comm.barrier()
    if env.rank == 0:
        st.finish_store(args.output, meta, plan)
        size = sum(os.path.getsize(os.path.join(args.output, st.shard_file(k))) for k in range(len(plan)))
        print(f"dumped {meta.num_tokens:,} tokens of {meta.num_docs:,} documents -> {args.output} "
              f"({size / meta.num_tokens:.1f} B/token; {todo:,} tokens on rank 0 in {elapsed:.1f} s)", flush=True)
    comm.barrier()
    return DumpResult(meta, todo, elapsed)
