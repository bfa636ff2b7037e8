"""Fused vocab-parallel KD loss against a sparse teacher target (top-k ids + log-probs).

The divergence is taken over buckets: one per listed id, plus a "ghost" bucket for the rest of the
vocab, for both distributions:
    P = [p_ids, 1 - sum p_ids],   Q = [q_ids, Q_ghost]
Q_ghost is summed directly over the unlisted vocab entries (not 1 - sum q_ids), so it is exact (0 when
k = V) and free of cancellation. Unused slots (id -1 or log-prob -inf) belong to no bucket.

Forward, per token chunk: local softmax (max, sum-exp) of s = z_s / T, the student logits at the listed ids that
fall in this shard (0 elsewhere) and the local ghost sum-exp; then all-reduce MAX, and ONE all-reduce SUM
of [S, S_ghost, s_ids] ([tokens, k + 2]). The rest is [tokens, k + 1] math.

Backward (local, see terms.py): dD/ds_j = h_b - q_j H for a listed id j (its bucket b is j alone) and
q_j (h_ghost / Q_ghost - H) for an unlisted one; computed as exp(s_j - logZ + log|c|) * sign(c) so a
tiny Q_ghost does not overflow, then listed entries are overwritten.
"""

import torch

from megakd.losses import vocab_parallel as vp
from megakd.losses.terms import NEG_INF


def bucket_logprobs(logp_ids, used, logq_ids, logq_ghost, v_global, ghost_floor=None):
    """(log P, log Q) over [listed ids..., ghost]; unused slots get -inf in both."""
    p_ids = torch.where(used, logp_ids.exp(), torch.zeros((), dtype=logp_ids.dtype))
    has_ghost = used.sum(dim=-1) < v_global
    p_ghost = torch.where(has_ghost, (1 - p_ids.sum(dim=-1)).clamp_min(0), torch.zeros((), dtype=p_ids.dtype))
    if ghost_floor is not None:
        p_ghost = torch.where(has_ghost, p_ghost.clamp_min(ghost_floor), p_ghost)
    logP = torch.cat([torch.where(used, logp_ids, NEG_INF), p_ghost.log()[:, None]], dim=-1)
    logQ = torch.cat([torch.where(used, logq_ids, NEG_INF), logq_ghost[:, None]], dim=-1)
    return logP, logQ


class SparseDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, ids, logp_ids, rows, term, temperature, shard, chunk_size):
        dt = vp.compute_dtype(student)
        if rows is not None:
            ids, logp_ids = ids[rows], logp_ids[rows]
        logp_ids = logp_ids.to(dt)
        n, k = ids.shape
        used = (ids >= 0) & (logp_ids > NEG_INF)
        local = ids - shard.start
        in_shard = used & (local >= 0) & (local < shard.v_local)
        idx = local.clamp(0, shard.v_local - 1)
        not_listed = (~in_shard).to(dt)  # multiplicative mask: 0 at listed entries of this shard

        m = student.new_empty(n, dtype=dt)
        red = student.new_zeros((n, k + 2), dtype=dt)  # S, S_ghost, s at ids
        for sl in vp.chunks(n, shard.v_local, chunk_size):
            s = vp.tempered(vp.take(student, rows, sl), temperature, dt)
            m[sl], red[sl, 0], q_local = vp.local_softmax(s)
            red[sl, 2:] = torch.where(in_shard[sl], s.gather(1, idx[sl]), 0.0)
            unlisted = q_local.scatter_reduce_(1, idx[sl], not_listed[sl], "prod").sum(dim=-1)
            red[sl, 1] = unlisted * red[sl, 0]  # local ghost sum-exp
            del s, q_local
        gmax, scale = vp.global_max(m, shard)
        red[:, :2] *= scale[:, None]
        red = vp.all_reduce(red, shard)
        log_s = red[:, 0].log()
        logz = gmax + log_s
        logq_ids = red[:, 2:] - logz[:, None]
        logP, logQ = bucket_logprobs(logp_ids, used, logq_ids, red[:, 1].log() - log_s, shard.v_global, term.ghost_floor)

        loss = term.f(logP, logQ).sum(dim=-1)
        h = term.h(logP, logQ)
        H = h.sum(dim=-1)
        h_ghost, logq_ghost = h[:, -1], logQ[:, -1]
        # c = dD/dQ_ghost - H; dD/dQ_ghost = h_ghost / Q_ghost (0 when the ghost term vanishes)
        c = torch.where(h_ghost == 0, 0.0, h_ghost * (-logq_ghost).exp()) - H
        listed = torch.where(in_shard, h[:, :-1] - logQ[:, :-1].exp() * H[:, None], 0.0)
        ctx.save_for_backward(student, rows, idx, not_listed, listed, logz - c.abs().log(), c.sign())
        ctx.cfg = (temperature, shard, chunk_size)
        return vp.per_token_out(student.shape[0], rows, loss)

    @staticmethod
    def backward(ctx, grad_out):
        student, rows, idx, not_listed, listed, log_shift, sign = ctx.saved_tensors
        temperature, shard, chunk_size = ctx.cfg
        dt = log_shift.dtype
        scale = vp.grad_scale(grad_out, rows, temperature).to(dt)
        grad = vp.new_grad(student, rows)
        for sl in vp.chunks(log_shift.numel(), shard.v_local, chunk_size):
            s = vp.tempered(vp.take(student, rows, sl), temperature, dt)
            g = (s - log_shift[sl, None]).exp_().mul_(sign[sl, None])  # q_j * c for every entry
            g.scatter_reduce_(1, idx[sl], not_listed[sl], "prod")  # clear listed entries ...
            g.scatter_add_(1, idx[sl], listed[sl])  # ... and set them to h_b - q_j H
            vp.scatter_rows(grad, rows, sl, g.mul_(scale[sl, None]))
        return grad, None, None, None, None, None, None, None
