"""Shared fixtures: a tiny tokenizer and a tiny indexed corpus, built once per session."""

import os
import random
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WORDS = ("the of and to in a is that for it as was with be by on not he I this are or his from at "
         "which but have an they you were her she there had been one all we their would when what "
         "king queen lord love night day sword crown blood heart death life time world man woman "
         "speak hear see know think come go make take give tell call find keep stand fall rise").split()


def synthetic_texts(n_docs: int, seed: int = 0):
    """Deterministic pseudo-English documents of varied length (a Zipf-ish word mix)."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(WORDS))]
    docs = []
    for _ in range(n_docs):
        n = rng.randint(20, 200)
        words = rng.choices(WORDS, weights, k=n)
        docs.append(" ".join(words).capitalize() + ".")
    return docs


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """(tokenizer_dir, data_prefix) of a ~20k-token synthetic corpus."""
    from megakd.data.indexed import write_indexed
    from megakd.data.tokenizer import MegatronTokenizer, build_tiny_tokenizer, load_tokenizer

    root = tmp_path_factory.mktemp("corpus")
    texts = synthetic_texts(300)
    tok_dir = build_tiny_tokenizer(texts, str(root / "tokenizer"), vocab_size=256)
    tok = MegatronTokenizer(load_tokenizer(tok_dir))
    prefix = str(root / "synthetic_text_document")
    write_indexed(prefix, (tok.tokenize(t) + [tok.eod] for t in texts), tok.vocab_size)
    return tok_dir, prefix


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pytest_collection_modifyitems(config, items):
    """The GPU tier: `gpu` tests need one CUDA device, `multigpu` tests two; elsewhere they are
    skipped with the reason (pytest -ra prints it)."""
    n = cuda_devices()
    for item in items:
        if "multigpu" in item.keywords and n < 2:
            item.add_marker(pytest.mark.skip(reason=f"multigpu: needs 2+ CUDA GPUs, this machine has {n}"))
        elif "gpu" in item.keywords and n < 1:
            item.add_marker(pytest.mark.skip(reason="gpu: needs a CUDA GPU, this machine has none"))
