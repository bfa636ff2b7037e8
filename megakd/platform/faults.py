"""Fault injection for tests: environment variables that make a process die or hang at a chosen point.

Production code calls the hooks below at those points; each does nothing unless its variable is set.
Tests set the variables (named here, imported from here) to check that a killed run resumes exactly.
"""

import os
import signal
import time

KILL_AT_ITER = "MEGAKD_FAULT_KILL_AT_ITER"
"""N: SIGKILL the trainer just before it runs training iteration N."""
KILL_AFTER_SHARDS = "MEGAKD_FAULT_KILL_AFTER_SHARDS"
"""N: SIGKILL a sharded forward-only job (MiniPLM scores, teacher-logits dump) once it wrote N shards."""
TEACHER = "MEGAKD_FAULT_TEACHER"
"""kill:R or hang:R: dedicated teacher global rank R dies / stops answering after its first student step."""


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill_at_iteration(iteration: int) -> None:
    """Call before running training iteration `iteration` (1-based)."""
    fault = int(os.environ.get(KILL_AT_ITER, "0"))
    if fault and iteration == fault:
        _kill()


def shard_written(written: int) -> None:
    """Call after each shard a process wrote (`written` so far in this run)."""
    fault = int(os.environ.get(KILL_AFTER_SHARDS, "0"))
    if fault and written == fault:
        _kill()


def teacher_step(rank: int) -> None:
    """Call on dedicated teacher global rank `rank` once it has computed its first student step."""
    kind, _, target = os.environ.get(TEACHER, "").partition(":")
    if not kind or int(target) != rank:
        return
    if kind == "kill":
        _kill()
    if kind == "hang":
        time.sleep(10 ** 6)
