"""Co-located teacher: every student rank holds the teacher's slice for its own TP rank and PP stage.

At PP > 1 the teacher's layers are split over the student's pipeline stages like the student's, and
its hidden states ride along with the student's in megatron-core's 1F1B p2p: `PipelinePair` sends
cat([student, teacher], hidden) and splits what it receives. The teacher part is detached, so the
gradient sent back is the student's own, with zeros in the teacher's columns. On the last stage the
teacher's dense vocab-sharded logits [s, b, V/TP] go straight into `distill_loss`.
"""

from typing import Callable, List, Optional, Tuple

import torch
from megatron.core import parallel_state as ps
from megatron.core.utils import get_attr_wrapped_model

from megakd.config import ParallelConfig
from megakd.models import sharded_logits
from megakd.teacher.base import TeacherContext, TeacherSource
from megakd.teacher.loading import load_teacher, teacher_path


class PipelinePair(torch.nn.Module):
    """What the pipeline schedule runs: the student's stage (DDP-wrapped) and the frozen teacher's.

    `module` is the student so megatron's `get_attr_wrapped_model` (config, model_type, decoder)
    finds the student; the teacher is only reached through this class."""

    def __init__(self, student, teacher):
        super().__init__()
        self.module = student
        self.teacher = teacher
        self.student_hidden = get_attr_wrapped_model(student, "config").hidden_size
        self.teacher_logits = None  # last stage: the current micro-batch's, taken by targets()

    def set_input_tensor(self, input_tensor: List[Optional[torch.Tensor]]):
        x = input_tensor[0]
        student, teacher = (None, None) if x is None else (
            x[..., :self.student_hidden], x[..., self.student_hidden:].detach())
        get_attr_wrapped_model(self.module, "set_input_tensor")([student])
        if teacher is not None:
            teacher = teacher.to(self.teacher.config.params_dtype)
        self.teacher.set_input_tensor([teacher])

    def forward(self, tokens, position_ids, attention_mask, **kwargs):
        out = self.module(tokens, position_ids, attention_mask, **kwargs)
        with torch.no_grad():
            if self.teacher.post_process:  # in the student's logits layout [s, b, V/TP]
                self.teacher_logits = sharded_logits(
                    self.teacher, lambda: self.teacher(tokens, position_ids, attention_mask))
                return out
            teacher_out = self.teacher(tokens, position_ids, attention_mask)
        # The p2p sends one tensor of the student's pipeline dtype.
        return torch.cat([out, teacher_out.to(out.dtype)], dim=-1)


class ColocatedTeacher(TeacherSource):
    """The teacher at the student's TP and PP, run on the same tokens inside the student's pipeline."""

    def __init__(self, ctx: TeacherContext):
        # Same TP and PP as the student: load_teacher refuses a split the teacher does not allow.
        self.model = load_teacher(teacher_path(ctx.teacher),
                                  ParallelConfig(tp=ctx.parallel.tp, pp=ctx.parallel.pp),
                                  ctx.tokenizer, ctx.data.tokenizer, ctx.vocab_size, ctx.runtime)
        self.pair = None

    def pipeline(self, student) -> Tuple[torch.nn.Module, Optional[Callable]]:
        self.pair = PipelinePair(student, self.model)
        if ps.get_pipeline_model_parallel_world_size() == 1:
            return self.pair, None  # megatron's no-pipelining schedule takes no shape function
        extra = self.model.config.hidden_size

        def with_teacher(recv_shapes, send_shapes):
            return ([(*s[:-1], s[-1] + extra) for s in recv_shapes],
                    [(*s[:-1], s[-1] + extra) for s in send_shapes])

        return self.pair, with_teacher

    def targets(self, batch: dict):
        logits, self.pair.teacher_logits = self.pair.teacher_logits, None
        return logits
