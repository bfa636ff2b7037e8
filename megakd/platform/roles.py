"""One torchrun job, two roles: student ranks and dedicated teacher ranks.

Global ranks [0, students) are students, the rest teachers. Each role gets its own default process
group (on torchrun's store, under a role prefix), so megatron-core's parallel_state initialises inside
a role exactly as in a job of that role alone: the student side runs unchanged. A gloo "bridge" group
over the whole job carries the teacher's targets; the job's store carries small start-up records.
"""

import os
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist

STUDENT, TEACHER = "student", "teacher"


@dataclass(frozen=True)
class Split:
    role: str
    global_rank: int
    world_size: int
    """The whole job's size (students + teachers)."""
    students: int
    store: dist.Store
    bridge: dist.ProcessGroup


_split: Optional[Split] = None


def launched_world_size() -> int:
    """The job's size as torchrun describes it (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def set_split(split: Split) -> Split:
    """Record this process's split (megakd.platform.dist.init_split makes it)."""
    global _split
    _split = split
    return split


def current() -> Optional[Split]:
    """The job's split, or None in a job of one role."""
    return _split


def job_world_size() -> int:
    """All processes of the job (both roles); the default group's size without a split."""
    return _split.world_size if _split is not None else dist.get_world_size()


def reset() -> None:
    global _split
    _split = None
