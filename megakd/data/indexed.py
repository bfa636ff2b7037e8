"""megatron-core IndexedDataset files (<prefix>.bin/.idx): write atomically, open after validating.

megatron-core itself fails on a bad dataset with bare asserts or numpy errors deep in a training
run; `open_indexed` checks the files first and says which file is wrong and how to fix it.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy

from megatron.core.datasets.indexed_dataset import (
    _INDEX_HEADER,
    DType,
    IndexedDataset,
    IndexedDatasetBuilder,
    get_bin_path,
    get_idx_path,
)

from megakd.errors import DataError

# magic (9) + version (8) + dtype code (1) + sequence count (8) + document count (8)
_HEADER_SIZE = 34
_REMAKE = "re-create it with tools/preprocess_data.py"


@dataclass(frozen=True)
class IndexHeader:
    """The fixed-size head of an .idx file and the sizes it implies."""

    dtype: type
    sequence_count: int
    document_count: int

    @property
    def idx_size(self) -> int:
        # int32 lengths + int64 pointers per sequence, int64 per document boundary
        return _HEADER_SIZE + 12 * self.sequence_count + 8 * self.document_count


@dataclass(frozen=True)
class WriteStats:
    documents: int
    tokens: int


def _read_header(idx_path: str) -> IndexHeader:
    with open(idx_path, "rb") as f:
        head = f.read(_HEADER_SIZE)
    if len(head) < _HEADER_SIZE:
        raise DataError(f"index {idx_path} is truncated ({len(head)} bytes); {_REMAKE}")
    if head[:9] != _INDEX_HEADER:
        raise DataError(f"{idx_path} is not a megatron-core index (bad magic); {_REMAKE}")
    version, code, seqs, docs = struct.unpack("<QBQQ", head[9:])
    if version != 1:
        raise DataError(f"index {idx_path} has unsupported version {version}; {_REMAKE}")
    if code not in {d.value for d in DType}:
        raise DataError(f"index {idx_path} has unknown token dtype code {code}; {_REMAKE}")
    return IndexHeader(DType.dtype_from_code(code), seqs, docs)


def _check_index(prefix: str) -> IndexHeader:
    """Check that .idx is well-formed and .bin holds exactly the tokens it describes."""
    idx_path, bin_path = get_idx_path(prefix), get_bin_path(prefix)
    missing = [p for p in (idx_path, bin_path) if not os.path.isfile(p)]
    if missing:
        raise DataError(f"dataset {prefix}: missing {' and '.join(missing)}; "
                        f"make it with tools/preprocess_data.py --output-prefix {prefix}")
    header = _read_header(idx_path)
    idx_size = os.path.getsize(idx_path)
    if idx_size != header.idx_size:
        raise DataError(f"index {idx_path} is {idx_size} bytes but its header implies "
                        f"{header.idx_size} (truncated or corrupt); {_REMAKE}")
    n, mm = header.sequence_count, numpy.memmap(idx_path, mode="r")
    lengths = numpy.frombuffer(mm, numpy.int32, n, _HEADER_SIZE)
    pointers = numpy.frombuffer(mm, numpy.int64, n, _HEADER_SIZE + 4 * n)
    doc_idx = numpy.frombuffer(mm, numpy.int64, header.document_count, _HEADER_SIZE + 12 * n)
    itemsize = numpy.dtype(header.dtype).itemsize
    expected_ptrs = numpy.concatenate([[0], numpy.cumsum(lengths[:-1], dtype=numpy.int64)])
    if (header.document_count == 0 or doc_idx[0] != 0 or doc_idx[-1] != n
            or numpy.any(numpy.diff(doc_idx) < 0) or numpy.any(lengths < 0)
            or (n and not numpy.array_equal(pointers, expected_ptrs * itemsize))):
        raise DataError(f"index {idx_path} is corrupt (inconsistent lengths, pointers or "
                        f"document boundaries); {_REMAKE}")
    want_bin = int(lengths.sum(dtype=numpy.int64)) * itemsize
    have_bin = os.path.getsize(bin_path)
    if have_bin != want_bin:
        raise DataError(f"data file {bin_path} is {have_bin} bytes but its index expects "
                        f"{want_bin} (truncated or from another run); {_REMAKE}")
    del mm
    return header


def open_indexed(prefix: str) -> IndexedDataset:
    """Open <prefix>.bin/.idx as a megatron-core IndexedDataset after checking both files."""
    _check_index(prefix)
    return IndexedDataset(prefix)


def document_lengths(prefix: str) -> numpy.ndarray:
    """int64 token count of every sequence (document) of <prefix>, a copy owned by the caller.

    (IndexedDataset.sequence_lengths is a view of its mmap: reading it after the dataset object is
    collected crashes the process.)"""
    ds = open_indexed(prefix)
    lengths = numpy.array(ds.sequence_lengths, dtype=numpy.int64)
    del ds
    return lengths


def dataset_fingerprint(prefix: str) -> str:
    """A cheap identity for a dataset: hash of the .idx bytes plus the .bin size.

    The .idx holds every document length, so any re-tokenisation or reordering changes it; stores
    derived from a dataset (offline teacher targets, MiniPLM scores) are keyed to this.
    """
    _check_index(prefix)
    digest = hashlib.sha256()
    with open(get_idx_path(prefix), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    digest.update(str(os.path.getsize(get_bin_path(prefix))).encode())
    return digest.hexdigest()[:16]


def check_writable(prefix: str) -> None:
    """Create the output folder and make sure files can be written there, before slow work."""
    probe = f"{prefix}.probe-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise DataError(f"cannot write {prefix}.bin/.idx ({e.strerror or e}); "
                        "choose a writable output prefix") from e


def write_indexed(prefix: str, documents: Iterable[Sequence[int]], vocab_size: int,
                  parts: bool = False) -> WriteStats:
    """Write ``documents`` (token-id sequences) as <prefix>.bin/.idx, one document per entry.

    parts=True: each document is a list of sequences (e.g. prompt, response) kept as separate
    megatron-core sequences of one document, so their boundaries survive (`read_parts`).

    Writes to temporary names and renames both files only after the last document, so a failure
    (bad data, Ctrl-C, full disk) never leaves a half-written dataset under the final names.
    """
    dtype = DType.optimal_dtype(vocab_size)
    tmp = f"{prefix}.tmp-{os.getpid()}"
    check_writable(prefix)
    builder = IndexedDatasetBuilder(get_bin_path(tmp), dtype=dtype)
    n_docs = n_tokens = 0
    try:
        for doc in documents:
            lengths = [len(x) for x in doc] if parts else None
            arr = numpy.asarray([t for x in doc for t in x] if parts else doc, dtype=numpy.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise DataError(f"document {n_docs} has token ids outside [0, {vocab_size}); "
                                "is vocab_size the tokenizer's len()?")
            builder.add_document(arr.astype(dtype), lengths or [arr.size])
            n_docs, n_tokens = n_docs + 1, n_tokens + arr.size
        if n_docs == 0:
            raise DataError(f"no documents to write to {prefix}")
        builder.finalize(get_idx_path(tmp))
        os.replace(get_bin_path(tmp), get_bin_path(prefix))
        os.replace(get_idx_path(tmp), get_idx_path(prefix))
    except BaseException:
        builder.data_file.close()
        for path in (get_bin_path(tmp), get_idx_path(tmp)):
            if os.path.exists(path):
                os.remove(path)
        raise
    return WriteStats(n_docs, n_tokens)


def read_parts(prefix: str) -> list:
    """Every document of a `write_indexed(..., parts=True)` dataset as a list of int lists."""
    ds = open_indexed(prefix)
    bounds = ds.document_indices
    return [[ds[i].astype(numpy.int64).tolist() for i in range(bounds[d], bounds[d + 1])]
            for d in range(len(bounds) - 1)]
