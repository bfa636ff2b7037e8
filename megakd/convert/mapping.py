"""Weight mapping between Hugging Face and megatron-core tensors, driven by a family's table.

A family (families.py) is a list of `Rule`s: one megatron-core parameter <-> one or more HF tensors
and a `Layout` that turns the HF tensors into the megatron one and back. Layouts are pure tensor
re-arrangements (concatenation, permutation, transpose, zero rows for vocab padding), so a round trip
is bit-exact. Everything here works on full (TP=1, PP=1) tensors; megatron-core's dist checkpointing
does the TP/PP sharding.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

import torch

from megakd.errors import CheckpointError


class ConversionError(CheckpointError):
    """A model that cannot be converted: unsupported architecture, missing or mis-shaped weights."""


@dataclass(frozen=True)
class Dims:
    """What the layouts need to know about the model's shape."""

    num_heads: int
    num_groups: int
    head_dim: int
    vocab_size: int
    """Real vocabulary rows (the HF embedding's)."""
    padded_vocab_size: int
    """megatron-core's embedding rows (a multiple of model.make_vocab_size_divisible_by)."""


@dataclass(frozen=True)
class Layout:
    name: str
    to_mcore: Callable[[List[torch.Tensor], Dims], torch.Tensor]
    to_hf: Callable[[torch.Tensor, Dims], List[torch.Tensor]]


def _fuse_qkv(q, k, v, d: Dims):
    """[q; k; v] -> megatron-core's grouped QKV: per query group, its q heads then its k and v head."""
    g = d.num_groups
    return torch.cat([q.reshape(g, -1, *q.shape[1:]), k.reshape(g, -1, *k.shape[1:]),
                      v.reshape(g, -1, *v.shape[1:])], dim=1).reshape(-1, *q.shape[1:])


def _split_qkv(x, d: Dims):
    per_group = d.num_heads // d.num_groups * d.head_dim
    grouped = x.reshape(d.num_groups, per_group + 2 * d.head_dim, *x.shape[1:])
    q, k, v = grouped.split([per_group, d.head_dim, d.head_dim], dim=1)
    return [t.reshape(-1, *x.shape[1:]).contiguous() for t in (q, k, v)]


def _pad_vocab(t, d: Dims):
    if t.shape[0] != d.vocab_size:
        raise ValueError(f"has {t.shape[0]} rows, the config's vocab_size is {d.vocab_size}")
    return torch.cat([t, t.new_zeros(d.padded_vocab_size - d.vocab_size, *t.shape[1:])])


def _t(x):
    return x.t().contiguous()


COPY = Layout("copy", lambda ts, d: ts[0], lambda x, d: [x])
CONV1D = Layout("conv1d", lambda ts, d: _t(ts[0]), lambda x, d: [_t(x)])
"""GPT-2's Conv1D stores weights as [in, out]; megatron-core's linear layers as [out, in]."""
QKV = Layout("qkv", lambda ts, d: _fuse_qkv(*ts, d), _split_qkv)
PACKED_QKV = Layout("packed qkv", lambda ts, d: _fuse_qkv(*ts[0].chunk(3), d),
                    lambda x, d: [torch.cat(_split_qkv(x, d))])
"""GPT-2's c_attn bias: one [q; k; v] vector."""
PACKED_QKV_CONV1D = Layout("packed qkv conv1d", lambda ts, d: _fuse_qkv(*_t(ts[0]).chunk(3), d),
                           lambda x, d: [_t(torch.cat(_split_qkv(x, d)))])
GLU = Layout("glu", lambda ts, d: torch.cat(ts), lambda x, d: list(x.chunk(2)))
"""SwiGLU: megatron-core's linear_fc1 is [gate; up]; its sharded_state_dict gives each TP rank a slice
of both halves."""
VOCAB = Layout("vocab", lambda ts, d: _pad_vocab(ts[0], d),
               lambda x, d: [x[:d.vocab_size].contiguous()])


@dataclass(frozen=True)
class Rule:
    mcore: str
    hf: Sequence[str]
    layout: Layout = COPY
    optional: bool = False
    """Skipped when the megatron-core model has no such parameter (the output layer of a tied model)."""


def expand(rules: Sequence[Rule], layer_rules: Sequence[Rule], num_layers: int, mcore_layer: str,
           hf_layer: str) -> List[Rule]:
    """Whole-model rules: the global ones plus each per-layer rule for every layer index."""
    out = list(rules)
    for i in range(num_layers):
        out += [Rule(mcore_layer.format(i) + r.mcore, [hf_layer.format(i) + h for h in r.hf],
                     r.layout, r.optional) for r in layer_rules]
    return out


def hf_to_mcore_tensors(rules: Sequence[Rule], hf: Dict[str, torch.Tensor],
                        expected: Dict[str, torch.Size], dims: Dims) -> Dict[str, torch.Tensor]:
    """Map HF tensors onto megatron-core names; every expected parameter must be produced, every HF
    tensor consumed, and every shape must match (else a one-line ConversionError naming the tensor)."""
    out, used = {}, set()
    for r in rules:
        if r.mcore not in expected:
            if r.optional:
                continue
            raise ConversionError(f"megakd model has no parameter {r.mcore} (mapping table bug)")
        missing = [h for h in r.hf if h not in hf]
        if missing:
            raise ConversionError(f"HF checkpoint is missing weight {missing[0]} (needed for "
                                  f"{r.mcore}); is the model directory complete?")
        sources = [hf[h] for h in r.hf]
        try:
            t = r.layout.to_mcore(sources, dims)
        except (RuntimeError, ValueError) as e:
            raise ConversionError(f"HF weight {r.hf[0]} {_shapes(sources)} does not fit {r.mcore} "
                                  f"{tuple(expected[r.mcore])} ({r.layout.name}: {e})") from None
        if t.shape != expected[r.mcore]:
            raise ConversionError(f"shape mismatch: HF weight {r.hf[0]} {_shapes(sources)} maps to "
                                  f"{tuple(t.shape)} but {r.mcore} is {tuple(expected[r.mcore])}; "
                                  f"does config.json match the weights?")
        out[r.mcore] = t
        used.update(r.hf)
    unmapped = sorted(set(expected) - set(out))
    if unmapped:
        raise ConversionError(f"no HF weight maps to {unmapped[0]} (mapping table bug)")
    left = sorted(set(hf) - used)
    if left:
        raise ConversionError(f"HF weight {left[0]} has no counterpart in megakd's model (an "
                              f"unsupported variant of this architecture?)")
    return out


def mcore_to_hf_tensors(rules: Sequence[Rule], mcore: Dict[str, torch.Tensor],
                        dims: Dims) -> Dict[str, torch.Tensor]:
    """The reverse of `hf_to_mcore_tensors`."""
    out = {}
    for r in rules:
        if r.mcore not in mcore:
            if r.optional:
                continue
            raise ConversionError(f"megatron checkpoint is missing {r.mcore}")
        for name, t in zip(r.hf, r.layout.to_hf(mcore[r.mcore], dims)):
            out[name] = t
    return out


def _shapes(ts):
    return ", ".join(str(tuple(t.shape)) for t in ts)
