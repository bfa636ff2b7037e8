"""KD divergences as small local terms plugged into one vocab-parallel skeleton.

A divergence between the teacher distribution p and the student distribution q is written as a sum
of elementwise terms over vocab entries (dense) or over buckets (sparse target: listed ids + ghost):

    D(p, q) = sum_v f(p_v, q_v)

Each term gives f and h = q * df/dq (both from log p, log q). The student distribution is
q = softmax(z / T), so for any such D the gradient wrt the student logits is *local*:

    dD/dz_j = (h_j - q_j * H) / T,      H = sum_v h_v      (a per-token scalar)

H is computed in the forward (part of its batched reduction) and saved, so the backward needs no
collective. Terms must be finite-safe for zero probabilities (log = -inf): 0 * log 0 = 0.

Kinds whose value is linear in one distribution's unnormalised weights (fkl, rkl, mse) also give a
`fold`: the forward then needs a single pass over the logits and a single SUM reduction.
"""

import math
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


def _xlogr(p, logp, logr):
    """p * (log p - log r) with the convention 0 * anything = 0."""
    return torch.where(p > 0, p * (logp - logr), torch.zeros((), dtype=p.dtype))


def _log_mix(w, loga, logb):
    """log(w * a + (1 - w) * b), computed in log space (both logs may be -inf)."""
    return torch.logaddexp(loga + math.log(w), logb + math.log1p(-w))


def _open_unit(term, name):
    """Refuse a mixing weight outside (0, 1) (at 0 or 1 the skew/JS divergence degenerates)."""
    value = getattr(term, name)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1) for kind {term.name!r}, got {value}")


@dataclass(frozen=True)
class Term:
    """Base divergence term. Subclasses define f and h; fold is optional."""

    name = "?"
    #: which unnormalised weights the single-pass fold is an expectation under ('p', 'q', 'none'), or None
    fold_on = None
    #: floor for the teacher ghost mass (only where a zero-mass ghost would make the loss infinite)
    ghost_floor = None

    def f(self, logp, logq):
        raise NotImplementedError

    def h(self, logp, logq):
        raise NotImplementedError

    def dense_grad(self, d, H):
        """dD/d(z_s / T) for one chunk of dense logits; d holds s, t, p, q, logp, logq (dense.Chunk)."""
        return self.h(d.logp, d.logq) - d.q * H[:, None]


@dataclass(frozen=True)
class ForwardKL(Term):
    """KL(p || q) = sum p (log p - log q); h = -p, H = -1 so the gradient is (q - p) / T."""

    name = "fkl"
    fold_on = "p"

    def f(self, logp, logq):
        return _xlogr(logp.exp(), logp, logq)

    def h(self, logp, logq):
        return -logp.exp()

    def fold_factor(self, s, t):  # E_p[t - s]
        return t - s

    def fold_finish(self, mean, logz_s, logz_t):
        loss = mean - logz_t + logz_s
        return loss, torch.full_like(loss, -1.0)

    def dense_grad(self, d, H):
        return d.q - d.p


@dataclass(frozen=True)
class ReverseKL(Term):
    """KL(q || p) = sum q (log q - log p); H = KL + 1 (needs the global KL: saved per token)."""

    name = "rkl"
    fold_on = "q"
    # a truncated, renormalised target gives the ghost zero mass: KL(q || p) would be +inf
    ghost_floor = 1e-8

    def f(self, logp, logq):
        return _xlogr(logq.exp(), logq, logp)

    def h(self, logp, logq):
        q = logq.exp()
        return torch.where(q > 0, q * (logq - logp + 1), torch.zeros((), dtype=q.dtype))

    def fold_factor(self, s, t):  # E_q[s - t]
        return s - t

    def fold_finish(self, mean, logz_s, logz_t):
        loss = mean - logz_s + logz_t
        return loss, loss + 1

    def dense_grad(self, d, H):
        return d.q * (d.logq - d.logp - (H - 1)[:, None])


@dataclass(frozen=True)
class SkewForwardKL(Term):
    """DistiLLM skew KL: KL(p || m), m = skew * p + (1 - skew) * q."""

    name = "sfkl"
    skew: float = 0.1

    def __post_init__(self):
        _open_unit(self, "skew")

    def f(self, logp, logq):
        return _xlogr(logp.exp(), logp, _log_mix(self.skew, logp, logq))

    def h(self, logp, logq):
        # df/dq = -(1 - skew) p / m
        p = logp.exp()
        r = torch.where(p > 0, (logq - _log_mix(self.skew, logp, logq)).exp(), torch.zeros((), dtype=p.dtype))
        return -(1 - self.skew) * p * r


@dataclass(frozen=True)
class SkewReverseKL(Term):
    """DistiLLM skew reverse KL: KL(q || m), m = skew * q + (1 - skew) * p."""

    name = "srkl"
    skew: float = 0.1

    def __post_init__(self):
        _open_unit(self, "skew")

    def f(self, logp, logq):
        return _xlogr(logq.exp(), logq, _log_mix(self.skew, logq, logp))

    def h(self, logp, logq):
        # df/dq = log q + 1 - log m - skew * q / m
        q = logq.exp()
        logm = _log_mix(self.skew, logq, logp)
        v = q * (logq + 1 - logm - self.skew * (logq - logm).exp())
        return torch.where(q > 0, v, torch.zeros((), dtype=q.dtype))


@dataclass(frozen=True)
class JensenShannon(Term):
    """Generalised JSD: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q."""

    name = "jsd"
    beta: float = 0.5

    def __post_init__(self):
        _open_unit(self, "beta")

    def f(self, logp, logq):
        logm = _log_mix(self.beta, logp, logq)
        return self.beta * _xlogr(logp.exp(), logp, logm) + (1 - self.beta) * _xlogr(logq.exp(), logq, logm)

    def h(self, logp, logq):
        # df/dq = (1 - beta) (log q - log m): the p-dependent parts cancel
        return (1 - self.beta) * _xlogr(logq.exp(), logq, _log_mix(self.beta, logp, logq))


@dataclass(frozen=True)
class TotalVariation(Term):
    """TVD = 1/2 sum |p - q|; h = q sign(q - p) / 2 (subgradient 0 where p == q)."""

    name = "tvd"

    def f(self, logp, logq):
        return 0.5 * (logp.exp() - logq.exp()).abs()

    def h(self, logp, logq):
        q = logq.exp()
        return 0.5 * q * torch.sign(q - logp.exp())


@dataclass(frozen=True)
class LogitMSE(Term):
    """Mean squared error between (tempered) logits, averaged over the global vocab: dense only."""

    name = "mse"
    fold_on = "none"
    vocab: int = 1  # global vocab size, set by the caller

    def fold_factor(self, s, t):
        d = s - t
        return d * d

    def fold_finish(self, total, logz_s, logz_t):
        loss = total / self.vocab
        return loss, torch.zeros_like(loss)

    def dense_grad(self, d, H):
        return (d.s - d.t) * (2.0 / self.vocab)


#: kind name -> (term class, the arguments a user may set: its own parameters, checked by the term)
KINDS = {
    "fkl": (ForwardKL, ()),
    "rkl": (ReverseKL, ()),
    "sfkl": (SkewForwardKL, ("skew",)),
    "srkl": (SkewReverseKL, ("skew",)),
    "jsd": (JensenShannon, ("beta",)),
    "tvd": (TotalVariation, ()),
    "mse": (LogitMSE, ()),
    "nll": (ForwardKL, ()),  # cross-entropy to the teacher's argmax = fkl against a top-1 target
}


def make_term(kind: str, kind_args: dict) -> Term:
    """Build the term for `kind`, validating its keyword arguments (one-line ValueErrors); the
    term's own `__post_init__` checks their values."""
    if kind not in KINDS:
        raise ValueError(f"unknown KD kind {kind!r}; choose one of {sorted(KINDS)}")
    cls, allowed = KINDS[kind]
    extra = sorted(set(kind_args) - set(allowed))
    if extra:
        raise ValueError(f"kind {kind!r} takes no argument(s) {extra}; its parameters: {list(allowed) or 'none'}")
    try:
        values = {k: float(v) for k, v in kind_args.items()}
    except (TypeError, ValueError):
        raise ValueError(f"kind {kind!r} takes numbers for {list(allowed)}, got {dict(kind_args)}") from None
    return cls(**values)
