"""Distributed checkpoints (megatron-core dist_checkpointing): save, resume, load weights only.

Layout (Megatron-LM's): `<dir>/iter_0000100/` is one dist checkpoint holding the model and optimizer
as sharded tensors (loadable at another TP/PP), plus common state (iteration, consumed samples, LR
schedule) and per-rank RNG states. `<dir>/latest_checkpointed_iteration.txt` names the newest
*complete* one: it is replaced atomically only after every rank has finished writing, so a job killed
mid-save resumes from the previous checkpoint.
"""

import os
import shutil
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import load_common_state_dict
from megatron.core.tensor_parallel import random as mrandom

from megakd.errors import CheckpointError
from megakd.platform import comm

TRACKER = "latest_checkpointed_iteration.txt"
FORMAT_VERSION = 1


def iter_dir(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def latest_iteration(root: str) -> Optional[int]:
    """The iteration of the newest complete checkpoint under root, or None if there is none."""
    path = os.path.join(root, TRACKER)
    if not os.path.isfile(path):
        return None
    text = open(path).read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path} is corrupt ({text!r}); delete it or point checkpoint.load "
                              f"at a directory holding iter_*/ checkpoints")
    return int(text)


def resolve(path: str) -> str:
    """A checkpoint root (with a tracker file) or an iter_* directory -> the iter_* directory."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint path {path} does not exist; check checkpoint.load / "
                              f"checkpoint.pretrained")
    it = latest_iteration(path)
    if it is not None:
        return iter_dir(path, it)
    if os.path.isfile(os.path.join(path, "metadata.json")):
        return path
    raise CheckpointError(f"{path} holds no complete checkpoint (no {TRACKER} and no metadata.json)")


def _rng_sharded_object(pp, tp, dp, pp_rank, tp_rank, dp_rank):
    state = {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": mrandom.get_cuda_rng_tracker().get_states(),
    }
    return ShardedObject("rng_state", state, (pp, tp, dp), (pp_rank, tp_rank, dp_rank), replica_id=0)


def _layout():
    ps = parallel_state
    return (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size(),
            ps.get_data_parallel_world_size(), ps.get_pipeline_model_parallel_rank(),
            ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank())


def _stepped(optimizer) -> bool:
    """Whether the optimizer has state yet. fp16's loss scaler skips the first steps (overflow), and
    megatron's optimizer checkpoint cannot hold an optimizer that never stepped: its state is then
    left out, and rebuilt from the loaded weights (its fp32 master copy is the weights themselves)."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    return any(len(o.optimizer.state) for o in inner if o.optimizer is not None)


def _state_dict(model, optimizer, scheduler, common: dict, is_loading: bool,
                with_optimizer: bool = True, with_rng: bool = True, optimizer_state: bool = True):
    model_sd = model.sharded_state_dict()
    sd = {"model": model_sd, "format_version": FORMAT_VERSION, **common}
    if with_optimizer and optimizer_state:
        sd["optimizer"] = optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading,
            metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    if with_optimizer:
        sd["scheduler"] = scheduler.state_dict()
    if with_rng:
        sd["rng_state"] = _rng_sharded_object(*_layout())
    return sd


def save(root: str, iteration: int, model, optimizer, scheduler, common: dict) -> str:
    """Save synchronously and mark it latest once every rank is done. Returns the iter_* dir.

    optimizer=None saves the model weights only (e.g. a model converted from Hugging Face): such a
    checkpoint initialises a run through `load_weights` / checkpoint.pretrained, it cannot resume one.
    """
    path = iter_dir(root, iteration)
    if dist.get_rank() == 0:
        if os.path.exists(path):  # a leftover of a save that was killed half-way
            shutil.rmtree(path)
        os.makedirs(path)
    comm.barrier()
    full = optimizer is not None
    stepped = full and _stepped(optimizer)
    sd = _state_dict(model, optimizer, scheduler,
                     {"iteration": iteration, "weights_only": not full, "optimizer_state": stepped,
                      **common}, False, with_optimizer=full, with_rng=full, optimizer_state=stepped)
    dist_checkpointing.save(sd, path)
    comm.barrier()
    if dist.get_rank() == 0:
        tmp = os.path.join(root, TRACKER + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(iteration))
        os.replace(tmp, os.path.join(root, TRACKER))
    comm.barrier()
    return path


def load(path: str, model, optimizer, scheduler) -> dict:
    """Resume everything from the latest checkpoint in `path`; returns its common state."""
    ckpt = resolve(path)
    common = load_common_state_dict(ckpt)
    if common.get("weights_only"):
        raise CheckpointError(f"{ckpt} holds model weights only (no optimizer state to resume); "
                              f"start from it with checkpoint.pretrained instead of checkpoint.load")
    stepped = common.get("optimizer_state", True)
    sd = _state_dict(model, optimizer, scheduler, {}, True, with_rng=_same_layout(common),
                     optimizer_state=stepped)
    loaded = dist_checkpointing.load(sd, ckpt)
    model.load_state_dict(loaded["model"])
    if stepped:
        optimizer.load_state_dict(loaded["optimizer"])
    else:
        optimizer.reload_model_params()
    scheduler.load_state_dict(loaded["scheduler"])
    if "rng_state" in loaded:
        rng = loaded["rng_state"]
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        mrandom.get_cuda_rng_tracker().set_states(rng["tracker"])
    return common


def load_weights(path: str, model) -> dict:
    """Load model weights only (any saved TP/PP -> this layout); for init and teachers."""
    ckpt = resolve(path)
    common = load_common_state_dict(ckpt)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, ckpt)
    model.load_state_dict(loaded["model"])
    return common


def _same_layout(common: dict) -> bool:
    pp, tp, dp = _layout()[:3]
    return common.get("layout") == [pp, tp, dp]


def layout_state() -> dict:
    """Common state recording the parallel layout (RNG states only restore onto the same layout)."""
    pp, tp, dp = _layout()[:3]
    return {"layout": [pp, tp, dp]}
