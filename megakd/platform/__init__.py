"""The platform floor: devices, process groups and collectives that run on CPU/gloo and CUDA/NCCL.

Start-up lives in `megakd.platform.dist` (re-exported here), the split of a job into student and
teacher roles in `roles`, collectives in `comm`, the CPU layer in `cpu`.
"""

from megakd.platform import cpu, roles
from megakd.platform.dist import (RENDEZVOUS_VARS, DistEnv, destroy, device, init_distributed,
                                  init_model_parallel, init_split, is_rendezvous_var,
                                  seed_everything, synchronize)
from megakd.platform.roles import job_world_size, launched_world_size

__all__ = ["RENDEZVOUS_VARS", "DistEnv", "cpu", "destroy", "device", "init_distributed",
           "init_model_parallel", "init_split", "is_rendezvous_var", "job_world_size",
           "launched_world_size", "roles", "seed_everything", "synchronize"]
