"""Tiny data for tests: a byte-level BPE tokenizer and small corpora, built in a few seconds.

Import these from any test: ``from tests.fixtures_data import make_tiny_tokenizer, make_jsonl``
(or ``from fixtures_data import ...`` when tests/ is on sys.path).
"""

import json
import os

# Documents that exercise exact round trips: unicode, leading/trailing/multiple spaces, tabs,
# newlines, an empty line, punctuation that "clean up tokenization spaces" would alter.
TINY_TEXTS = [
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "  The slings and arrows of outrageous fortune ,\tor to take arms . ",
    "Ünïcödé ok: naïve café, 日本語, emoji 🙂 and a trailing newline\n",
    "\n\nBlank lines first, then text. Don't , won't .",
    "The quick brown fox jumps over the lazy dog. " * 5,
    "x",
]


def make_tiny_tokenizer(out_dir, texts=None, vocab_size=300) -> str:
    """Train and save a tiny byte-level BPE tokenizer (EOS ``<|endoftext|>``, id 0)."""
    from megakd.data.tokenizer import build_tiny_tokenizer

    corpus = list(texts if texts is not None else TINY_TEXTS)
    return build_tiny_tokenizer(corpus * 4, os.fspath(out_dir), vocab_size=vocab_size)


def make_jsonl(path, texts=None, key="text") -> str:
    """Write one JSON object per line, the text under ``key``."""
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        for text in texts if texts is not None else TINY_TEXTS:
            f.write(json.dumps({key: text, "id": len(text)}, ensure_ascii=False) + "\n")
    return path


def make_parquet(path, texts=None, key="text") -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.fspath(path)
    pq.write_table(pa.table({key: list(texts if texts is not None else TINY_TEXTS)}), path)
    return path


def make_txt_dir(folder, texts=None) -> str:
    """One .txt file per document, named so that sorted order is the input order."""
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    for i, text in enumerate(texts if texts is not None else TINY_TEXTS):
        with open(os.path.join(folder, f"doc{i:04d}.txt"), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return folder


def make_saved_dataset(folder, texts=None, key="text") -> str:
    """A ``datasets.Dataset.save_to_disk`` directory."""
    import datasets

    folder = os.fspath(folder)
    rows = {key: list(texts if texts is not None else TINY_TEXTS)}
    datasets.Dataset.from_dict(rows).save_to_disk(folder)
    return folder
