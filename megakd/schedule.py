"""The run's schedule: which training steps, evaluations and exit a run walks from a resume point.

The Trainer's loop and the dedicated teacher's server both walk `steps`, so the two roles agree on
every micro-batch without exchanging tokens. Pure arithmetic on `train.*`: no imports above it.
"""

from dataclasses import dataclass
from typing import Iterator, Tuple


@dataclass(frozen=True)
class Step:
    iteration: int
    """The training iteration this step completes (1-based)."""
    evaluation: int
    """After the step: the number of the evaluation to run (1-based), or 0 for none."""
    exit: bool
    """train.exit_interval: the run stops after this step (and its evaluation)."""


def steps(train, start_iteration: int) -> Iterator[Step]:
    """The steps after `start_iteration` up to train.iters, ending early at an exit_interval step."""
    for it in range(start_iteration + 1, train.iters + 1):
        evaluates = train.eval_interval and it % train.eval_interval == 0
        exits = bool(train.exit_interval and it % train.exit_interval == 0)
        yield Step(it, it // train.eval_interval if evaluates else 0, exits)
        if exits:
            return


def phases(train, start_iteration: int) -> Iterator[Tuple[str, int]]:
    """`steps` as micro-batch phases: ("train", iteration) per step, then ("valid", evaluation
    number) after each step that evaluates."""
    for step in steps(train, start_iteration):
        yield "train", step.iteration
        if step.evaluation:
            yield "valid", step.evaluation


def evaluations(train) -> int:
    """How many evaluations the validation dataset is sized for (0 without train.eval_interval)."""
    return (train.iters // train.eval_interval + 1) if train.eval_interval else 0


def sample_counts(train) -> Tuple[int, int]:
    """Samples the training and validation datasets must hold for a whole run."""
    return (train.iters * train.global_batch_size,
            evaluations(train) * train.eval_iters * train.global_batch_size)


def valid_start(train, evaluation: int) -> int:
    """Where evaluation number `evaluation` starts in the validation sample stream."""
    return (evaluation - 1) * train.eval_iters * train.global_batch_size
