"""KD losses: dense and sparse teacher targets, vocab-parallel fused autograd functions,
teacher-logits processing (temperature, top-p, top-k) and alpha schedules. Where it sits: docs/ARCHITECTURE.md.

    spec = TargetSpec("fkl", temperature=T, top_p=..., top_k=...)   # or cfg.kd.spec(); validated here
    loss = distill_loss(student_logits, teacher, spec, tp_group=tp_group, loss_mask=mask)  # per token [...]
    kd = (loss * mask).sum() / mask.sum()
    total = schedules.mix(lm_loss, kd, schedules.alpha_at("wsd", step, total_steps))
    lm, kd = distill_loss(..., labels=labels)  # LM cross-entropy from the same pass (sparse targets)

The loose form `distill_loss(..., kind="jsd", temperature=T, top_p=..., top_k=..., beta=0.3)` builds
the spec itself. Modules: spec (TargetSpec: kind, kind args, temperature, top-p, top-k; validated
once), distill (entry point, temperature convention), terms (each kind as a local
term f, h), dense / sparse (the fused autograd functions), vocab_parallel (TP plumbing, chunking),
targets (SparseTarget, truncation), schedules (alpha).
"""

from megakd.losses import schedules
from megakd.losses.distill import distill_loss, fuses_lm
from megakd.losses.spec import TargetSpec
from megakd.losses.targets import UNUSED_ID, SparseTarget, keep_top, truncate_teacher
from megakd.losses.terms import KINDS

__all__ = ["KINDS", "SparseTarget", "TargetSpec", "UNUSED_ID", "distill_loss", "fuses_lm", "keep_top",
           "schedules", "truncate_teacher"]
