"""Resumable sharded outputs of forward-only passes (MiniPLM scores, the teacher-logits dump).

Work is cut into shards fixed by the data alone; shard k belongs to data-parallel rank k % DP, each
shard file is written to a temp name and renamed, and a rerun skips shards already on disk. Callers
report each written shard to `megakd.platform.faults.shard_written`, so tests can kill a run half-way
and check that the resumed output is identical.
"""

import json
import os
from typing import Callable, List

import numpy


def assigned(n_shards: int, dp: int, dp_rank: int, done: Callable[[int], bool]) -> List[int]:
    """The shards this data-parallel rank still has to write."""
    return [k for k in range(dp_rank, n_shards, dp) if not done(k)]


def start_or_resume(run_file: str, settings: dict, mismatch: Exception) -> None:
    """Rank 0 records the run's settings beside its shards unless a run is there already; every
    rank then checks that run had the same settings (raises `mismatch` when not), so a restart
    resumes only its own shards."""
    import torch.distributed as dist

    from megakd.platform import comm

    if dist.get_rank() == 0:
        os.makedirs(os.path.dirname(run_file), exist_ok=True)
        if not os.path.isfile(run_file):
            write_json_atomic(run_file, settings)
    comm.barrier()
    with open(run_file) as f:
        if json.load(f) != settings:
            raise mismatch


def write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def save_npy_atomic(path: str, array: numpy.ndarray) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    numpy.save(tmp, array)
    os.replace(tmp, path)
