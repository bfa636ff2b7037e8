"""Raw text -> tokenised megatron-core IndexedDataset (<prefix>.bin/.idx), one document per entry.

Inputs, one document each:
  * ``.jsonl`` / ``.json`` (JSON lines): one object per line, text under ``json_key``;
  * ``.parquet``: one row per document, text in the ``json_key`` column;
  * ``.txt``: the WHOLE file is one document (a book, a source file), read as UTF-8;
  * a directory written by ``datasets.Dataset.save_to_disk``: one row per document;
  * any other directory: every supported file below it, in sorted path order.
JSON lines are parsed line by line and parquet read batch by batch (pyarrow) rather than through
``datasets.load_dataset``, which would first copy the whole corpus into an Arrow cache and could
only report a missing key as a null; here a bad row is reported with its file and line.

Documents are tokenised without BOS/EOS and EOD (the tokenizer's EOS) is appended unless
``append_eod=False``. Token ids are identical for any number of workers.
"""

from __future__ import annotations

import collections
import itertools
import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional

from megakd.errors import DataError

TEXT_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")

_TOKENIZER = None  # set in the parent before forking workers; inherited by them


@dataclass(frozen=True)
class PreprocessResult:
    prefix: str
    documents: int
    tokens: int
    seconds: float


def _is_saved_dataset(path: str) -> bool:
    """A folder written by Dataset.save_to_disk (state.json + dataset_info.json) or
    DatasetDict.save_to_disk (dataset_dict.json)."""
    def has(*names):
        return all(os.path.isfile(os.path.join(path, n)) for n in names)

    return os.path.isdir(path) and (has("state.json", "dataset_info.json")
                                    or has("dataset_dict.json"))


def list_inputs(path: str) -> List[str]:
    """The files (or saved-dataset dirs) that make up ``path``, in a deterministic order."""
    if not os.path.exists(path):
        raise DataError(f"input {path} does not exist; pass a .jsonl/.parquet/.txt file, a "
                        "directory of them, or a datasets.save_to_disk directory")
    if os.path.isfile(path) or _is_saved_dataset(path):
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if _is_saved_dataset(root) and root != path:
            found.append(root)
            dirs[:] = []
            continue
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.endswith(TEXT_SUFFIXES) and not f.startswith(".")]
    if not found:
        raise DataError(f"input directory {path} holds no {'/'.join(TEXT_SUFFIXES)} files "
                        "or saved datasets")
    return found


def _jsonl_texts(path: str, key: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno} is not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or key not in row:
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise DataError(f"{path}:{lineno} has no {key!r} field (found {keys}); "
                                "pass --json-key with the text field")
            yield _as_text(row[key], f"{path}:{lineno}", key)


def _as_text(value, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is {type(value).__name__}, not text")
    return value


def _check_column(columns, path: str, key: str) -> None:
    if key not in columns:
        raise DataError(f"{path} has no {key!r} column (found {sorted(columns)}); "
                        "pass --json-key with the text column")


def _parquet_texts(path: str, key: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path} is not a readable parquet file ({e})") from e
    _check_column(pf.schema_arrow.names, path, key)
    row = 0
    for batch in pf.iter_batches(columns=[key], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield _as_text(value, f"{path} row {row}", key)
            row += 1


def _saved_dataset_texts(path: str, key: str) -> Iterator[str]:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise DataError(f"{path} is a DatasetDict with splits {sorted(ds)}; save the one "
                            "split to preprocess with save_to_disk and pass that")
        ds = next(iter(ds.values()))
    _check_column(ds.column_names, path, key)
    for start in range(0, len(ds), 1024):
        for value in ds[start:start + 1024][key]:
            yield _as_text(value, path, key)


def _txt_text(path: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            yield f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e


def iter_texts(path: str, json_key: str = "text") -> Iterator[str]:
    """Every document's text under ``path`` (see the module docstring for the formats)."""
    for item in list_inputs(path):
        if _is_saved_dataset(item):
            yield from _saved_dataset_texts(item, json_key)
        elif item.endswith(".parquet"):
            yield from _parquet_texts(item, json_key)
        elif item.endswith(".txt"):
            yield from _txt_text(item)
        elif item.endswith((".jsonl", ".json")):
            yield from _jsonl_texts(item, json_key)
        else:
            raise DataError(f"input {item}: unsupported file type; use one of {TEXT_SUFFIXES}")


def _batches(texts: Iterator[str], size: int, max_chars: int = 1 << 18) -> Iterator[List[str]]:
    """Groups of up to ``size`` documents, cut early at ``max_chars`` so that a corpus of a few
    long documents (books) still spreads over the workers."""
    batch, chars = [], 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if len(batch) == size or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode(texts: List[str]) -> List[List[int]]:
    return _TOKENIZER(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _quiet_worker() -> None:
    # each worker is one process: no extra tokenizer threads fighting over the cores
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _encoded_batches(batches: Iterator[List[str]], workers: int) -> Iterator[List[List[int]]]:
    """Token ids per batch, in input order; batches are read in this process (so read errors
    surface here, in order) and encoded by up to ``workers`` forked processes."""
    if workers <= 1:
        yield from map(_encode, batches)
        return
    with multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker) as pool:
        pending = collections.deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode, (batch,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def preprocess(input_path: str, tokenizer_path: str, output_prefix: str, *, workers: int = 1,
               json_key: str = "text", append_eod: bool = True, batch_size: int = 64,
               progress: Optional[bool] = None) -> PreprocessResult:
    """Tokenise ``input_path`` into ``output_prefix``.bin/.idx; all-or-nothing on errors.

    ``progress=None`` shows the tqdm bar only when stderr is a terminal.
    """
    from tqdm import tqdm

    global _TOKENIZER
    if workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")
    texts = iter_texts(input_path, json_key)
    first = next(texts, None)
    if first is None:
        raise DataError(f"input {input_path} holds no documents")
    # imported only now: megatron-core and transformers take seconds; a bad input fails first
    from megakd.data.indexed import check_writable, write_indexed
    from megakd.data.tokenizer import load_tokenizer

    check_writable(output_prefix)
    tokenizer = load_tokenizer(tokenizer_path)
    eod = tokenizer.eos_token_id
    if append_eod and eod is None:
        raise DataError(f"tokenizer {tokenizer_path} has no EOS token to append as end-of-document;"
                        " use a tokenizer with an eos_token or pass --no-append-eod")

    _TOKENIZER = tokenizer
    start = time.perf_counter()
    bar = tqdm(unit="doc", desc="tokenising", disable=None if progress is None else not progress)
    tokens = 0

    def documents():
        nonlocal tokens
        all_texts = itertools.chain([first], texts)
        for ids_batch in _encoded_batches(_batches(all_texts, batch_size), workers):
            for ids in ids_batch:
                if append_eod:
                    ids.append(eod)
                tokens += len(ids)
                yield ids
            bar.update(len(ids_batch))
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - start, 1e-9):,.0f} tok/s")

    try:
        stats = write_indexed(output_prefix, documents(), vocab_size=len(tokenizer))
    finally:
        bar.close()
        _TOKENIZER = None
    return PreprocessResult(output_prefix, stats.documents, stats.tokens,
                            time.perf_counter() - start)
