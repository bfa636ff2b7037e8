"""Instances: the units MiniPLM scores and selects.

The sources (one or more indexed datasets) are read as token streams: a source's .bin holds its
documents back to back (EOD included), so its stream is the .bin itself. Instances never cross a
source boundary:

  * ``chunks`` (MiniPLM): instance i of a source is tokens [i*L, (i+1)*L) of its stream; the last
    instance of each source holds the remaining 1..L tokens (kept, not dropped, so every token
    belongs to exactly one instance). A chunk may span document boundaries (EOD inside).
  * ``documents``: instance i is document i.

An instance of n tokens is scored on its n-1 next-token predictions (the first token has no
context), as MiniPLM does with its 1025-token chunks (1024 inputs, 1024 labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy

from megakd.data.indexed import dataset_fingerprint, open_indexed
from megakd.errors import DataError

MODES = ("chunks", "documents")


@dataclass
class Source:
    prefix: str
    fingerprint: str
    stream: numpy.ndarray  # the whole .bin as a read-only token array
    doc_starts: numpy.ndarray  # each document's token offset in the stream, then the total


class Instances:
    """The instance table of a list of sources: each instance's source, stream offset, length."""

    def __init__(self, prefixes: Sequence[str], mode: str = "chunks", length: int = 1024):
        if mode not in MODES:
            raise DataError(f"--instances must be one of {MODES}, got {mode!r}")
        if mode == "chunks" and length < 2:
            raise DataError(f"--instance-length must be >= 2 (one context + one predicted token), "
                            f"got {length}")
        if not prefixes:
            raise DataError("no dataset prefix given; pass --data-prefix")
        self.mode, self.length = mode, length
        self.sources: List[Source] = [_open_source(p) for p in prefixes]
        source, start, size = [], [], []
        for s, src in enumerate(self.sources):
            total = int(src.doc_starts[-1])
            if mode == "chunks":
                st = numpy.arange(0, total, length, dtype=numpy.int64)
                ln = numpy.minimum(length, total - st)
            else:
                st = src.doc_starts[:-1]
                ln = numpy.diff(src.doc_starts)
            source.append(numpy.full(len(st), s, dtype=numpy.int32))
            start.append(st)
            size.append(ln.astype(numpy.int64))
        self.source = numpy.concatenate(source)
        self.start = numpy.concatenate(start)
        self.size = numpy.concatenate(size)

    def __len__(self) -> int:
        return len(self.start)

    @property
    def max_length(self) -> int:
        return int(self.size.max()) if len(self) else 0

    def tokens(self, i: int) -> numpy.ndarray:
        """Token ids of instance i (a view into the memory-mapped .bin)."""
        st = int(self.start[i])
        return self.sources[self.source[i]].stream[st:st + int(self.size[i])]

    def spans(self, i: int):
        """[(document, token offset, token count)]: the document pieces instance i is made of."""
        src = self.sources[self.source[i]]
        st, end = int(self.start[i]), int(self.start[i] + self.size[i])
        doc = int(numpy.searchsorted(src.doc_starts, st, side="right")) - 1
        out = []
        while st < end:
            doc_end = int(src.doc_starts[doc + 1])
            take = min(end, doc_end) - st
            if take > 0:
                out.append((doc, st - int(src.doc_starts[doc]), take))
            st += take
            doc += 1
        return out

    def metadata(self) -> dict:
        """What defines the instances (stored with the scores, checked at selection)."""
        return {
            "mode": self.mode,
            "length": self.length if self.mode == "chunks" else None,
            "last_chunk": "kept (shorter)" if self.mode == "chunks" else None,
            "count": len(self),
            "tokens": int(self.size.sum()),
            "sources": [{"prefix": s.prefix, "fingerprint": s.fingerprint,
                         "documents": len(s.doc_starts) - 1, "tokens": int(s.doc_starts[-1]),
                         "instances": int((self.source == k).sum())}
                        for k, s in enumerate(self.sources)],
        }


def _open_source(prefix: str) -> Source:
    ds = open_indexed(prefix)  # validates .idx/.bin, contiguous pointers included
    lengths = numpy.asarray(ds.sequence_lengths, dtype=numpy.int64)
    doc_starts = numpy.concatenate([[0], numpy.cumsum(lengths)]).astype(numpy.int64)
    dtype = numpy.dtype(ds.index.dtype)
    if doc_starts[-1] == 0:
        raise DataError(f"dataset {prefix} holds no tokens")
    stream = numpy.memmap(f"{prefix}.bin", dtype=dtype, mode="r")
    return Source(prefix, dataset_fingerprint(prefix), stream, doc_starts)


def check_same_data(meta: dict, instances: Instances) -> None:
    """Scores must come from the same datasets, in the same order, cut the same way."""
    want = [(s["prefix"], s["fingerprint"]) for s in meta["sources"]]
    have = [(s.prefix, s.fingerprint) for s in instances.sources]
    if [f for _, f in want] != [f for _, f in have]:
        raise DataError(f"the scores were computed on another dataset (fingerprints "
                        f"{[f for _, f in want]} from {[p for p, _ in want]}, but "
                        f"{[f for _, f in have]} here); score this --data-prefix with "
                        f"tools/miniplm_score.py first")
    if meta["count"] != len(instances):
        raise DataError(f"the scores hold {meta['count']} instances but the data cuts into "
                        f"{len(instances)}; re-run tools/miniplm_score.py")
