"""The offline teacher-logits store on disk: shard writer, manifest, reader.

A store is a directory:
  store.json         format, StoreMeta, the shard list; written last (its presence = complete)
  shard-NNNNNN.bin   the rows of a contiguous range of documents: codec blocks of `block_rows`
                     rows, the shard's id table (ids by how often the teacher kept them: the
                     codec's ranks), the block table, a footer (sizes, CRC32, magic); written to
                     a temp name and renamed when complete
Rows are keyed by (document id, token offset) of the indexed dataset: row r of document d is
p_teacher(next token | d[:r+1]), so any layout, batch size or sequence length can read them.
The shard plan depends only on the dataset and `shard_tokens`, never on the number of ranks, so a
store is byte-identical however many ranks wrote it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import numpy as np

from megakd.data.logits_store import codec
from megakd.data.shards import write_json_atomic
from megakd.errors import StoreError

FORMAT = "megakd.logits_store/1"
MANIFEST = "store.json"
_FOOTER = struct.Struct("<QQI8s")  # block count, id-table bytes, CRC32 of id + block tables, magic
_MAGIC = b"MKDLS02\0"
_REDUMP = "rerun tools/dump_teacher_logits.py with the same arguments (it redoes missing shards)"


@dataclass(frozen=True)
class StoreMeta:
    """What a store holds and how it was made (recorded in store.json)."""

    vocab_size: int
    top_k: int
    dataset_fingerprint: str = ""
    num_docs: int = 0
    num_tokens: int = 0
    vocab_fingerprint: str = ""
    tokenizer: str = ""
    teacher: str = ""
    teacher_fingerprint: str = ""
    teacher_precision: str = ""  # what the teacher ran in ("": not recorded, dumped before it was)
    top_p: float = 1.0
    temperature: float = 1.0
    window: int = 0  # 0: whole documents
    stride: int = 0
    codec: str = "zlib"
    max_kl: float = 1e-3
    block_rows: int = 1024
    shard_tokens: int = 1 << 17

    def validate(self) -> None:
        if self.codec not in codec.CODECS:
            raise StoreError(f"codec {self.codec!r} is not one of {list(codec.CODECS)}")
        if self.top_k < 1 or self.vocab_size < 1:
            raise StoreError(f"a store needs top_k >= 1 and vocab_size >= 1 (got {self.top_k}, "
                             f"{self.vocab_size}); set --top-k")
        if not self.max_kl >= codec.MIN_KL or self.block_rows < 1 or self.shard_tokens < 1:
            raise StoreError(f"need max_kl >= {codec.MIN_KL}, block_rows >= 1 and shard_tokens >= 1 "
                             f"(got {self.max_kl}, {self.block_rows}, {self.shard_tokens})")


# ------------------------------------------------------------------------------------ id ranks

class IdRanks:
    """Vocab id <-> rank: the ids of `order` (a shard's kept ids, most frequent first) get their
    position, every other id comes after them in id order. Any id < 2^63, no vocab-sized table."""

    def __init__(self, order: np.ndarray):
        self.order = order.astype(np.int64)
        self.seen = np.sort(self.order)
        self.rank_of_seen = np.argsort(self.order, kind="stable")  # rank of seen[i]
        # unseen id u is the e-th unseen id, e = u - #(seen ids < u)
        self._gaps = self.seen - np.arange(len(order))

    def rank_of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        i = np.searchsorted(self.seen, ids)
        hit = (i < len(self.seen)) & (self.seen[np.minimum(i, len(self.seen) - 1)] == ids)
        return np.where(hit, self.rank_of_seen[np.minimum(i, len(self.seen) - 1)],
                        len(self.seen) + ids - i)

    def id_of(self, ranks: np.ndarray) -> np.ndarray:
        ranks = np.asarray(ranks, dtype=np.int64)
        e = ranks - len(self.order)
        unseen = e + np.searchsorted(self._gaps, e, side="right")
        return np.where(e < 0, self.order[np.clip(ranks, 0, len(self.order) - 1)], unseen)


# ------------------------------------------------------------------------------------ layout

def shard_plan(lengths: np.ndarray, shard_tokens: int) -> List[Tuple[int, int]]:
    """(first_doc, num_docs) per shard: a document goes to shard (its first token // shard_tokens),
    empty shards dropped. Depends only on the dataset, not on the number of ranks."""
    starts = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)])
    key = starts // shard_tokens
    cut = np.flatnonzero(np.diff(key)) + 1
    bounds = np.concatenate([[0], cut, [len(lengths)]])
    return [(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def shard_file(k: int) -> str:
    return f"shard-{k:06d}.bin"


class ShardWriter:
    """Collects the rows of one shard (document order); `close()` ranks the shard's ids by how
    often they were kept, encodes the blocks, writes the file under a temp name and renames it."""

    def __init__(self, path: str, meta: StoreMeta):
        self.path, self.meta = path, meta
        self.parts: List[codec.Rows] = []

    def add(self, rows: codec.Rows) -> None:
        self.parts.append(codec.Rows(rows.counts, rows.ids, rows.logprobs.astype(np.float32)))

    def close(self) -> None:
        rows = _concat(self.parts) if self.parts else codec.Rows(*(np.zeros(0, t) for t in (np.int64, np.int64, np.float32)))
        self.parts = []
        ids, freq = np.unique(rows.ids, return_counts=True)
        order = ids[np.lexsort((ids, -freq))]
        ranks = IdRanks(order)
        tmp = f"{self.path}.tmp-{os.getpid()}"
        table, offset = [], 0
        try:
            with open(tmp, "wb") as f:
                starts = rows.starts
                for a in range(0, len(rows.counts), self.meta.block_rows):
                    b = min(a + self.meta.block_rows, len(rows.counts))
                    part = codec.Rows(rows.counts[a:b], rows.ids[starts[a]:starts[b]],
                                      rows.logprobs[starts[a]:starts[b]])
                    block = codec.encode_block(part, ranks.rank_of, self.meta.max_kl, self.meta.codec)
                    f.write(block)
                    table.append((offset, len(block), b - a))
                    offset += len(block)
                id_table = _pack_ids(order)
                blocks = np.array(table, dtype=np.int64).reshape(-1, 3).tobytes()
                f.write(id_table + blocks + _FOOTER.pack(len(table), len(id_table),
                                                         zlib.crc32(id_table + blocks), _MAGIC))
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _pack_ids(order: np.ndarray) -> bytes:
    width, planes = codec.planes(order)
    return struct.pack("<QB", len(order), width) + zlib.compress(planes, 9)


def _unpack_ids(raw: bytes) -> np.ndarray:
    n, width = struct.unpack_from("<QB", raw)
    return codec.unplanes(memoryview(zlib.decompress(raw[9:])), n, width)


def _concat(parts: Sequence[codec.Rows]) -> codec.Rows:
    if len(parts) == 1:
        return parts[0]
    return codec.Rows(np.concatenate([p.counts for p in parts]), np.concatenate([p.ids for p in parts]),
                      np.concatenate([p.logprobs for p in parts]))


def read_shard_index(path: str) -> Tuple[np.ndarray, IdRanks]:
    """(block table int64 [blocks, 3]: offset, length, rows; the shard's id ranks) of a complete
    shard file; StoreError if it is missing or damaged."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if size < _FOOTER.size:
                raise ValueError("too short")
            f.seek(size - _FOOTER.size)
            n, id_bytes, crc, magic = _FOOTER.unpack(f.read(_FOOTER.size))
            tail = _FOOTER.size + 24 * n + id_bytes
            if magic != _MAGIC or size < tail:
                raise ValueError("bad footer")
            f.seek(size - tail)
            raw = f.read(tail - _FOOTER.size)
        if zlib.crc32(raw) != crc:
            raise ValueError("index checksum")
        order = _unpack_ids(raw[:id_bytes])
    except (OSError, ValueError, struct.error, zlib.error) as e:
        raise StoreError(f"shard {path} is missing or corrupt ({e}); delete it and {_REDUMP}") from e
    return np.frombuffer(raw[id_bytes:], dtype=np.int64).reshape(n, 3), IdRanks(order)


def finish_store(directory: str, meta: StoreMeta, plan: List[Tuple[int, int]]) -> None:
    """Write store.json once every shard of `plan` is on disk (marks the store complete)."""
    shards = []
    for k, (first, num) in enumerate(plan):
        path = os.path.join(directory, shard_file(k))
        table, _ = read_shard_index(path)
        shards.append({"file": shard_file(k), "first_doc": first, "num_docs": num,
                       "rows": int(table[:, 2].sum()), "bytes": os.path.getsize(path)})
    write_json_atomic(os.path.join(directory, MANIFEST),
                      {"format": FORMAT, "meta": dataclasses.asdict(meta), "shards": shards})


def dataset_meta(data_prefix: str, meta: StoreMeta) -> Tuple[StoreMeta, np.ndarray]:
    """`meta` with the dataset's fingerprint and sizes filled in, and its document lengths."""
    from megakd.data.indexed import dataset_fingerprint, document_lengths

    lengths = document_lengths(data_prefix)
    return dataclasses.replace(meta, dataset_fingerprint=dataset_fingerprint(data_prefix),
                               num_docs=len(lengths), num_tokens=int(lengths.sum())), lengths


def rows_of(ids, logprobs) -> codec.Rows:
    """One document's rows from a [n, K] array or a list of per-position 1-D arrays."""
    if isinstance(ids, np.ndarray) and ids.ndim == 2:
        return codec.rows_from_padded(ids, logprobs)
    width = max([len(r) for r in ids] + [1])
    pad_ids = np.full((len(ids), width), -1, dtype=np.int64)
    pad_lp = np.full((len(ids), width), -np.inf, dtype=np.float64)
    for r, (i, lp) in enumerate(zip(ids, logprobs)):
        pad_ids[r, :len(i)], pad_lp[r, :len(lp)] = i, lp
    return codec.rows_from_padded(pad_ids, pad_lp)


def write_store(directory: str, data_prefix: str,
                docs: Iterable[Tuple[int, Sequence[np.ndarray], Sequence[np.ndarray]]], **meta) -> None:
    """Build a store from given rows: `docs` yields (doc_id, ids rows, logprobs rows) for every
    document of the dataset in order; `meta` are StoreMeta fields (vocab_size and top_k needed).
    The same shard writer as tools/dump_teacher_logits.py."""
    meta, lengths = dataset_meta(data_prefix, StoreMeta(**meta))
    meta.validate()
    os.makedirs(directory, exist_ok=True)
    plan = shard_plan(lengths, meta.shard_tokens)
    docs = iter(docs)
    for k, (first, num) in enumerate(plan):
        writer = ShardWriter(os.path.join(directory, shard_file(k)), meta)
        for d in range(first, first + num):
            doc_id, ids, logprobs = next(docs)
            rows = rows_of(ids, logprobs)
            check_doc_rows(doc_id, d, rows, lengths, meta.top_k)
            writer.add(rows)
        writer.close()
    finish_store(directory, meta, plan)


def check_doc_rows(doc_id: int, expected: int, rows: codec.Rows, lengths: np.ndarray, top_k: int) -> None:
    if doc_id != expected:
        raise StoreError(f"rows of document {doc_id} came where document {expected} was due; "
                         "give every document of the dataset once, in order")
    if len(rows.counts) != lengths[doc_id]:
        raise StoreError(f"document {doc_id} has {lengths[doc_id]} tokens but {len(rows.counts)} rows")
    if rows.counts.size and rows.counts.max() > top_k:
        raise StoreError(f"document {doc_id} has a row of {rows.counts.max()} entries > top_k={top_k}")


# ------------------------------------------------------------------------------------ reader

class LogitsStore:
    """Read side: `lookup(doc_ids, offsets)` -> padded (ids, logprobs) of those token positions."""

    def __init__(self, directory: str, meta: StoreMeta, shards: List[dict], lengths: np.ndarray,
                 cache_blocks: int = 64):
        self.directory, self.meta = directory, meta
        self.lengths = lengths
        self.row_start = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        paths, ranks, first_rows, offsets, sizes = [], [], [], [], []
        for s in shards:
            path = os.path.join(directory, s["file"])
            if not os.path.isfile(path) or os.path.getsize(path) != s["bytes"]:
                raise StoreError(f"shard {path} is missing or has the wrong size; delete it and "
                                 f"{MANIFEST}, then {_REDUMP}")
            table, shard_ranks = read_shard_index(path)
            base = self.row_start[s["first_doc"]]
            if int(table[:, 2].sum()) != s["rows"] or self.row_start[s["first_doc"] + s["num_docs"]] - base != s["rows"]:
                raise StoreError(f"shard {path} does not hold the rows {MANIFEST} lists; {_REDUMP}")
            paths += [path] * len(table)
            ranks += [shard_ranks] * len(table)
            first_rows.append(base + np.concatenate([[0], np.cumsum(table[:-1, 2])]))
            offsets.append(table[:, 0])
            sizes.append(table[:, 1])
        self._paths, self._ranks = paths, ranks
        self._first_row = np.concatenate(first_rows) if first_rows else np.zeros(0, np.int64)
        self._offset = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        self._size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
        self._cache: "OrderedDict[int, Tuple[np.ndarray, codec.Rows]]" = OrderedDict()
        self._cache_blocks = cache_blocks

    @property
    def num_blocks(self) -> int:
        return len(self._paths)

    def _block(self, b: int) -> Tuple[np.ndarray, codec.Rows]:
        hit = self._cache.get(b)
        if hit is not None:
            self._cache.move_to_end(b)
            return hit
        with open(self._paths[b], "rb") as f:
            f.seek(int(self._offset[b]))
            raw = f.read(int(self._size[b]))
        try:
            rows = codec.decode_block(raw, self._ranks[b].id_of)
        except codec.CorruptBlock as e:
            raise StoreError(f"shard {self._paths[b]} is corrupt (block at byte {self._offset[b]}: {e}); "
                             f"delete it and {MANIFEST}, then {_REDUMP}") from e
        hit = (rows.starts, rows)
        self._cache[b] = hit
        if len(self._cache) > self._cache_blocks:
            self._cache.popitem(last=False)
        return hit

    def lookup(self, doc_ids: np.ndarray, offsets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """ids int64 [n, K] and logprobs float32 [n, K] (K = meta.top_k) of the stored truncated
        teacher distribution p(next | doc[:offset+1]) at each (doc id, offset); unused slots id 0,
        logprob -inf."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64).reshape(-1)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        if doc_ids.shape != offsets.shape:
            raise ValueError(f"doc_ids {doc_ids.shape} and offsets {offsets.shape} differ in shape")
        bad = (doc_ids < 0) | (doc_ids >= len(self.lengths))
        bad |= (offsets < 0) | (offsets >= self.lengths[np.clip(doc_ids, 0, len(self.lengths) - 1)])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"no stored row for document {doc_ids[i]} offset {offsets[i]} "
                             f"(the store has {len(self.lengths)} documents)")
        k = self.meta.top_k
        out_ids = np.zeros((len(doc_ids), k), dtype=np.int64)
        out_lp = np.full((len(doc_ids), k), -np.inf, dtype=np.float32)
        g = self.row_start[doc_ids] + offsets
        blocks = np.searchsorted(self._first_row, g, side="right") - 1
        for b in np.unique(blocks):
            sel = np.flatnonzero(blocks == b)
            starts, rows = self._block(int(b))
            r = g[sel] - self._first_row[b]
            counts = rows.counts[r]
            col = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            src = np.repeat(starts[r], counts) + col
            dst = np.repeat(sel, counts)
            out_ids[dst, col] = rows.ids[src]
            out_lp[dst, col] = rows.logprobs[src]
        return out_ids, out_lp


def read_manifest(directory: str) -> dict:
    if not os.path.isdir(directory):
        raise StoreError(f"logits store {directory} does not exist; make it with "
                         f"tools/dump_teacher_logits.py --output {directory}")
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        if any(n.startswith("shard-") for n in os.listdir(directory)):
            raise StoreError(f"logits store {directory} is incomplete (no {MANIFEST}: the dump was "
                             f"stopped); {_REDUMP}")
        raise StoreError(f"{directory} is not a logits store (no {MANIFEST}); make one with "
                         f"tools/dump_teacher_logits.py --output {directory}")
    try:
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        StoreMeta(**manifest["meta"])
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path} is not a valid logits-store manifest ({e}); dump the store again") from e
    return manifest


def open_store(directory: str, data_prefix: str, cache_blocks: int = 64) -> LogitsStore:
    """Open the store in `directory` for the dataset `data_prefix` (checked by fingerprint)."""
    from megakd.data.indexed import dataset_fingerprint, document_lengths

    manifest = read_manifest(directory)
    meta = StoreMeta(**manifest["meta"])
    fp = dataset_fingerprint(data_prefix)
    if fp != meta.dataset_fingerprint:
        raise StoreError(f"store {directory} was dumped from dataset {meta.dataset_fingerprint}, not "
                         f"{fp} ({data_prefix}): dump it again with tools/dump_teacher_logits.py "
                         f"--data-prefix {data_prefix}")
    return LogitsStore(directory, meta, manifest["shards"], document_lengths(data_prefix), cache_blocks)
