"""`distill_loss`: the one entry point for KD losses (dense or sparse teacher, any TP size).

Temperature convention (Hinton / PD paper): both distributions are taken at temperature T,
p = softmax(z_t / T), q = softmax(z_s / T), and the loss is NOT multiplied by T^2. The gradient
wrt the student logits therefore carries a 1/T factor (fkl: (q - p) / T). Why no T^2: in pre-training
distillation the KD term is mixed with the LM loss by alpha, and the PD paper tunes alpha with T <= 2
without rescaling; T^2 only matters for large T. Callers who want Hinton's scaling multiply by T^2.
A SparseTarget is taken as given (produce it at temperature T with `truncate_teacher`); T then applies
to the student only. `mse` compares z_s / T with z_t / T; `nll` is cross-entropy to the teacher's
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

import math

import torch

from megakd.losses import vocab_parallel as vp
from megakd.losses.dense import DenseDistill
from megakd.losses.sparse import SparseDistill
from megakd.losses.targets import SparseTarget, keep_top, truncate_teacher
from megakd.losses.terms import LogitMSE, make_term

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def distill_loss(
    student_logits,
    teacher,
    *,
    kind="fkl",
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    tp_group=None,
    chunk_size=None,
    loss_mask=None,
    labels=None,
    grad_in_logits=False,
    **kind_args,
):
    """Per-token KD loss [...] between student logits [..., V_local] and a dense or sparse teacher;
    with `labels`, [2, ...] (LM cross-entropy, KD)."""
    _check_options(student_logits, temperature, top_p, top_k, chunk_size)
    term = make_term(kind, kind_args)
    v_local = student_logits.shape[-1]
    shard = vp.shard_of(tp_group, v_local)
    lead = student_logits.shape[:-1]
    student = student_logits.reshape(-1, v_local)
    rows = _rows(loss_mask, lead)
    truncating = top_p < 1.0 or top_k > 0

    if isinstance(teacher, SparseTarget):
        if kind == "mse":
            raise ValueError("kind 'mse' compares logits and needs dense teacher logits, not a SparseTarget")
        _check_sparse(teacher, lead, shard.v_global)
        if kind == "nll":
            teacher = keep_top(teacher, top_k=1)
        elif truncating:
            teacher = keep_top(teacher, top_p=top_p, top_k=top_k)
    elif isinstance(teacher, torch.Tensor):
        if teacher.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits shape {tuple(teacher.shape)} != student logits shape "
                f"{tuple(student_logits.shape)}; both must be [..., V_local] with the same vocab sharding"
            )
        if teacher.dtype not in _FLOATS:
            raise ValueError(f"teacher logits must be floating point, got {teacher.dtype}")
        if kind == "mse":
            if truncating:
                raise ValueError("kind 'mse' compares full logits; set top_p=1.0 and top_k=0")
            term = LogitMSE(vocab=shard.v_global)
        elif kind == "nll" or truncating:
            k = 1 if kind == "nll" else top_k
            teacher = truncate_teacher(
                teacher, temperature=temperature, top_p=1.0 if kind == "nll" else top_p, top_k=k,
                tp_group=tp_group, chunk_size=chunk_size,
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


def fuses_lm(teacher, kind, top_p=1.0, top_k=0) -> bool:
    """Whether distill_loss takes `labels` for this teacher: a SparseTarget, or dense logits it
    truncates (top_p < 1, top_k > 0 or kind 'nll'); dense logits that stay dense cannot."""
    if isinstance(teacher, SparseTarget):
        return True
    return kind != "mse" and (kind == "nll" or top_p < 1.0 or top_k > 0)


def _check_options(student, temperature, top_p, top_k, chunk_size):
    if not isinstance(student, torch.Tensor) or student.dtype not in _FLOATS or student.dim() < 1:
        raise ValueError("student_logits must be a floating-point tensor [..., V_local]")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k must be an int >= 0 (0 = no top-k), got {top_k!r}")
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
