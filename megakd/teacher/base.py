"""The teacher-source interface and the context a source is built from.

Every source answers `targets(batch)` on the student's last pipeline stage with what
`megakd.losses.distill_loss` takes: dense vocab-sharded teacher logits [b, s, V/TP] (co-located) or a
`SparseTarget` of global ids + log-probs (offline store, dedicated teacher ranks). Which source a run
uses is its placement (`megakd.placements`); the trainer builds it from a `TeacherContext`.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch

from megakd.config import DataConfig, KDConfig, ParallelConfig, TeacherConfig, TrainConfig


@dataclass(frozen=True)
class TeacherContext:
    """What a teacher source may know about the student run: its settings and its place in the job."""

    kd: KDConfig
    teacher: TeacherConfig
    data: DataConfig
    train: TrainConfig
    parallel: ParallelConfig
    """The student's model-parallel layout (tp, pp)."""
    tokenizer: Any
    """The student's `MegatronTokenizer`."""
    spec: Any
    """The run's `megakd.losses.TargetSpec` (kind, kind args, temperature, top-p, top-k)."""
    runtime: Any
    """How the teacher runs (`Config.teacher_runtime()`: precision, layer spec)."""
    vocab_size: Optional[int] = None
    """The student's padded vocabulary (the teacher's logits must match it)."""
    rank: int = 0
    """This process's rank among the students."""
    dp_rank: int = 0
    dp_size: int = 1
    num_microbatches: int = 1
    """Micro-batches per training step on each data-parallel rank."""
    last_stage: bool = True
    """Whether this rank is the student's last pipeline stage (the one that takes targets)."""
    device: torch.device = torch.device("cpu")

    @classmethod
    def of(cls, cfg, tokenizer, **run) -> "TeacherContext":
        """The context from a Config's sections; `run`: the job-dependent fields."""
        return cls(cfg.kd, cfg.teacher, cfg.data, cfg.train, cfg.parallel, tokenizer, cfg.kd.spec(),
                   cfg.teacher_runtime(), **run)


class TeacherSource:
    """Interface: the KD target of one micro-batch, plus per-step metrics for the log.

    A source that needs the batch's token keys (doc, offset) sets `needs_keys`; `batches` may wrap
    the micro-batch stream (e.g. to start a micro-batch's lookup while the one before it computes).
    Teacher weights are loaded in one place for all of them: `megakd.teacher.loading`."""

    needs_keys = False

    def batches(self, stream: Iterator[dict]) -> Iterator[dict]:
        return stream

    def targets(self, batch: dict):
        raise NotImplementedError

    def start(self, iteration: int, consumed_samples: int) -> None:
        """Called once the trainer's datasets and resume point (iteration, samples) are known."""

    def metrics(self) -> Dict[str, float]:
        return {}

    def pipeline(self, student: torch.nn.Module) -> Tuple[torch.nn.Module, Optional[Callable]]:
        """What the pipeline schedule runs (model, adjust_tensor_shapes_fn): a source whose
        tensors travel in the student's p2p (co-located) wraps the student and widens the shapes."""
        return student, None
