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
    """Per-token sparse KD loss [n]. Given `labels` ([n] global ids) it also returns the LM cross-entropy
    logZ_1 - z_label (at T = 1) from the same chunk loop and reductions, as [2, n] (lm, kd): the label
    is one more gathered logit; at T = 1 the log-partition is shared, otherwise the loop adds the T = 1
    sum-exp of each chunk (its max is T times the tempered one, so the one MAX reduction serves both)."""

    @staticmethod
    def forward(ctx, student, ids, logp_ids, labels, rows, term, temperature, shard, chunk_size, grad_in_logits):
        dt = vp.compute_dtype(student)
        if rows is not None:
            ids, logp_ids = ids[rows], logp_ids[rows]
            labels = None if labels is None else labels[rows]
        logp_ids = logp_ids.to(dt)
        n, k = ids.shape
        used = (ids >= 0) & (logp_ids > NEG_INF)
        local = ids - shard.start
        in_shard = used & (local >= 0) & (local < shard.v_local)
        idx = local.clamp(0, shard.v_local - 1)
        not_listed = (~in_shard).to(dt)  # multiplicative mask: 0 at listed entries of this shard
        lm = labels is not None
        own_lse = lm and temperature != 1.0  # the LM term needs its own T = 1 sum-exp
        # columns of the one SUM reduction: S, S_ghost, [S_1], [z_label], s at ids
        col_label = 2 + own_lse
        col_ids = col_label + lm
        lab_in = lab_idx = None
        if lm:
            lab = labels - shard.start
            lab_in = (lab >= 0) & (lab < shard.v_local)
            lab_idx = lab.clamp(0, shard.v_local - 1)[:, None]

        m = student.new_empty(n, dtype=dt)
        red = student.new_zeros((n, col_ids + k), dtype=dt)
        for sl in vp.chunks(n, shard.v_local, chunk_size):
            x = vp.take(student, rows, sl)
            s = vp.tempered(x, temperature, dt)
            m[sl], red[sl, 0], q_local = vp.local_softmax(s)
            red[sl, col_ids:] = torch.where(in_shard[sl], s.gather(1, idx[sl]), 0.0)
            unlisted = q_local.scatter_reduce_(1, idx[sl], not_listed[sl], "prod").sum(dim=-1)
            red[sl, 1] = unlisted * red[sl, 0]  # local ghost sum-exp
            del s, q_local
            if lm:
                red[sl, col_label] = torch.where(lab_in[sl], x.gather(1, lab_idx[sl]).squeeze(1).to(dt), 0.0)
                if own_lse:
                    red[sl, 2] = (x.to(dt) - temperature * m[sl, None]).exp_().sum(dim=-1)
        gmax, scale = vp.global_max(m, shard)
        red[:, :2] *= scale[:, None]
        if own_lse:
            red[:, 2] *= (temperature * (m - gmax)).exp()
        red = vp.all_reduce(red, shard)
        log_s = red[:, 0].log()
        logz = gmax + log_s
        logq_ids = red[:, col_ids:] - logz[:, None]
        logP, logQ = bucket_logprobs(logp_ids, used, logq_ids, red[:, 1].log() - log_s, shard.v_global, term.ghost_floor)

        loss = term.f(logP, logQ).sum(dim=-1)
        h = term.h(logP, logQ)
        H = h.sum(dim=-1)
        h_ghost, logq_ghost = h[:, -1], logQ[:, -1]
        # c = dD/dQ_ghost - H; dD/dQ_ghost = h_ghost / Q_ghost (0 when the ghost term vanishes)
        c = torch.where(h_ghost == 0, 0.0, h_ghost * (-logq_ghost).exp()) - H
        listed = torch.where(in_shard, h[:, :-1] - logQ[:, :-1].exp() * H[:, None], 0.0)
        q_ids = logz1 = None
        if lm:
            logz1 = temperature * gmax + red[:, 2].log() if own_lse else logz
            loss = torch.stack([logz1 - red[:, col_label], loss])
            if not own_lse:  # softmax(z) at the listed ids: the LM part of their gradient
                q_ids, logz1 = torch.where(in_shard, logq_ids.exp(), 0.0), None
        ctx.save_for_backward(student, rows, idx, not_listed, listed, logz, c, q_ids, logz1, lab_in, lab_idx)
        ctx.cfg = (temperature, shard, chunk_size, lm, grad_in_logits)
        return vp.per_token_out(student.shape[0], rows, loss)

    @staticmethod
    def backward(ctx, grad_out):
        student, rows, idx, not_listed, listed, logz, c, q_ids, logz1, lab_in, lab_idx = ctx.saved_tensors
        temperature, shard, chunk_size, lm, grad_in_logits = ctx.cfg
        dt = logz.dtype
        g_out = vp.grad_rows(grad_out, rows, student.shape[0]).to(dt)  # [outputs, n]
        g_kd = g_out[-1] / temperature
        # every entry gets q_j * coef; listed entries are then set to `fix` (and the label gets -g_lm)
        coef, fix = g_kd * c, g_kd[:, None] * listed
        if lm:
            g_lm = g_out[0]
            lab_grad = torch.where(lab_in, -g_lm, 0.0)[:, None]
            if logz1 is None:  # T = 1: softmax(z) = q, so the LM gradient folds into coef and fix
                coef, fix = coef + g_lm, fix + g_lm[:, None] * q_ids
            else:
                lm_shift, lm_sign = logz1 - g_lm.abs().log(), g_lm.sign()
        # q_j * coef as exp(s_j - logZ + log|coef|) * sign(coef): a huge coef (tiny Q_ghost) cannot overflow
        shift, sign = logz - coef.abs().log(), coef.sign()
        grad = vp.new_grad(student, rows, reuse=grad_in_logits)
        for sl in vp.chunks(logz.numel(), shard.v_local, chunk_size):
            x = vp.take(student, rows, sl)
            s = vp.tempered(x, temperature, dt)
            lm_part = None
            if lm and logz1 is not None:  # T != 1: softmax(z), read before x's rows may be overwritten
                lm_part = (x.to(dt) - lm_shift[sl, None]).exp_().mul_(lm_sign[sl, None])
            g = torch.sub(s, shift[sl, None], out=vp.rows_buffer(grad, rows, sl, dt)).exp_().mul_(sign[sl, None])
            g.scatter_reduce_(1, idx[sl], not_listed[sl], "prod")  # clear listed entries ...
            g.scatter_add_(1, idx[sl], fix[sl])  # ... and set them
            if lm_part is not None:
                g += lm_part
            if lm:
                g.scatter_add_(1, lab_idx[sl], lab_grad[sl])
            vp.scatter_rows(grad, rows, sl, g)
        return grad, None, None, None, None, None, None, None, None, None
