"""Carve a held-out slice of documents out of an indexed dataset (training data for the reference).

MiniPLM trains its reference model on held-out data from the same distribution as the corpus it
then scores. The slice is a seeded random set of whole documents, picked in a fixed permuted order
until it holds ``fraction`` of the documents or ``tokens`` tokens; both outputs keep the original
document order and token ids, and together hold every document exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy

from megakd.data.indexed import write_indexed
from megakd.errors import ConfigError, DataError
from megakd.miniplm.instances import Instances


@dataclass
class SplitResult:
    held_out_documents: int
    held_out_tokens: int
    rest_documents: int
    rest_tokens: int


def held_out_mask(lengths: numpy.ndarray, fraction: Optional[float], tokens: Optional[int],
                  seed: int) -> numpy.ndarray:
    """Boolean mask of the held-out documents."""
    n = len(lengths)
    order = numpy.random.default_rng(seed).permutation(n)
    if (fraction is None) == (tokens is None):
        raise ConfigError("pass exactly one of --fraction and --tokens")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise ConfigError(f"--fraction must be in (0, 1), got {fraction}")
        count = int(numpy.floor(fraction * n + 0.5))
    else:
        if tokens <= 0:
            raise ConfigError(f"--tokens must be positive, got {tokens}")
        count = int(numpy.searchsorted(numpy.cumsum(lengths[order]), tokens) + 1)
    if not 0 < count < n:
        raise DataError(f"the held-out slice would hold {count} of {n} documents; both parts need "
                        f"at least one, change --fraction/--tokens")
    mask = numpy.zeros(n, dtype=bool)
    mask[order[:count]] = True
    return mask


def split_dataset(prefix: str, held_out_prefix: str, rest_prefix: str,
                  fraction: Optional[float] = None, tokens: Optional[int] = None,
                  seed: int = 0) -> SplitResult:
    docs = Instances([prefix], mode="documents")
    mask = held_out_mask(docs.size, fraction, tokens, seed)
    vocab = int(docs.sources[0].stream.max()) + 1
    held = write_indexed(held_out_prefix, (docs.tokens(i) for i in numpy.flatnonzero(mask)), vocab)
    rest = write_indexed(rest_prefix, (docs.tokens(i) for i in numpy.flatnonzero(~mask)), vocab)
    return SplitResult(held.documents, held.tokens, rest.documents, rest.tokens)
