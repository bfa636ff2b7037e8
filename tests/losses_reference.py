"""Plain, readable single-process reference for megakd.losses (what the fused code is checked against).

Whole vocab, one token at a time, probabilities rather than log-space tricks, gradients by autograd.
Slow on purpose: only for small test tensors.
"""

import torch

RKL_GHOST_FLOOR = 1e-8  # documented in megakd.losses.terms.ReverseKL


def kl(a, b):
    """KL(a || b) for probability vectors, with 0 * log(0 / x) = 0."""
    keep = a > 0
    return (a[keep] * (a[keep].log() - b[keep].log())).sum()


def divergence(kind, p, q, skew=0.1, beta=0.5):
    """D(p, q) for teacher p and student q (1-D probability vectors over the same buckets)."""
    if kind in ("fkl", "nll"):
        return kl(p, q)
    if kind == "rkl":
        return kl(q, p)
    if kind == "sfkl":
        return kl(p, skew * p + (1 - skew) * q)
    if kind == "srkl":
        return kl(q, skew * q + (1 - skew) * p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum()
    raise ValueError(kind)


def truncate(teacher_logits, temperature=1.0, top_p=1.0, top_k=0):
    """Teacher logits [..., V] -> dense kept distribution [..., V]: softmax(z / T), top-p nucleus,
    then top-k of it, renormalised."""
    return truncate_probs(torch.softmax(teacher_logits.double() / temperature, dim=-1), top_p, top_k)


def truncate_probs(probs, top_p=1.0, top_k=0):
    """Dense probabilities [..., V] (may sum to < 1) -> top-p then top-k kept set, renormalised."""
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.zeros_like(flat)
    for row, p in zip(out, flat):
        sorted_p, order = p.sort(descending=True)
        n_keep = 0
        mass = 0.0
        while n_keep < len(sorted_p) and mass < top_p:
            mass += sorted_p[n_keep].item()
            n_keep += 1
        if top_k:
            n_keep = min(n_keep, top_k)
        kept = order[:n_keep]
        row[kept] = p[kept] / p[kept].sum()
    return out.reshape(probs.shape)


def sparse_loss(student_logits, ids, logprobs, kind, temperature=1.0, **kind_args):
    """Per-token loss against a sparse target: buckets = used ids + ghost (rest of the vocab)."""
    V = student_logits.shape[-1]
    q_all = torch.softmax(student_logits / temperature, dim=-1).reshape(-1, V)
    ids, logprobs = ids.reshape(-1, ids.shape[-1]), logprobs.reshape(-1, ids.shape[-1])
    losses = []
    for q, row_ids, row_lp in zip(q_all, ids, logprobs):
        used = (row_ids >= 0) & (row_lp > float("-inf"))
        p = row_lp[used].double().exp().to(q.dtype)
        qs = q[row_ids[used]]
        if used.sum() < V:  # ghost bucket: the rest of the vocab, for both distributions
            p_ghost = (1 - p.sum()).clamp_min(0)
            if kind == "rkl":
                p_ghost = p_ghost.clamp_min(RKL_GHOST_FLOOR)
            p = torch.cat([p, p_ghost[None]])
            qs = torch.cat([qs, (1 - qs.sum())[None]])
        losses.append(divergence(kind, p, qs, **kind_args))
    return torch.stack(losses).reshape(student_logits.shape[:-1])


def dense_to_sparse(dist):
    """Dense kept distribution [..., V] -> (ids, logprobs) of width V with unused slots for zeros."""
    V = dist.shape[-1]
    ids = torch.arange(V).expand(dist.shape).clone()
    ids[dist == 0] = -1
    return ids, dist.log()


def sparse_to_dense(ids, logprobs, V):
    """(ids, logprobs) [..., k] -> dense probabilities [..., V] (unused slots dropped)."""
    used = (ids >= 0) & (logprobs > float("-inf"))
    dense = torch.zeros(*ids.shape[:-1], V, dtype=torch.float64)
    return dense.scatter_add(-1, ids.clamp_min(0), torch.where(used, logprobs.double().exp(), 0.0))


def loss(student_logits, teacher_logits, kind="fkl", temperature=1.0, top_p=1.0, top_k=0, **kind_args):
    """Reference per-token loss with whole-vocab dense teacher logits."""
    T = temperature
    if kind == "mse":
        return ((student_logits / T - teacher_logits / T) ** 2).mean(dim=-1)
    if kind == "nll":
        target = teacher_logits.argmax(dim=-1, keepdim=True)
        return -torch.log_softmax(student_logits / T, dim=-1).gather(-1, target).squeeze(-1)
    if top_p < 1.0 or top_k > 0:
        ids, logprobs = dense_to_sparse(truncate(teacher_logits, T, top_p, top_k))
        return sparse_loss(student_logits, ids, logprobs.to(student_logits.dtype), kind, T, **kind_args)
    V = student_logits.shape[-1]
    p_all = torch.softmax(teacher_logits / T, dim=-1).reshape(-1, V)
    q_all = torch.softmax(student_logits / T, dim=-1).reshape(-1, V)
    out = [divergence(kind, p, q, **kind_args) for p, q in zip(p_all, q_all)]
    return torch.stack(out).reshape(student_logits.shape[:-1])
