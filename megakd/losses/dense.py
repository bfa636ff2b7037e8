"""Fused vocab-parallel KD loss against dense (sharded) teacher logits.

Forward, per token chunk (s = z_s / T, t = z_t / T, local vocab slice):
  pass 1: local softmax of both (one fused kernel each) -> local max and sum-exp; for folding kinds
          also the local partial sum_v exp(x_v - max) * factor_v (fkl: x = t, factor = t - s)
  all-reduce MAX [max_s, max_t] -> rescale the local sums to the global max
  all-reduce SUM [S_s, S_t, partial] (one call) -> logZ_s, logZ_t, loss and H per token
  pass 2 (only kinds without a fold: skew KLs, jsd, tvd): sum_v f and sum_v h from the
          normalised log-probs, then one more all-reduce SUM [F, H]
Backward, per chunk: recompute what the term needs from the saved logits and per-token statistics
(logZ, and how far the local normaliser is from the global one); the gradient is local (terms.py), so
there is no collective. Only chunk-sized temporaries exist; the inputs are the only [tokens, V] tensors.
"""

from functools import cached_property

import torch

from megakd.losses import vocab_parallel as vp


class Chunk:
    """Student/teacher distributions on one chunk, computed on first use.

    q = softmax_local(s) * exp(logZ_local_s - logZ_s) (a fused softmax, rescaled only under TP)."""

    def __init__(self, s, t, logz_s, logz_t, local_s=None, local_t=None):
        self.s, self.t = s, t
        self._logz = (logz_s[:, None], logz_t[:, None])
        self._local = (local_s, local_t)

    def _probs(self, x, shift):
        p = torch.softmax(x, dim=-1)
        return p if shift is None else p.mul_(shift.exp()[:, None])

    @cached_property
    def q(self):
        return self._probs(self.s, self._local[0])

    @cached_property
    def p(self):
        return self._probs(self.t, self._local[1])

    @cached_property
    def logq(self):
        return self.s - self._logz[0]

    @cached_property
    def logp(self):
        return self.t - self._logz[1]


class DenseDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, rows, term, temperature, shard, chunk_size):
        dt = vp.compute_dtype(student)
        n = student.shape[0] if rows is None else rows.numel()
        stats = student.new_empty((5, n), dtype=dt)  # max_s, max_t, S_s, S_t, partial
        for sl in vp.chunks(n, shard.v_local, chunk_size):
            s = vp.tempered(vp.take(student, rows, sl), temperature, dt)
            t = vp.tempered(vp.take(teacher, rows, sl), temperature, dt)
            stats[0, sl], stats[2, sl], q_local = vp.local_softmax(s)
            stats[1, sl], stats[3, sl], p_local = vp.local_softmax(t)
            if term.fold_on is not None:
                factor = term.fold_factor(s, t)
                if term.fold_on == "none":
                    stats[4, sl] = factor.sum(dim=-1)
                else:  # sum_v exp(x_v - max) * factor_v = S * E_local[factor]
                    w, S = (p_local, stats[3, sl]) if term.fold_on == "p" else (q_local, stats[2, sl])
                    stats[4, sl] = factor.mul_(w).sum(dim=-1) * S
            del s, t, q_local, p_local
        local_logz = stats[:2] + stats[2:4].log()
        maxes, scale = vp.global_max(stats[:2], shard)
        stats[2:4] *= scale
        if term.fold_on in ("p", "q"):
            stats[4] *= scale[1 if term.fold_on == "p" else 0]
        sums = vp.all_reduce(stats[2:].contiguous(), shard)
        logz = maxes + sums[:2].log()
        # log of (local normaliser / global normaliser) per token: softmax_local * exp(.) = global probs
        shift = (local_logz - logz) if shard.parallel else [None, None]

        if term.fold_on is not None:
            norm = {"p": sums[1], "q": sums[0], "none": 1.0}[term.fold_on]
            loss, H = term.fold_finish(sums[2] / norm, logz[0], logz[1])
        else:
            fh = student.new_empty((2, n), dtype=dt)
            for sl in vp.chunks(n, shard.v_local, chunk_size):
                logq = vp.tempered(vp.take(student, rows, sl), temperature, dt) - logz[0, sl, None]
                logp = vp.tempered(vp.take(teacher, rows, sl), temperature, dt) - logz[1, sl, None]
                fh[0, sl] = term.f(logp, logq).sum(dim=-1)
                fh[1, sl] = term.h(logp, logq).sum(dim=-1)
            loss, H = vp.all_reduce(fh, shard)

        ctx.save_for_backward(student, teacher, rows, logz, H, *([] if shift[0] is None else [shift]))
        ctx.cfg = (term, temperature, shard, chunk_size)
        return vp.per_token_out(student.shape[0], rows, loss)

    @staticmethod
    def backward(ctx, grad_out):
        student, teacher, rows, logz, H, *shift = ctx.saved_tensors
        shift = shift[0] if shift else [None, None]
        term, temperature, shard, chunk_size = ctx.cfg
        dt = logz.dtype
        scale = vp.grad_scale(grad_out, rows, temperature).to(dt)
        grad = vp.new_grad(student, rows)
        for sl in vp.chunks(H.numel(), shard.v_local, chunk_size):
            d = Chunk(
                vp.tempered(vp.take(student, rows, sl), temperature, dt),
                vp.tempered(vp.take(teacher, rows, sl), temperature, dt),
                logz[0, sl], logz[1, sl],
                None if shift[0] is None else shift[0][sl], None if shift[1] is None else shift[1][sl],
            )
            vp.scatter_rows(grad, rows, sl, term.dense_grad(d, H[sl]).mul_(scale[sl, None]))
        return grad, None, None, None, None, None, None
