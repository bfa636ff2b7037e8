"""Device and process-group start-up from torchrun's environment (re-exported by `megakd.platform`).

gloo + the CPU layer (`megakd.platform.cpu`) when CUDA is absent, NCCL on GPUs. A plain
`python script.py` (no torchrun) runs as a world of one.
"""

import datetime
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megakd.platform import cpu, roles


# What torchrun sets to describe a job; a process started from inside one must not inherit them, or
# it would try to join that job's rendezvous (TORCHELASTIC_USE_AGENT_STORE in particular).
RENDEZVOUS_VARS = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                             "ROLE_RANK", "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "ROLE_NAME",
                             "MASTER_ADDR", "MASTER_PORT"})


def is_rendezvous_var(key: str) -> bool:
    return key in RENDEZVOUS_VARS or key.startswith("TORCHELASTIC_")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    """The device this process computes on."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronize() -> None:
    """Wait for this device's queued work (timers around GPU work need it; a no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def init_distributed(timeout_minutes: float = 10.0, store=None, rank=None,
                     world_size=None) -> DistEnv:
    """Initialise torch.distributed (idempotent) and the device; install the CPU layer without CUDA.

    Under torchrun the rendezvous comes from its environment (env://). Without it this process is a
    world of one on a fresh local port, and os.environ is left untouched (no MASTER_PORT leaks into
    later jobs started from this process). `store`/`rank`/`world_size`: a role of a split job
    (`megakd.platform.roles`) whose default group is that role's processes alone.
    """
    launched = "WORLD_SIZE" in os.environ
    if store is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        cpu.install()
        backend = "gloo"
    if not dist.is_initialized() and store is not None:
        dist.init_process_group(backend=backend, store=store, world_size=world_size, rank=rank,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    elif not dist.is_initialized():
        init_method = "env://" if launched else f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group(backend=backend, init_method=init_method, world_size=world_size,
                                rank=rank, timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device(), backend)


def init_split(teacher_ranks: int, timeout_minutes: float = 10.0) -> roles.Split:
    """Rendezvous with the whole job, then initialise this process's role (megakd.platform.roles) as
    its default group; a gloo bridge over the whole job carries what the roles send each other."""
    timeout = datetime.timedelta(minutes=timeout_minutes)
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    students = world - teacher_ranks
    role = roles.STUDENT if rank < students else roles.TEACHER
    first, size = (0, students) if role == roles.STUDENT else (students, teacher_ranks)
    init_distributed(timeout_minutes, store=dist.PrefixStore(f"megakd/{role}/", store),
                     rank=rank - first, world_size=size)
    bridge = dist.ProcessGroupGloo(dist.PrefixStore("megakd/bridge/", store), rank, world, timeout)
    return roles.set_split(roles.Split(role, rank, world, students, store, bridge))


def init_model_parallel(tp: int = 1, pp: int = 1, seed: int = 1234, timeout_minutes: float = 10.0):
    """torch.distributed + megatron-core parallel_state (TP x PP x DP) + seeded RNGs."""
    from megatron.core import parallel_state, tensor_parallel

    env = init_distributed(timeout_minutes)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
            distributed_timeout_minutes=int(max(1, timeout_minutes)))
    seed_everything(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return env


def seed_everything(seed: int) -> None:
    """Same seed on every rank for python/numpy/torch; megatron offsets the TP-local streams itself."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def destroy() -> None:
    """Tear down megatron-core and torch.distributed state (tests run several jobs per process)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    roles.reset()
