"""Co-located teacher: every student rank holds the teacher at the student's TP (PP=1)."""

import torch

from megakd.config import ParallelConfig
from megakd.teacher import TeacherSource
from megakd.teacher.loading import load_teacher, teacher_path


class ColocatedTeacher(TeacherSource):
    """Every student rank holds the teacher at the student's TP and runs it on the same tokens."""

    def __init__(self, trainer):
        cfg = trainer.cfg
        self.model = load_teacher(teacher_path(cfg.teacher), ParallelConfig(tp=cfg.parallel.tp),
                                  trainer.tokenizer, cfg.data.tokenizer, trainer.model.vocab_size)

    @torch.no_grad()
    def targets(self, batch: dict):
        return self.model(batch["tokens"], batch["position_ids"], None)
