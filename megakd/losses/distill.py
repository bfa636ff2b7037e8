"""`distill_loss`: the one entry point for KD losses (dense or sparse teacher, any TP size).

Temperature convention (Hinton / PD paper): both distributions are taken at temperature T,
p = softmax(z_t / T), q = softmax(z_s / T), and the loss is NOT multiplied by T^2. The gradient
wrt the student logits therefore carries a 1/T factor (fkl: (q - p) / T). Why no T^2: in pre-training
distillation the KD term is mixed with the LM loss by alpha, and the PD paper tunes alpha with T <= 2
without rescaling; T^2 only matters for large T. Callers who want Hinton's scaling multiply by T^2.
A SparseTarget is taken at the spec's temperature (produce it with `truncate_teacher(logits, spec)`);
T then applies to the student only, and a truncating spec cuts it again (pass `spec.untruncated()`
for a target its source already truncated at the spec). `mse` compares z_s / T with z_t / T; `nll` is cross-entropy to the teacher's
argmax (T applies to the student).

The teacher is a constant (no gradient flows to it). The result is the per-token loss [...], fp32
(fp64 for fp64 inputs); the student gradient comes back in the student's dtype. Callers mask and reduce. `loss_mask` (same leading shape)
lets the loss skip tokens where it is 0: their loss and gradient are exactly 0.

`labels` (global ids, same leading shape) fuses the LM loss into a sparse-target pass: the result is
then [2, ...] = (cross-entropy of the label at T = 1, KD), from one chunk loop over the logits and
one backward pass, in place of a separate vocab-parallel CE (see sparse.py). Dense targets that stay
dense (untruncated, or kind 'mse') cannot take labels. `grad_in_logits=True` (sparse path) makes the
backward write the student gradient into the logits' own storage, as megatron's vocab-parallel CE
does: no new [tokens, V_local] buffer to allocate and page in. Only for logits nothing reads after the
backward, and for one backward per forward (a second one, or another autograd user of the logits,
fails loudly on its version check).
"""

from typing import Optional

import torch

from megakd.losses import vocab_parallel as vp
from megakd.losses.dense import DenseDistill
from megakd.losses.spec import TargetSpec
from megakd.losses.sparse import SparseDistill
from megakd.losses.targets import SparseTarget, keep_top, truncate_teacher
from megakd.losses.terms import LogitMSE

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def distill_loss(
    student_logits,
    teacher,
    spec: Optional[TargetSpec] = None,
    *,
    tp_group=None,
    chunk_size=None,
    loss_mask=None,
    labels=None,
    grad_in_logits=False,
    **loose,
):
    """Per-token KD loss [...] between student logits [..., V_local] and a dense or sparse teacher;
    with `labels`, [2, ...] (LM cross-entropy, KD). `spec` says the kind and the teacher processing;
    without it, `kind=`, `temperature=`, `top_p=`, `top_k=` and the kind's arguments (e.g. `beta=`)
    build one."""
    spec = _spec_of(spec, loose)
    _check_options(student_logits, chunk_size)
    kind, temperature, top_p, top_k = spec.kind, spec.temperature, spec.top_p, spec.top_k
    term = spec.term()
    v_local = student_logits.shape[-1]
    shard = vp.shard_of(tp_group, v_local)
    lead = student_logits.shape[:-1]
    student = student_logits.reshape(-1, v_local)
    rows = _rows(loss_mask, lead)

    if isinstance(teacher, SparseTarget):
        if kind == "mse":
            raise ValueError("kind 'mse' compares logits and needs dense teacher logits, not a SparseTarget")
        _check_sparse(teacher, lead, shard.v_global)
        if kind == "nll":
            teacher = keep_top(teacher, top_k=1)
        elif spec.truncates:
            teacher = keep_top(teacher, spec)
    elif isinstance(teacher, torch.Tensor):
        if teacher.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits shape {tuple(teacher.shape)} != student logits shape "
                f"{tuple(student_logits.shape)}; both must be [..., V_local] with the same vocab sharding"
            )
        if teacher.dtype not in _FLOATS:
            raise ValueError(f"teacher logits must be floating point, got {teacher.dtype}")
        if kind == "mse":  # the spec refuses mse with truncation
            term = LogitMSE(vocab=shard.v_global)
        elif spec.sparse:
            teacher = truncate_teacher(
                teacher, temperature=temperature, top_p=1.0 if kind == "nll" else top_p,
                top_k=1 if kind == "nll" else top_k, tp_group=tp_group, chunk_size=chunk_size,
            )
    else:
        raise ValueError(f"teacher must be a logits Tensor or a SparseTarget, got {type(teacher).__name__}")

    if grad_in_logits and not isinstance(teacher, SparseTarget):
        raise ValueError("grad_in_logits needs a sparse target (a SparseTarget, or truncated dense logits)")
    if labels is not None:
        _check_labels(labels, lead, shard.v_global, teacher)
        labels = labels.reshape(-1)
    if isinstance(teacher, SparseTarget):
        k = teacher.k
        loss = SparseDistill.apply(
            student, teacher.ids.reshape(-1, k), teacher.logprobs.detach().reshape(-1, k), labels, rows,
            term, float(temperature), shard, chunk_size, bool(grad_in_logits),
        )
    else:
        loss = DenseDistill.apply(
            student, teacher.detach().reshape(-1, v_local), rows, term, float(temperature), shard, chunk_size
        )
    return loss.reshape(*loss.shape[:-1], *lead)  # [...] or [2, ...]


def fuses_lm(teacher, spec: TargetSpec) -> bool:
    """Whether distill_loss takes `labels` for this teacher: a SparseTarget, or dense logits the
    spec truncates (top_p < 1, top_k > 0 or kind 'nll'); dense logits that stay dense cannot."""
    return isinstance(teacher, SparseTarget) or spec.sparse


def _spec_of(spec, loose) -> TargetSpec:
    """The spec, or one built (and so validated) from the loose keyword form."""
    if spec is None:
        known = {k: loose.pop(k) for k in ("kind", "temperature", "top_p", "top_k") if k in loose}
        return TargetSpec(kind_args=loose, **known)
    if not isinstance(spec, TargetSpec):
        raise ValueError(f"spec must be a TargetSpec, got {type(spec).__name__}")
    if loose:
        raise ValueError(f"pass either a TargetSpec or loose settings, not both (got {sorted(loose)})")
    return spec


def _check_options(student, chunk_size):
    if not isinstance(student, torch.Tensor) or student.dtype not in _FLOATS or student.dim() < 1:
        raise ValueError("student_logits must be a floating-point tensor [..., V_local]")
    if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _rows(loss_mask, lead):
    if loss_mask is None:
        return None
    if tuple(loss_mask.shape) != tuple(lead):
        raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} != student logits leading shape {tuple(lead)}")
    rows = loss_mask.reshape(-1).nonzero().squeeze(1)
    return None if rows.numel() == loss_mask.numel() else rows  # nothing to skip: plain slices are faster


def _check_labels(labels, lead, v_global, teacher):
    if not isinstance(teacher, SparseTarget):  # what fuses_lm says
        raise ValueError("labels (the fused LM + KD pass) need a sparse target: a SparseTarget, or dense "
                         "teacher logits with top_p < 1 or top_k > 0 (not kind 'mse')")
    if not torch.is_tensor(labels) or tuple(labels.shape) != tuple(lead):
        raise ValueError(f"labels must be a tensor of shape {tuple(lead)} (the student logits' leading shape)")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of global vocab ids, got {labels.dtype}")
    if labels.numel() and bool(((labels < 0) | (labels >= v_global)).any()):
        raise ValueError(f"labels must be global vocab ids in [0, {v_global})")


def _check_sparse(target, lead, v_global):
    ids, logprobs = target.ids, target.logprobs
    if ids.shape != logprobs.shape or tuple(ids.shape[:-1]) != tuple(lead):
        raise ValueError(
            f"SparseTarget ids {tuple(ids.shape)} / logprobs {tuple(logprobs.shape)} must both be "
            f"[..., k] with leading shape {tuple(lead)} (the student's)"
        )
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"SparseTarget ids must be an integer tensor, got {ids.dtype}")
    if ids.numel() == 0:
        return
    if bool(((ids < -1) | (ids >= v_global)).any()):
        raise ValueError(f"SparseTarget ids must be global vocab ids in [0, {v_global}) or -1 for unused slots")
    if bool((logprobs.isnan() | (logprobs > 1e-3)).any()):
        raise ValueError("SparseTarget logprobs must be log-probabilities (<= 0, -inf for unused slots), not logits")
    used = (ids >= 0) & (logprobs > float("-inf"))
    k = ids.shape[-1]
    slot = torch.arange(k, device=ids.device)
    keyed = torch.where(used, ids, -2 - slot).sort(dim=-1).values  # unused slots get distinct keys
    if bool((keyed[..., 1:] == keyed[..., :-1]).any()):
        raise ValueError("SparseTarget has a duplicate id in a row; mark repeats unused (id -1 or logprob -inf)")
