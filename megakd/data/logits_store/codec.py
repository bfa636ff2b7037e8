"""Row codec of the logits store: truncated teacher distributions <-> compressed blocks.

A row is one token position: its kept entries (vocab id, probability). Per row:
  * probabilities are quantised on a sqrt(p) grid, q = max(1, round(sqrt(p) * L)), and read back as
    q^2 / sum(q^2) (renormalised). Each row takes the coarsest L of a ladder whose stored
    distribution has KL(stored || exact) <= max_kl, so peaked rows cost few bits and flat ones stay
    exact enough. (Rounding sqrt(p) bounds the relative error of large and small p alike:
    KL ~ 2 * sum(dq^2) / L^2.)
  * ids are coded as a set: their ranks in the shard's table (ids by how often the teacher kept
    them, so frequent ids get small numbers) in ascending order, as gaps; q follows in that order.
    Reading sorts each row back by probability (then id).
A block of rows stores three streams (entries per row, q, rank gaps), each as the byte
planes of fixed-width integers (the high planes are nearly all zero), compressed together by zlib
or lzma, with a CRC32 of the stored bytes.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import Tuple

import numpy as np

# Ladder of grid sizes L (levels per unit of sqrt(p)): x 2^(1/4) per step, up to ~2^20.
LADDER = np.round(4.0 * 2.0 ** (np.arange(72) / 4.0)).astype(np.float64)
MIN_KL = 1e-6


def _kl_target(max_kl: float) -> float:
    """Aim a little under max_kl: the float32 log-probs handed out add rounding (~1e-8 nats)."""
    return max_kl * (1 - 1e-3) - 1e-7
CODECS = ("zlib", "lzma")
_HEAD = struct.Struct("<IIBBBBI")  # rows, entries, width of counts / q diffs / ranks, codec, crc


class CorruptBlock(Exception):
    """A block's checksum or layout does not match its bytes (the caller names the file)."""


@dataclass(frozen=True)
class Rows:
    """Rows as flat arrays: `counts` [n] entries per row; `ids` int64 and `logprobs` float32 [sum]."""

    counts: np.ndarray
    ids: np.ndarray
    logprobs: np.ndarray

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)])


def rows_from_padded(ids: np.ndarray, logprobs: np.ndarray) -> Rows:
    """[n, K] ids/log-probs with unused slots (id < 0 or log-prob -inf) -> Rows (kept slots only)."""
    ids, logprobs = np.asarray(ids), np.asarray(logprobs)
    used = (ids >= 0) & np.isfinite(logprobs)
    return Rows(used.sum(axis=1).astype(np.int64), ids[used].astype(np.int64),
                logprobs[used].astype(np.float64))


def _segment_ids(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def _segment_sum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.bincount(_segment_ids(counts), weights=values, minlength=len(counts))


def quantise(rows: Rows, max_kl: float) -> np.ndarray:
    """q >= 1 per entry (entry order as given), on each row's coarsest grid of the ladder whose
    renormalised q^2 distribution is within max_kl (KL(stored || exact)) of the exact row.
    Bisection over the ladder (KL falls as L grows), every row at once."""
    seg = _segment_ids(rows.counts)
    logp = rows.logprobs.astype(np.float64)
    logp = logp - np.log(_segment_sum(np.exp(logp), rows.counts))[seg]  # exact, renormalised
    s = np.exp(0.5 * logp)

    def q_kl(g):
        q = np.maximum(1.0, np.round(s * LADDER[g][seg]))
        stored = 2 * np.log(q) - np.log(_segment_sum(q * q, rows.counts))[seg]
        return q, _segment_sum(np.exp(stored) * (stored - logp), rows.counts)

    lo = np.full(len(rows.counts), -1)  # grids known to miss the bound (or none)
    hi = np.full(len(rows.counts), len(LADDER) - 1)  # grids known to meet it
    while (hi - lo > 1).any():
        mid = np.where(hi - lo > 1, (lo + hi) // 2, hi)
        ok = q_kl(mid)[1] <= _kl_target(max_kl)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return q_kl(hi)[0].astype(np.int64)


def dequantise(counts: np.ndarray, q: np.ndarray) -> np.ndarray:
    """float32 log-probs q^2 / sum(q^2) per row."""
    q2 = q.astype(np.float64) ** 2
    logz = np.log(_segment_sum(q2, counts))
    return (np.log(q2) - logz[_segment_ids(counts)]).astype(np.float32)


def _planes(values: np.ndarray) -> Tuple[int, bytes]:
    """Non-negative ints -> (byte width, little-endian byte planes: all low bytes, then the next...)."""
    values = values.astype(np.uint64)
    top = int(values.max()) if values.size else 0
    width = max(1, (top.bit_length() + 7) // 8)
    raw = values.view(np.uint8).reshape(-1, 8)[:, :width]
    return width, np.ascontiguousarray(raw.T).tobytes()


def _unplanes(buf: memoryview, count: int, width: int) -> np.ndarray:
    planes = np.frombuffer(buf, dtype=np.uint8, count=count * width).reshape(width, count)
    out = np.zeros((count, 8), dtype=np.uint8)
    out[:, :width] = planes.T
    return out.view(np.uint64).reshape(count).astype(np.int64)


def _segmented_cumsum(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting at every True of `starts` (starts[0] must be True)."""
    run = np.cumsum(values)
    idx = np.flatnonzero(starts)
    return run - np.repeat(run[idx] - values[idx], np.diff(np.append(idx, len(values))))


def encode_block(rows: Rows, rank_of, max_kl: float, codec: str = "zlib") -> bytes:
    """Rows -> stored block bytes. `rank_of(ids) -> ranks` maps vocab ids to the shard's id ranks."""
    counts = rows.counts.astype(np.int64)
    q = quantise(rows, max_kl)
    ranks = rank_of(rows.ids)
    order = np.lexsort((ranks, _segment_ids(counts)))  # by row, rank ascending
    q, ranks = q[order], ranks[order]
    first = _row_firsts(counts, len(q))
    gaps = np.where(first, ranks, ranks - np.roll(ranks, 1) - 1)
    wc, pc = _planes(counts)
    wq, pq = _planes(q)
    wr, pr = _planes(gaps)
    payload = pc + pq + pr  # (L is not stored: q^2 / sum(q^2) does not depend on it)
    packed = zlib.compress(payload, 9) if codec == "zlib" else lzma.compress(payload, preset=9)
    head = _HEAD.pack(len(counts), len(q), wc, wq, wr, CODECS.index(codec), zlib.crc32(packed))
    return head + packed


def _row_firsts(counts: np.ndarray, m: int) -> np.ndarray:
    first = np.zeros(m, dtype=bool)
    first[(np.cumsum(counts) - counts)[counts > 0]] = True
    return first


def decode_block(block: bytes, id_of) -> Rows:
    """Stored block bytes -> Rows, each row by probability descending; `id_of(ranks) -> ids`
    inverts the rank table. Raises CorruptBlock."""
    if len(block) < _HEAD.size:
        raise CorruptBlock("truncated block header")
    n, m, wc, wq, wr, codec, crc = _HEAD.unpack_from(block)
    packed = memoryview(block)[_HEAD.size:]
    if zlib.crc32(packed) != crc or codec >= len(CODECS):
        raise CorruptBlock("checksum mismatch")
    try:
        payload = zlib.decompress(packed) if codec == 0 else lzma.decompress(packed)
    except (zlib.error, lzma.LZMAError) as e:
        raise CorruptBlock(f"cannot decompress ({e})") from e
    if len(payload) != n * wc + m * (wq + wr):
        raise CorruptBlock("payload size mismatch")
    view = memoryview(payload)
    counts = _unplanes(view, n, wc)
    off = n * wc
    q = _unplanes(view[off:], m, wq)
    gaps = _unplanes(view[off + m * wq:], m, wr)
    if counts.sum() != m or (m and q.min() < 1):
        raise CorruptBlock("inconsistent rows")
    first = _row_firsts(counts, m)
    ranks = _segmented_cumsum(gaps + ~first, first) if m else gaps
    ids = id_of(ranks)
    order = np.lexsort((ids, -q, _segment_ids(counts)))  # equal q: by id, whatever the table
    return Rows(counts, ids[order], dequantise(counts, q[order]))
