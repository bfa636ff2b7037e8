"""Fused vocab-parallel KD loss against dense (sharded) teacher logits.

Forward, per token chunk (s = z_s / T, t = z_t / T, local vocab slice):
  pass 1: local max and sum(exp(x - max)) for both; for folding kinds also the local partial
          sum_v w_v * factor_v (e.g. fkl: w = exp(t - max_t), factor = t - s)
  all-reduce MAX [max_s, max_t] -> rescale the local sums to the global max
  all-reduce SUM [S_s, S_t, partial] (one call) -> logZ_s, logZ_t, loss and H per token
  pass 2 (only kinds without a fold: skew KLs, jsd, tvd): sum_v f and sum_v h from the
          normalised log-probs, then one more all-reduce SUM [F, H]
Backward, per chunk: recompute log q, log p from the saved logits and (logZ_s, logZ_t, H); the gradient
is local (see terms.py), so there is no collective. Only chunk-sized fp32 temporaries exist.
"""

import torch

from megakd.losses import vocab_parallel as vp


class DenseDistill(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, rows, term, temperature, shard, chunk_size):
        dt = vp.compute_dtype(student)
        n = student.shape[0] if rows is None else rows.numel()
        stats = student.new_empty((5, n), dtype=dt)  # max_s, max_t, S_s, S_t, partial
        for sl in vp.chunks(n, shard.v_local, chunk_size):
            s = vp.tempered(vp.take(student, rows, sl), temperature, dt)
            t = vp.tempered(vp.take(teacher, rows, sl), temperature, dt)
            stats[0, sl], e_s, stats[2, sl] = vp.local_max_sumexp(s)
            stats[1, sl], e_t, stats[3, sl] = vp.local_max_sumexp(t)
            if term.fold_on is not None:
                factor = term.fold_factor(s, t)
                weight = {"p": e_t, "q": e_s, "none": None}[term.fold_on]
                stats[4, sl] = (factor if weight is None else factor.mul_(weight)).sum(dim=-1)
            del s, t, e_s, e_t
        maxes, scale = vp.global_max(stats[:2], shard)
        stats[2:4] *= scale
        if term.fold_on in ("p", "q"):
            stats[4] *= scale[1 if term.fold_on == "p" else 0]
        sums = vp.all_reduce(stats[2:].contiguous(), shard)
        logz_s, logz_t = maxes[0] + sums[0].log(), maxes[1] + sums[1].log()

        if term.fold_on is not None:
            norm = {"p": sums[1], "q": sums[0], "none": 1.0}[term.fold_on]
            loss, H = term.fold_finish(sums[2] / norm, logz_s, logz_t)
        else:
            fh = student.new_empty((2, n), dtype=dt)
            for sl in vp.chunks(n, shard.v_local, chunk_size):
                logq = vp.tempered(vp.take(student, rows, sl), temperature, dt) - logz_s[sl, None]
                logp = vp.tempered(vp.take(teacher, rows, sl), temperature, dt) - logz_t[sl, None]
                fh[0, sl] = term.f(logp, logq).sum(dim=-1)
                fh[1, sl] = term.h(logp, logq).sum(dim=-1)
            loss, H = vp.all_reduce(fh, shard)

        ctx.save_for_backward(student, teacher, rows, logz_s, logz_t, H)
        ctx.cfg = (term, temperature, shard, chunk_size)
        return vp.per_token_out(student.shape[0], rows, loss)

    @staticmethod
    def backward(ctx, grad_out):
        student, teacher, rows, logz_s, logz_t, H = ctx.saved_tensors
        term, temperature, shard, chunk_size = ctx.cfg
        dt = logz_s.dtype
        scale = vp.grad_scale(grad_out, rows, temperature).to(dt)
        grad = vp.new_grad(student, rows)
        for sl in vp.chunks(logz_s.numel(), shard.v_local, chunk_size):
            s = vp.tempered(vp.take(student, rows, sl), temperature, dt)
            t = vp.tempered(vp.take(teacher, rows, sl), temperature, dt)
            logq, logp = s - logz_s[sl, None], t - logz_t[sl, None]
            g = term.dense_grad(logp, logq, s, t, H[sl]).mul_(scale[sl, None])
            vp.scatter_rows(grad, rows, sl, g)
        return grad, None, None, None, None, None, None
