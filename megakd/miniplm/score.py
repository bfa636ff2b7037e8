"""Score instances: mean per-token log-likelihood under the teacher and the reference model.

    score(i) = mean_t log p_teacher(x_t | x_<t) - mean_t log p_ref(x_t | x_<t)   over t = 1..n-1

The per-token NLL comes from `megakd.inference` (megatron-core's GPTModel called with ``labels=``:
vocab-parallel cross entropy, nothing gathers the full vocabulary, so TP > 1 just works).

Output: a directory SCORES/ with
  * scores.npy     float32 [N, 3]: diff, teacher mean log p, reference mean log p (NaN for an
                   instance of one token: nothing to predict)
  * metadata.json  the datasets (fingerprints), the instance definition, both models
While running, SCORES/shards/ holds one .npy per block of ``shard_size`` instances, written
atomically; shard k belongs to data-parallel rank k % DP. A restarted run skips finished shards,
and the final files are assembled from the shards once all exist, so a killed-and-resumed run gives
byte-identical files (for the same layout and micro-batch size).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import List, Literal, Optional

import numpy
import torch

from megakd.data.shards import assigned, save_npy_atomic, start_or_resume, write_json_atomic
from megakd.errors import CheckpointError, ConfigError, DataError
from megakd.inference import load_for_inference, mean_logprobs
from megakd.miniplm.instances import Instances
from megakd.platform import comm, faults
from megakd.toolargs import ToolArgs

FORMAT = "megakd.miniplm.scores/1"
COLUMNS = ("diff", "teacher", "reference")
SCORES_FILE, META_FILE, SHARD_DIR, RUN_FILE = "scores.npy", "metadata.json", "shards", "run.json"


@dataclass
class ScoreArgs(ToolArgs):
    """tools/miniplm_score.py's settings (flags: --teacher, --data-prefix, ...)."""

    teacher: str
    """teacher dist checkpoint (dir or iter_* dir)"""
    reference: str
    """reference-model dist checkpoint"""
    data_prefix: List[str]
    """indexed dataset prefix(es); several = one corpus of several sources"""
    output: str
    """scores directory (created)"""
    instances: Literal["chunks", "documents"] = "chunks"
    """chunks: fixed-length pieces of the token stream (MiniPLM); documents: one instance per document"""
    instance_length: int = 1024
    """tokens per chunk (the last chunk of a source is shorter); MiniPLM uses 1025 (1024 predictions)"""
    micro_batch_size: int = 4
    """instances per forward"""
    shard_size: int = 256
    """instances per resumable shard file"""
    tp: int = 1
    """tensor-parallel size of both models"""
    pp: int = 1
    """pipeline-parallel size of both models (megatron-core schedule, forward only)"""
    timeout_minutes: float = 60.0
    """collective timeout (ranks wait for each other at the end)"""
    progress: bool = True
    """progress bar"""

    def validate(self) -> None:
        if self.micro_batch_size < 1 or self.shard_size < 1:
            raise ConfigError("--micro-batch-size and --shard-size must be >= 1")


def score_batch(teacher, reference, batch, device) -> Optional[numpy.ndarray]:
    """float32 [b, 3]: diff, teacher, reference (None off the last pipeline stage)."""
    t = mean_logprobs(teacher, batch, device)
    r = mean_logprobs(reference, batch, device)
    if t is None:
        return None
    return torch.stack([t - r, t, r], dim=1).float().numpy()


def _model_meta(m) -> dict:
    return {"path": os.path.abspath(m.path), "iteration": m.iteration, "arch": m.config.arch,
            "num_layers": m.config.num_layers, "hidden_size": m.config.hidden_size,
            "vocab_size": m.vocab_size}


def run_metadata(instances: Instances, teacher, reference, args: ScoreArgs) -> dict:
    return {
        "format": FORMAT,
        "columns": list(COLUMNS),
        "score": "mean log p over tokens 1..n-1 of each instance; diff = teacher - reference",
        "instances": instances.metadata(),
        "teacher": _model_meta(teacher),
        "reference": _model_meta(reference),
        "shard_size": args.shard_size,
        "micro_batch_size": args.micro_batch_size,
    }


def _check_models(teacher, reference, instances: Instances) -> None:
    if teacher.vocab_size != reference.vocab_size:
        raise CheckpointError(f"teacher ({teacher.path}) and reference ({reference.path}) have "
                              f"vocabularies of {teacher.vocab_size} and {reference.vocab_size}; "
                              f"both must use the tokenizer the corpus was tokenized with")
    for m in (teacher, reference):
        if m.max_length is not None and instances.max_length - 1 > m.max_length:
            raise DataError(f"instances of up to {instances.max_length} tokens need "
                            f"{instances.max_length - 1} positions but {m.path} has learned "
                            f"positions for {m.max_length}; lower --instance-length")


def _check_ids(batch, vocab_size: int, instances: Instances, first: int) -> None:
    top = max(int(x.max()) for x in batch)
    if top >= vocab_size:
        src = instances.sources[instances.source[first]].prefix
        raise DataError(f"dataset {src} has token id {top} >= the models' vocabulary {vocab_size} "
                        f"(near instance {first}); tokenize it with the teacher's tokenizer")


def _prepare_output(args: ScoreArgs, meta: dict) -> bool:
    """Create SCORES/shards and check a previous run there was the same; True if already done."""
    final_meta = os.path.join(args.output, META_FILE)
    if os.path.isfile(final_meta):
        with open(final_meta) as f:
            if json.load(f) == meta:
                return True
        raise DataError(f"{args.output} already holds scores of another run (other data, models "
                        f"or settings); delete it or pass another --output")
    shard_dir = os.path.join(args.output, SHARD_DIR)
    start_or_resume(os.path.join(shard_dir, RUN_FILE), meta,
                    DataError(f"{shard_dir} holds partial scores of another run (other data, models "
                              f"or settings); delete {args.output} or pass the same arguments"))
    return False


@dataclass
class ScoreResult:
    metadata: dict
    scored: int  # instances this rank scored now (0 when the output was already complete)
    seconds: float  # wall time of this rank's scoring loop (forwards, data, shard writes)


def score(args: ScoreArgs) -> ScoreResult:
    """Score every instance of ``args.data_prefix`` into ``args.output``."""
    from megatron.core import parallel_state as ps
    from tqdm import tqdm

    from megakd import platform

    args.validate()
    instances = Instances(args.data_prefix, args.instances, args.instance_length)
    env = platform.init_model_parallel(args.tp, args.pp, seed=0,
                                       timeout_minutes=args.timeout_minutes)
    teacher = load_for_inference(args.teacher, args.tp, args.pp)
    reference = load_for_inference(args.reference, args.tp, args.pp)
    _check_models(teacher, reference, instances)
    meta = run_metadata(instances, teacher, reference, args)
    is_writer = ps.get_tensor_model_parallel_rank() == 0 and ps.is_pipeline_last_stage()
    if _prepare_output(args, meta):
        if env.rank == 0:
            print(f"{args.output}: already complete ({len(instances)} instances)", flush=True)
        return ScoreResult(meta, 0, 0.0)

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    shard_dir = os.path.join(args.output, SHARD_DIR)
    n_shards = -(-len(instances) // args.shard_size)
    mine = assigned(n_shards, dp, dp_rank, lambda k: os.path.isfile(_shard_path(shard_dir, k)))
    comm.barrier()  # every rank has listed the finished shards before any new one appears

    todo = sum(len(_shard_range(k, args.shard_size, len(instances))) for k in mine)
    bar = tqdm(total=todo, unit="inst", desc=f"scoring (DP {dp})", mininterval=1.0,
               disable=(env.rank != 0) or not args.progress, dynamic_ncols=True)
    written = 0
    start = time.perf_counter()
    for k in mine:
        rows = []
        idx = _shard_range(k, args.shard_size, len(instances))
        for b in range(0, len(idx), args.micro_batch_size):
            batch = [instances.tokens(i) for i in idx[b:b + args.micro_batch_size]]
            _check_ids(batch, teacher.vocab_size, instances, idx[b])
            rows.append(score_batch(teacher.model, reference.model, batch, env.device))
            bar.update(len(batch))
        if is_writer:
            save_npy_atomic(_shard_path(shard_dir, k), numpy.concatenate(rows))
            written += 1
            faults.shard_written(written)
    bar.close()
    elapsed = time.perf_counter() - start
    comm.barrier()
    if env.rank == 0:
        _assemble(args.output, n_shards, len(instances), meta)
        print(f"scored {len(instances)} instances ({meta['instances']['tokens']:,} tokens) -> "
              f"{args.output} ({todo} on rank 0 in {elapsed:.1f} s)", flush=True)
    comm.barrier()
    return ScoreResult(meta, todo, elapsed)


def _shard_path(shard_dir: str, k: int) -> str:
    return os.path.join(shard_dir, f"shard_{k:06d}.npy")


def _shard_range(k: int, size: int, n: int) -> range:
    return range(k * size, min(n, (k + 1) * size))


def _assemble(output: str, n_shards: int, n: int, meta: dict) -> None:
    shard_dir = os.path.join(output, SHARD_DIR)
    scores = numpy.concatenate([numpy.load(_shard_path(shard_dir, k)) for k in range(n_shards)])
    if scores.shape != (n, len(COLUMNS)):
        raise DataError(f"shards in {shard_dir} hold {scores.shape} scores, expected "
                        f"({n}, {len(COLUMNS)}); delete {output} and score again")
    save_npy_atomic(os.path.join(output, SCORES_FILE), scores)
    write_json_atomic(os.path.join(output, META_FILE), meta)  # written last: marks completion
    shutil.rmtree(shard_dir)


def read_scores(path: str):
    """(scores [N, 3] float32, metadata) of a finished scoring run."""
    meta_path, scores_path = os.path.join(path, META_FILE), os.path.join(path, SCORES_FILE)
    if not os.path.isfile(meta_path) or not os.path.isfile(scores_path):
        raise DataError(f"{path} holds no finished scores ({META_FILE} + {SCORES_FILE}); run "
                        f"tools/miniplm_score.py --output {path} (it resumes a killed run)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise DataError(f"{meta_path} is not a megakd MiniPLM scores file ({meta.get('format')!r})")
    scores = numpy.load(scores_path)
    if scores.shape != (meta["instances"]["count"], len(COLUMNS)):
        raise DataError(f"{scores_path} has shape {scores.shape} but its metadata describes "
                        f"{meta['instances']['count']} instances; score again")
    return scores, meta
