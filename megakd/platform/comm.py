"""Every collective megakd issues, on the device of its process group.

NCCL groups take CUDA tensors only and gloo groups CPU tensors only, while the values megakd reduces
(loss sums, timers, checksums) are made wherever is convenient. Each helper moves its tensor to the
group's device when it is not there already, runs the collective, and hands the result back in the
caller's tensor (in place), so call sites are the same on CPU/gloo and CUDA/NCCL. No module outside
this one calls torch.distributed collectives (tests/test_platform_comm.py checks the source).
"""

from typing import List

import torch
import torch.distributed as dist

SUM, MAX, MIN = dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.MIN


def group_device(group=None) -> torch.device:
    """Where `group`'s collectives take their tensors: this process's GPU for NCCL, else the CPU."""
    if isinstance(group, dist.ProcessGroupGloo):  # a bare gloo group (the dedicated-teacher bridge)
        return torch.device("cpu")
    if "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _run(tensor: torch.Tensor, group, collective) -> torch.Tensor:
    """collective(x) on x = tensor moved to the group's device; the result is copied back into
    `tensor`, which is returned."""
    dev = group_device(group)
    x = tensor if tensor.device == dev else tensor.to(dev)
    collective(x)
    if x is not tensor:
        tensor.copy_(x)
    return tensor


def all_reduce(tensor: torch.Tensor, op=SUM, group=None) -> torch.Tensor:
    """Reduce `tensor` over `group` in place; returns it."""
    return _run(tensor, group, lambda x: dist.all_reduce(x, op=op, group=group))


def broadcast(tensor: torch.Tensor, src: int, group=None) -> torch.Tensor:
    """Broadcast from global rank `src` of `group` in place; returns `tensor`."""
    return _run(tensor, group, lambda x: dist.broadcast(x, src=src, group=group))


def all_gather(tensor: torch.Tensor, group=None) -> List[torch.Tensor]:
    """Every rank's `tensor` (same shape everywhere), in group rank order, on tensor's device."""
    dev = group_device(group)
    x = tensor.contiguous().to(dev)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return [p.to(tensor.device) for p in parts]


def barrier(group=None) -> None:
    dev = group_device(group)  # NCCL needs the device, or it guesses and warns
    dist.barrier(group=group, device_ids=[dev.index] if dev.type == "cuda" else None)


def broadcast_object(obj, src: int = 0, group=None):
    """A picklable object from global rank `src` to every rank of `group`."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def all_gather_object(obj, group=None) -> list:
    """Every rank's picklable object, in group rank order."""
    parts = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, obj, group=group)
    return parts


def isend(tensor: torch.Tensor, dst: int, tag: int, group):
    """Asynchronous point-to-point send of `tensor` to global rank `dst`; returns the work handle.
    On a bare gloo backend (the dedicated-teacher bridge, which spans the whole job) `dst` is its rank."""
    return _p2p(group, "send", tensor, dst, tag)


def irecv(tensor: torch.Tensor, src: int, tag: int, group):
    """Asynchronous receive into `tensor` (on the group's device) from rank `src`; the work handle."""
    return _p2p(group, "recv", tensor, src, tag)


def _p2p(group, kind: str, tensor: torch.Tensor, peer: int, tag: int):
    if tensor.device != group_device(group):
        raise ValueError(f"{kind} of a {tensor.device} tensor over a group on {group_device(group)}: "
                         f"allocate it on comm.group_device(group)")
    if isinstance(group, dist.ProcessGroupGloo):  # a bare backend: its own methods, group ranks
        return getattr(group, kind)([tensor], peer, tag)
    fn = dist.isend if kind == "send" else dist.irecv
    return fn(tensor, peer, group=group, tag=tag)
