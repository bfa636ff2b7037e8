"""TEST-ONLY stand-in for megakd.data.logits_store (same API, exact values, pickle-backed) until
the real store lands on main. Not a store implementation: no codec, no shards."""

import hashlib
import os
import pickle
from dataclasses import dataclass

import numpy

from megakd.errors import MegakdError


class StoreError(MegakdError):
    pass


@dataclass
class StoreMeta:
    dataset_fingerprint: str
    vocab_size: int
    vocab_fingerprint: str
    top_p: float
    top_k: int
    temperature: float


def _fingerprint(prefix):
    with open(prefix + ".idx", "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def write_store(directory, data_prefix, docs, **meta):
    rows = {int(d): (list(i), list(p)) for d, i, p in docs}
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "standin.pkl"), "wb") as f:
        pickle.dump((StoreMeta(dataset_fingerprint=_fingerprint(data_prefix), **meta), rows), f)


class LogitsStore:
    def __init__(self, meta, rows):
        self.meta, self.rows = meta, rows

    def lookup(self, doc_ids, offsets):
        k = self.meta.top_k
        ids = numpy.zeros((len(doc_ids), k), dtype=numpy.int64)
        lp = numpy.full((len(doc_ids), k), -numpy.inf, dtype=numpy.float32)
        for n, (d, o) in enumerate(zip(doc_ids, offsets)):
            i, p = self.rows[int(d)][0][int(o)], self.rows[int(d)][1][int(o)]
            ids[n, :len(i)], lp[n, :len(p)] = i, p
        return ids, lp


def open_store(directory, data_prefix):
    path = os.path.join(directory, "standin.pkl")
    if not os.path.isfile(path):
        raise StoreError(f"{directory} is not a logits store")
    with open(path, "rb") as f:
        meta, rows = pickle.load(f)
    if meta.dataset_fingerprint != _fingerprint(data_prefix):
        raise StoreError(f"store {directory} was dumped from another dataset, not {data_prefix}")
    return LogitsStore(meta, rows)
