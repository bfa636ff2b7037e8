"""KD losses: dense and sparse teacher targets, vocab-parallel fused autograd functions,
teacher-logits processing (temperature, top-p, top-k) and alpha schedules. See DESIGN.md section 4."""

from megakd.losses import schedules
from megakd.losses.distill import distill_loss
from megakd.losses.targets import UNUSED_ID, SparseTarget, keep_top, truncate_teacher
from megakd.losses.terms import KINDS

__all__ = ["KINDS", "SparseTarget", "UNUSED_ID", "distill_loss", "keep_top", "schedules", "truncate_teacher"]
