"""Offline teacher-logits store: codec bound, ids beyond 2^17, lookup by (document, offset),
one-line errors for a wrong dataset / damaged store, and tools/dump_teacher_logits.py."""

import os

import numpy as np
import pytest

from megakd.data.logits_store import StoreError, open_store, write_store
from megakd.data.logits_store.codec import decode_block, encode_block
from megakd.data.logits_store.store import IdRanks, rows_of


def _random_rows(rng, n, k_max, vocab, peaked=False):
    """Per position a random id set of 1..k_max ids (distinct) with sorted random log-probs."""
    ids, lps = [], []
    for _ in range(n):
        k = int(rng.integers(1, k_max + 1))
        i = rng.choice(vocab, k, replace=False)
        z = rng.standard_normal(k) * (4.0 if peaked else 1.5)
        lp = z - np.log(np.exp(z).sum())
        ids.append(i.astype(np.int64))
        lps.append(lp)
    return ids, lps


def _kl_rows(ref_ids, ref_lps, ids, lps):
    """Per row KL(stored || exact) after checking both hold the same id set."""
    out = []
    for ri, rl, i, lp in zip(ref_ids, ref_lps, ids, lps):
        used = np.isfinite(lp)
        got = dict(zip(i[used].tolist(), lp[used].astype(np.float64)))
        want = dict(zip(ri.tolist(), rl))
        assert got.keys() == want.keys()
        out.append(sum(np.exp(got[j]) * (got[j] - want[j]) for j in got))
    return np.array(out)


@pytest.mark.parametrize("max_kl", [1e-3, 1e-5])
def test_codec_round_trip_within_kl_bound_and_ids_beyond_2_17(max_kl):
    rng = np.random.default_rng(0)
    vocab = 1 << 32
    ids, lps = _random_rows(rng, 600, 100, 300_000)
    ids = [np.where(i % 3 == 0, i + vocab - 300_000, i) for i in ids]  # ids up to 2^32 - 1
    ids[0] = np.array([vocab - 1, 131072, 131073, 0])
    lps[0] = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    rows = rows_of(ids, lps)
    ranks = IdRanks(rng.permutation(200_000))  # a frequency table that misses most ids
    dec = decode_block(encode_block(rows, ranks.rank_of, max_kl), ranks.id_of)
    np.testing.assert_array_equal(dec.counts, rows.counts)
    st = dec.starts
    kl = _kl_rows(ids, lps, [dec.ids[a:b] for a, b in zip(st[:-1], st[1:])],
                  [dec.logprobs[a:b] for a, b in zip(st[:-1], st[1:])])
    assert kl.max() <= max_kl * (1 + 1e-4) and kl.min() >= -1e-9
    assert dec.logprobs.dtype == np.float32


def _store_rows(corpus_prefix, seed=0, k=8, vocab=256):
    from megakd.data.indexed import document_lengths

    lengths = document_lengths(corpus_prefix)
    rng = np.random.default_rng(seed)
    return [(d, *_random_rows(rng, int(n), k, vocab, peaked=True)) for d, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def written_store(tiny_corpus, tmp_path_factory):
    _, prefix = tiny_corpus
    docs = _store_rows(prefix)
    out = str(tmp_path_factory.mktemp("store") / "store")
    write_store(out, prefix, docs, vocab_size=256, top_k=8, block_rows=300, shard_tokens=5000)
    return out, docs


def test_write_then_lookup_any_positions(written_store, tiny_corpus):
    out, docs = written_store
    store = open_store(out, tiny_corpus[1])
    assert store.meta.top_k == 8 and store.meta.num_docs == len(docs) and store.num_blocks > 4
    rng = np.random.default_rng(1)
    d = rng.integers(0, len(docs), 500)
    o = np.array([rng.integers(0, len(docs[i][1])) for i in d])
    ids, lps = store.lookup(d, o)
    assert ids.shape == (500, 8) and ids.dtype == np.int64 and lps.dtype == np.float32
    assert (ids[~np.isfinite(lps)] == 0).all()
    kl = _kl_rows([docs[i][1][j] for i, j in zip(d, o)], [docs[i][2][j] for i, j in zip(d, o)],
                  ids, lps)
    assert kl.max() <= 1e-3 * (1 + 1e-4)
    # stored rows are sorted by probability
    assert (np.diff(np.where(np.isfinite(lps), lps, -1e30), axis=1) <= 1e-6).all()


def test_wrong_dataset_and_damaged_store_are_one_line_errors(written_store, tiny_corpus, tmp_path):
    import shutil

    from megakd.data.indexed import write_indexed

    out, _ = written_store
    other = str(tmp_path / "other")
    write_indexed(other, [[1, 2, 3], [4, 5]], 256)
    with pytest.raises(StoreError, match="was dumped from dataset .* not .*--data-prefix " + other):
        open_store(out, other)
    with pytest.raises(StoreError, match="does not exist"):
        open_store(str(tmp_path / "nowhere"), tiny_corpus[1])
    with pytest.raises(StoreError, match="not a logits store"):
        open_store(str(tmp_path), tiny_corpus[1])
    bad = str(tmp_path / "bad")
    shutil.copytree(out, bad)
    shard = os.path.join(bad, "shard-000001.bin")
    with open(shard, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    store = open_store(bad, tiny_corpus[1])
    first = store.meta.num_docs - 1
    with pytest.raises(StoreError, match="shard-000001.bin is corrupt .*checksum") as e:
        for doc in range(store.meta.num_docs):
            store.lookup([doc], [0])
    assert "\n" not in str(e.value)
    assert first
    os.remove(os.path.join(bad, "store.json"))
    with pytest.raises(StoreError, match="incomplete"):
        open_store(bad, tiny_corpus[1])
