"""Row codec of the logits store: truncated teacher distributions <-> compressed blocks.

A row is one token position: its kept entries (vocab id, probability). Per row:
  * probabilities are quantised on a sqrt(p) grid, q = max(1, round(sqrt(p) * L)), and read back as
    q^2 / sum(q^2) (renormalised). Each row takes the coarsest L of a ladder whose stored
    distribution has KL(stored || exact) <= max_kl, so peaked rows cost few bits and flat ones stay
    exact enough. (Rounding sqrt(p) bounds the relative error of large and small p alike:
    KL ~ 2 * sum(dq^2) / L^2.)
  * entries are ordered by q descending, ties by id rank ascending; q is coded as differences from
    the previous entry (mostly 0 or 1), the id as its rank in a per-store table (ids sorted by
    frequency in the dataset, so frequent tokens get small numbers), coded as a difference from the
    previous entry of the same q.
A block of rows stores four streams (entries per row, ladder index, q differences, rank codes),
each as the byte planes of fixed-width integers (the high planes are nearly all zero), compressed
together by zlib or lzma, with a CRC32 of the stored bytes.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import Tuple

import numpy as np

# Ladder of grid sizes L (levels per unit of sqrt(p)): x sqrt(2) per step.
LADDER = np.round(4.0 * np.sqrt(2.0) ** np.arange(40)).astype(np.float64)
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
    out = np.zeros(len(counts), dtype=values.dtype)
    np.add.at(out, _segment_ids(counts), values)
    return out


def quantise(rows: Rows, max_kl: float) -> Tuple[np.ndarray, np.ndarray]:
    """Per row the ladder index g and per entry q >= 1 (entry order as given): the coarsest grid
    whose renormalised q^2 distribution is within max_kl (KL(stored || exact)) of the exact row."""
    n = len(rows.counts)
    seg = _segment_ids(rows.counts)
    logp = rows.logprobs.astype(np.float64)
    logp = logp - np.log(_segment_sum(np.exp(logp), rows.counts))[seg]  # exact, renormalised
    s = np.exp(0.5 * logp)
    grid = np.full(n, len(LADDER) - 1, dtype=np.int64)
    todo = np.ones(n, dtype=bool)
    for g, L in enumerate(LADDER):
        q = np.maximum(1.0, np.round(s * L))
        q2 = q * q
        logz = np.log(_segment_sum(q2, rows.counts))
        stored = np.log(q2) - logz[seg]
        kl = _segment_sum(np.exp(stored) * (stored - logp), rows.counts)
        ok = todo & (kl <= max_kl)
        grid[ok] = g
        todo &= ~ok
        if not todo.any():
            break
    q = np.maximum(1.0, np.round(s * LADDER[grid][seg])).astype(np.int64)
    return grid, q


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
    """Rows -> stored block bytes. `rank_of(ids) -> ranks` maps vocab ids to the store's id ranks."""
    counts = rows.counts.astype(np.int64)
    grid, q = quantise(rows, max_kl)
    seg = _segment_ids(counts)
    ranks = rank_of(rows.ids)
    order = np.lexsort((ranks, -q, seg))  # by row, q descending, rank ascending
    q, ranks = q[order], ranks[order]
    first = np.zeros(len(q), dtype=bool)
    first[rows.starts[:-1][counts > 0]] = True
    dq = np.where(first, q, np.roll(q, 1) - q)
    same_group = ~first & (dq == 0)
    rank_code = np.where(same_group, ranks - np.roll(ranks, 1), ranks)
    wc, pc = _planes(counts)
    wq, pq = _planes(dq)
    wr, pr = _planes(rank_code)
    payload = pc + grid.astype(np.uint8).tobytes() + pq + pr
    packed = zlib.compress(payload, 9) if codec == "zlib" else lzma.compress(payload, preset=9)
    head = _HEAD.pack(len(counts), len(q), wc, wq, wr, CODECS.index(codec), zlib.crc32(packed))
    return head + packed


def decode_block(block: bytes, id_of) -> Rows:
    """Stored block bytes -> Rows; `id_of(ranks) -> ids` inverts the rank table. Raises CorruptBlock."""
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
    if len(payload) != n * wc + n + m * (wq + wr):
        raise CorruptBlock("payload size mismatch")
    view = memoryview(payload)
    counts = _unplanes(view, n, wc)
    grid = np.frombuffer(view[n * wc:], dtype=np.uint8, count=n)
    off = n * wc + n
    dq = _unplanes(view[off:], m, wq)
    codes = _unplanes(view[off + m * wq:], m, wr)
    if counts.sum() != m or (grid >= len(LADDER)).any():
        raise CorruptBlock("inconsistent row counts")
    first = np.zeros(m, dtype=bool)
    first[np.cumsum(counts)[counts > 0] - counts[counts > 0]] = True
    # q = the row's first q minus the running sum of differences inside the row
    q = _segmented_cumsum(np.where(first, dq, -dq), first)
    # ranks: running sums inside groups, a group starting at each row start and wherever q changed
    ranks = _segmented_cumsum(codes, first | (dq != 0))
    if m and (q.min() < 1):
        raise CorruptBlock("bad quantised value")
    return Rows(counts, id_of(ranks), dequantise(counts, q))
