"""Vocab-parallel plumbing shared by the fused losses (the `_VocabParallelCrossEntropy` skeleton).

Rank r of the TP group holds the contiguous vocab range [r * V_local, (r + 1) * V_local), as in
megatron-core's `VocabUtility`. Forward reductions are over per-token statistics only ([tokens, few]),
and everything here is a no-op when the group is None or has one rank.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megakd.platform import comm

#: default chunk: about this many elements of [tokens, V_local] are live at once (fp32: 1 MiB, so a chunk stays in cache)
CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class Shard:
    """Where this rank's logits sit in the global vocab."""

    group: object
    rank: int
    world: int
    v_local: int

    @property
    def start(self) -> int:
        return self.rank * self.v_local

    @property
    def v_global(self) -> int:
        return self.world * self.v_local

    @property
    def parallel(self) -> bool:
        return self.world > 1


def shard_of(group, v_local: int) -> Shard:
    if group is None or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return Shard(None, 0, 1, v_local)
    return Shard(group, dist.get_rank(group), dist.get_world_size(group), v_local)


def all_reduce(x: torch.Tensor, shard: Shard, op=comm.SUM) -> torch.Tensor:
    return comm.all_reduce(x, op, shard.group) if shard.parallel else x


def all_gather_last(x: torch.Tensor, shard: Shard) -> torch.Tensor:
    """Concatenate each rank's x along the last dim, in rank order."""
    if not shard.parallel:
        return x
    return torch.cat(comm.all_gather(x, shard.group), dim=-1)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64 (so gradcheck works); everything else is computed in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def chunks(n: int, v_local: int, chunk_size):
    """Row slices of at most chunk_size tokens (default: about CHUNK_ELEMENTS elements each)."""
    step = chunk_size or max(1, CHUNK_ELEMENTS // max(v_local, 1))
    for i in range(0, n, step):
        yield slice(i, min(i + step, n))


def tempered(x: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """x / T in the compute dtype (no copy when neither applies)."""
    x = x.to(dtype)
    return x if temperature == 1.0 else x / temperature


def local_softmax(s: torch.Tensor):
    """Per-row local max, local sum(exp(s - max)) and softmax over the local slice (one fused kernel;
    sum = 1 / the largest softmax entry, the one at the argmax where exp(s - max) = 1). `amax`, not
    `max(dim)`: on CPU the index-returning reduction costs as much as the softmax itself."""
    p = torch.softmax(s, dim=-1)
    return s.amax(dim=-1), p.amax(dim=-1).reciprocal(), p


def global_max(local_max: torch.Tensor, shard: Shard) -> torch.Tensor:
    """All-reduce MAX of per-token maxima, returning exp(local - global) to rescale local sums."""
    m = all_reduce(local_max.clone(), shard, comm.MAX)
    return m, (local_max - m).exp()


def take(x: torch.Tensor, rows, sl: slice) -> torch.Tensor:
    """Rows sl of x (a view), or of x[rows] when only selected tokens are computed (a chunk copy)."""
    return x[sl] if rows is None else x.index_select(0, rows[sl])


def scatter_rows(full: torch.Tensor, rows, sl: slice, value: torch.Tensor) -> None:
    """full[sl] = value, or full[rows[sl]] = value (nothing to do when value is full[sl] itself)."""
    if rows is None:
        if value.data_ptr() != full[sl].data_ptr():
            full[sl] = value
    else:
        full.index_copy_(0, rows[sl], value.to(full.dtype))


def rows_buffer(full: torch.Tensor, rows, sl: slice, dtype: torch.dtype) -> torch.Tensor:
    """Where to compute rows sl of `full` in `dtype`: full[sl] itself when it can hold them (saves a
    [chunk, V_local] copy per chunk), else a new tensor for scatter_rows."""
    if rows is None and full.dtype == dtype:
        return full[sl]
    n = sl.stop - sl.start if rows is None else rows[sl].numel()
    return full.new_empty((n, full.shape[1]), dtype=dtype)


def new_grad(x: torch.Tensor, rows, reuse: bool = False) -> torch.Tensor:
    """Gradient buffer in the input dtype; zero-filled only where rows are skipped. `reuse`: x's own
    storage, as megatron's vocab-parallel CE does (no new [tokens, V_local] buffer to allocate and
    page in); the backward reads each chunk of x before writing it."""
    if not reuse:
        return torch.empty_like(x) if rows is None else torch.zeros_like(x)
    if rows is not None:
        skipped = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        skipped[rows] = False
        x.index_fill_(0, skipped.nonzero().squeeze(1), 0)
    return x


def per_token_out(n_all: int, rows, values: torch.Tensor) -> torch.Tensor:
    """Expand per-selected-token values [..., n] to all tokens [..., n_all] (skipped tokens get 0)."""
    if rows is None:
        return values
    out = values.new_zeros(*values.shape[:-1], n_all)
    out[..., rows] = values
    return out


def grad_rows(grad_out: torch.Tensor, rows, n_all: int) -> torch.Tensor:
    """The incoming gradient of per_token_out's result as [outputs, n] for the computed tokens."""
    g = grad_out.reshape(-1, n_all)
    return g if rows is None else g[:, rows]


def grad_scale(grad_out: torch.Tensor, rows, temperature: float) -> torch.Tensor:
    """Per-token factor dLoss/dloss_token / T applied to every chunk's gradient (one output)."""
    return grad_rows(grad_out, rows, grad_out.numel())[0] / temperature
