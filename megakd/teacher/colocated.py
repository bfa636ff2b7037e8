"""Co-located teacher: every student rank holds the teacher at the student's TP (PP=1)."""

import torch

from megakd.config import ParallelConfig
from megakd.teacher import TeacherSource
from megakd.teacher.loading import load_teacher


class ColocatedTeacher(TeacherSource):
    """Every student rank holds the teacher at the student's TP and runs it on the same tokens."""

    def __init__(self, trainer):
        self.model = load_teacher(trainer, ParallelConfig(tp=trainer.cfg.parallel.tp))

    @torch.no_grad()
    def targets(self, batch: dict):
        return self.model(batch["tokens"], batch["position_ids"], None)
