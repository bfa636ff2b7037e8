"""GPTDataset wiring: weighted blends, and DP slicing of the deterministic sample stream."""

import shutil

import pytest
import torch

from megakd.config import load_config
from megakd.data.blend import parse_blend
from megakd.data.gpt import BatchStream, build_datasets
from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
from megakd.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    """megatron-core's BlendedDataset asks torch.distributed for the rank."""
    from megakd import platform

    platform.init_distributed()
    yield
    platform.destroy()


def test_parse_blend_forms():
    assert parse_blend("p") == (["p"], None)
    assert parse_blend(["a", "b"]) == (["a", "b"], None)
    assert parse_blend([0.25, "a", 0.75, "b"]) == (["a", "b"], [0.25, 0.75])
    with pytest.raises(ConfigError, match="blend"):
        parse_blend([0.5, "a", "b"])
    with pytest.raises(ConfigError, match="positive"):
        parse_blend([0.0, "a", 1.0, "b"])


def _cfg(prefix, tok_dir, tmp_path):
    return load_config(None, [f"data.prefix={prefix}", f"data.tokenizer={tok_dir}",
                              f"data.cache_dir={tmp_path}/cache", "train.seq_length=32"])


def test_weighted_blend_draws_from_both(tiny_corpus, tmp_path):
    tok_dir, prefix = tiny_corpus
    other = str(tmp_path / "other")
    for ext in (".bin", ".idx"):
        shutil.copy(prefix + ext, other + ext)
    cfg = _cfg(f"[0.5, {prefix}, 0.5, {other}]", tok_dir, tmp_path)
    tok = MegatronTokenizer(load_tokenizer(tok_dir))
    train, valid = build_datasets(cfg, tok, 64, 8)
    assert len(train) >= 64 and len(valid) >= 8
    picked = {int(train.dataset_index[i]) for i in range(64)}
    assert picked == {0, 1}
    sample = train[0]
    assert sample["tokens"].shape == (32,) and torch.equal(sample["tokens"][1:], sample["labels"][:-1])


def test_dp_ranks_partition_the_global_batch(tiny_corpus, tmp_path):
    tok_dir, prefix = tiny_corpus
    cfg = _cfg(prefix, tok_dir, tmp_path)
    train, _ = build_datasets(cfg, MegatronTokenizer(load_tokenizer(tok_dir)), 64, 1)
    mbs, steps = 2, 3

    def take(dp_rank, dp_size, n, start=0):
        it = iter(BatchStream(train, mbs, dp_rank, dp_size, start))
        return [next(it)["tokens"] for _ in range(n)]

    # DP=1 reads micro-batches 0,1,2,3 of a step; DP=2 rank r reads the r-th of each pair
    single = take(0, 1, 2 * steps)
    r0, r1 = take(0, 2, steps), take(1, 2, steps)
    for i in range(steps):
        assert torch.equal(r0[i], single[2 * i]) and torch.equal(r1[i], single[2 * i + 1])
    # resuming at consumed_samples continues the same stream
    assert torch.equal(take(0, 1, 1, start=2 * mbs)[0], single[2])


def test_empty_split_is_an_error_not_a_hang(tiny_corpus, tmp_path):
    from megakd.errors import DataError

    tok_dir, prefix = tiny_corpus
    cfg = load_config(None, [f"data.prefix={prefix}", f"data.tokenizer={tok_dir}",
                             "data.split=100,0,0", f"data.cache_dir={tmp_path}"])
    tok = MegatronTokenizer(load_tokenizer(tok_dir))
    with pytest.raises(DataError, match="leaves the valid split .* empty"):
        build_datasets(cfg, tok, 8, 8)
    train, valid = build_datasets(cfg, tok, 8, 0)  # no validation wanted: fine
    assert len(train) >= 8 and valid is None
    # a positive share that rounds to zero documents must not hang when no validation is wanted
    cfg = load_config(None, [f"data.prefix={prefix}", f"data.tokenizer={tok_dir}",
                             "data.split=99.9,0.1,0", f"data.cache_dir={tmp_path}"])
    train, valid = build_datasets(cfg, tok, 8, 0)
    assert len(train) >= 8 and valid is None
