"""Teacher placement: where a micro-batch's KD target comes from.

Every source answers `targets(batch)` on the student's last pipeline stage with what
`megakd.losses.distill_loss` takes: dense vocab-sharded teacher logits [b, s, V/TP] (co-located) or a
`SparseTarget` of global ids + log-probs (offline store, dedicated teacher ranks). `metrics()` adds
per-step numbers to the log (e.g. how long the student waited for the teacher). The trainer's
`forward_step` is the only caller, so a new placement is a new module here and one line in `build`.
A source that needs the batch's token keys (doc, offset) sets `needs_keys`; `batches` may wrap the
micro-batch stream (e.g. to start a micro-batch's lookup while the one before it computes).
Teacher weights are loaded in one place for all of them: `megakd.teacher.loading`.
"""

from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

from megakd.errors import ConfigError


class TeacherSource:
    """Interface: the KD target of one micro-batch, plus per-step metrics for the log."""

    needs_keys = False

    def batches(self, stream: Iterator[dict]) -> Iterator[dict]:
        return stream

    def targets(self, batch: dict):
        raise NotImplementedError

    def start(self, trainer) -> None:
        """Called once the trainer's datasets and resume point are known."""

    def metrics(self) -> Dict[str, float]:
        return {}

    def pipeline(self, student: torch.nn.Module) -> Tuple[torch.nn.Module, Optional[Callable]]:
        """What the pipeline schedule runs (model, adjust_tensor_shapes_fn): a source whose
        tensors travel in the student's p2p (co-located) wraps the student and widens the shapes."""
        return student, None


def build(trainer) -> TeacherSource:
    """The teacher source named by kd.source / teacher.placement (config already validated)."""
    if trainer.cfg.kd.source == "online" and trainer.cfg.teacher.placement == "dedicated":
        from megakd.teacher.dedicated import DedicatedTeacher

        return DedicatedTeacher(trainer)
    if trainer.cfg.kd.source == "online":
        from megakd.teacher.colocated import ColocatedTeacher

        return ColocatedTeacher(trainer)
    if trainer.cfg.kd.source == "offline":
        from megakd.teacher.offline import OfflineTeacher

        from megatron.core import parallel_state as ps

        return OfflineTeacher(trainer.cfg, trainer.tokenizer, ps.is_pipeline_last_stage())
    raise ConfigError(f"kd.source={trainer.cfg.kd.source!r} has no teacher source")
