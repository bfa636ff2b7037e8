"""Sparse teacher targets and the PD-paper teacher-logits processing (temperature, top-p, top-k).

A `SparseTarget` is what every teacher placement produces (co-located truncation, dedicated teacher
ranks, offline store): per token, k global vocab ids and the teacher's log-probabilities for them.
Rows have variable length in the offline store, so a slot with id -1 or log-prob -inf is *unused*
(padding). The probabilities may sum to less than 1; the rest is the ghost bucket (see sparse.py).
"""

from dataclasses import dataclass
from typing import Optional

import torch

from megakd.losses import vocab_parallel as vp
from megakd.losses.spec import TargetSpec
from megakd.losses.terms import NEG_INF

UNUSED_ID = -1


@dataclass(frozen=True)
class SparseTarget:
    """Teacher top-k target: `ids` [..., k] global vocab ids (int), `logprobs` [..., k] log p_teacher."""

    ids: torch.Tensor
    logprobs: torch.Tensor

    @property
    def k(self) -> int:
        return self.ids.shape[-1]


def truncate_teacher(teacher_logits, spec: Optional[TargetSpec] = None, *, temperature=1.0, top_p=1.0, top_k=0,
                     tp_group=None, chunk_size=None):
    """Dense (vocab-sharded) teacher logits -> SparseTarget: softmax(z / T), keep the top-p nucleus,
    then at most top_k of it, renormalised over the kept set (PD paper). T, top_p and top_k are the
    spec's when one is given (the loose keywords are the unchecked primitive). Selection is global across
    TP shards: each rank sends its local top-K candidates (K = top_k, or the whole vocab when top_k
    is 0, which is memory-hungry for a large vocab: set top_k).
    Returns ids/logprobs of shape [..., K] (identical on every TP rank); dropped slots are unused."""
    if spec is not None:
        temperature, top_p, top_k = spec.temperature, spec.top_p, spec.top_k
    v_local = teacher_logits.shape[-1]
    shard = vp.shard_of(tp_group, v_local)
    lead = teacher_logits.shape[:-1]
    t2 = teacher_logits.detach().reshape(-1, v_local)
    n, dt = t2.shape[0], vp.compute_dtype(teacher_logits)
    k_local = min(top_k or shard.v_global, v_local)
    m, S = t2.new_empty(n, dtype=dt), t2.new_empty(n, dtype=dt)
    vals = t2.new_empty((n, k_local), dtype=dt)
    ids = torch.empty((n, k_local), dtype=torch.long, device=t2.device)
    for sl in vp.chunks(n, v_local, chunk_size):
        t = vp.tempered(t2[sl], temperature, dt)
        m[sl], S[sl], _ = vp.local_softmax(t)
        vals[sl], ids[sl] = t.topk(k_local, dim=-1)
    gmax, scale = vp.global_max(m, shard)
    logz = gmax + vp.all_reduce(S * scale, shard).log()
    logp = vp.all_gather_last(vals, shard) - logz[:, None]
    ids = vp.all_gather_last(ids + shard.start, shard)
    out = keep_top(SparseTarget(ids, logp), top_p=top_p, top_k=top_k)
    return SparseTarget(out.ids.reshape(*lead, -1), out.logprobs.reshape(*lead, -1))


def keep_top(target: SparseTarget, spec: Optional[TargetSpec] = None, *, top_p=1.0, top_k=0) -> SparseTarget:
    """Sort slots by probability; keep the smallest prefix with mass >= top_p, then at most top_k
    (the spec's when given); renormalise the kept slots to sum to 1 (no ghost left). Unused slots
    stay unused."""
    if spec is not None:
        top_p, top_k = spec.top_p, spec.top_k
    logp = torch.where(target.ids >= 0, target.logprobs, NEG_INF)
    logp, order = logp.sort(dim=-1, descending=True, stable=True)
    ids = target.ids.gather(-1, order)
    if top_k:
        logp, ids = logp[..., :top_k], ids[..., :top_k]
    p = logp.exp()
    keep = ((p.cumsum(dim=-1) - p) < top_p) & (logp > NEG_INF)
    logp = torch.where(keep, logp, NEG_INF)
    logp = logp - logp.logsumexp(dim=-1, keepdim=True)
    return SparseTarget(torch.where(keep, ids, UNUSED_ID), torch.where(keep, logp, NEG_INF))
