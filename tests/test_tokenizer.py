"""Local tokenizer loading, vocab fingerprints and the megatron-core adapter."""

import json

import numpy
import pytest
from fixtures_data import TINY_TEXTS, make_tiny_tokenizer

from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer, vocab_fingerprint
from megakd.errors import DataError


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_fingerprint_stable_across_reloads_and_rebuilds(tok_dir, tmp_path):
    fp = vocab_fingerprint(load_tokenizer(tok_dir))
    assert fp == vocab_fingerprint(load_tokenizer(tok_dir))
    assert fp == vocab_fingerprint(load_tokenizer(make_tiny_tokenizer(tmp_path / "again")))


def test_fingerprint_differs_between_tokenizers(tok_dir, tmp_path):
    other = make_tiny_tokenizer(tmp_path / "other", vocab_size=290)
    assert vocab_fingerprint(load_tokenizer(tok_dir)) != vocab_fingerprint(load_tokenizer(other))


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "not_gguf_file", "corrupt_gguf"])
def test_load_tokenizer_errors_are_one_line(tmp_path, kind):
    path = tmp_path / ("tok.gguf" if kind == "corrupt_gguf" else "tok")
    if kind == "empty_dir":
        path.mkdir()
    elif kind in ("not_gguf_file", "corrupt_gguf"):
        path.write_text("hello")
    with pytest.raises(DataError) as err:
        load_tokenizer(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_megatron_adapter_round_trip_and_ids(tok_dir):
    hf = load_tokenizer(tok_dir)
    tok = MegatronTokenizer(hf)
    assert tok.vocab_size == len(hf) == 300
    assert tok.eod == tok.eos == hf.convert_tokens_to_ids("<|endoftext|>") == 0
    assert tok.pad == -1  # no pad of its own: megatron-core's "never in the data" id
    for text in TINY_TEXTS:
        assert tok.detokenize(tok.tokenize(text)) == text
    json.dumps(tok.unique_identifiers)  # megatron-core hashes it into its dataset cache key


def test_megatron_adapter_needs_an_eod(tok_dir):
    hf = load_tokenizer(tok_dir)
    hf.eos_token = None
    with pytest.raises(DataError, match="eod"):
        MegatronTokenizer(hf)
    assert MegatronTokenizer(hf, eod=5).eod == 5


def test_gpt_dataset_accepts_the_adapter(tok_dir, tmp_path):
    """megatron-core's GPTDataset builds samples from our indexed files with our tokenizer."""
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.utils import Split

    from megakd.data.indexed import open_indexed, write_indexed

    tok = MegatronTokenizer(load_tokenizer(tok_dir))
    docs = [tok.tokenize(t) + [tok.eod] for t in TINY_TEXTS]
    write_indexed(str(tmp_path / "d"), docs, tok.vocab_size)
    config = GPTDatasetConfig(
        random_seed=1, sequence_length=16, tokenizer=tok, reset_position_ids=False,
        reset_attention_mask=False, eod_mask_loss=False, split="1,0,0",
        path_to_cache=str(tmp_path / "cache"))
    indexed = open_indexed(str(tmp_path / "d"))
    ds = GPTDataset(indexed, str(tmp_path / "d"), numpy.arange(len(docs)), None, Split.train,
                    config)
    sample = ds[0]
    assert sample["tokens"].shape == (16,) and int(sample["tokens"].max()) < tok.vocab_size
