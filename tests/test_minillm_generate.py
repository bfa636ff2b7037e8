"""KV-cache generation (megatron-core StaticInferenceContext) against a cache-free full forward."""

import math

import pytest
import torch

from megakd.minillm.generate import generate, top_p_filter


@pytest.fixture(scope="module")
def model():
    from megakd.config import ModelConfig, ParallelConfig
    from megakd.convert.convert import single_process
    from megakd.models import build_model

    with single_process():
        torch.manual_seed(0)
        yield build_model(ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4,
                                      num_query_groups=2), ParallelConfig(), 200, 64).eval()


def test_cached_greedy_generation_equals_full_forward(model):
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12], [3, 4, 5, 6, 7, 8, 9, 10]]
    s = generate([model], prompts, vocab_size=190, eos=0, max_new_tokens=8, greedy=True)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            seq, logps = list(p), []
            for _ in range(8):
                lp = torch.log_softmax(model(torch.tensor([seq]), torch.arange(len(seq))[None], None)[0, -1, :190], -1)
                seq.append(int(lp.argmax()))
                logps.append(float(lp.max()))
            n = len(p)
            assert s.tokens[i, :n + 8].tolist() == seq
            assert s.response_mask[i].nonzero().squeeze(1).tolist() == list(range(n, n + 8))
            assert s.sample_logprob[i, n:n + 8].tolist() == pytest.approx(logps, abs=1e-4)


def test_generation_stops_at_eos_and_mixes_models(model):
    greedy = generate([model], [[5, 6, 7]], vocab_size=190, eos=0, max_new_tokens=6, greedy=True)
    answer = greedy.responses()[0]
    eos = answer[1]  # treat the second generated token as EOS
    s = generate([model], [[5, 6, 7], [5, 6, 7, 8, 9, 10, 11]], vocab_size=190, eos=eos,
                 max_new_tokens=6, greedy=True)
    assert s.responses()[0] == answer[:answer.index(eos) + 1]
    # mixing a model with itself is the model: same draws, same log-probs
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = generate([model], [[5, 6, 7]], vocab_size=190, eos=0, max_new_tokens=5, generator=g1)
    b = generate([model, model], [[5, 6, 7]], vocab_size=190, eos=0, max_new_tokens=5, mix=0.2, generator=g2)
    assert a.tokens.tolist() == b.tokens.tolist()
    torch.testing.assert_close(a.sample_logprob, b.sample_logprob, atol=1e-5, rtol=0)


def test_top_p_filter_keeps_the_nucleus():
    lp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = top_p_filter(lp, 0.7).exp()
    torch.testing.assert_close(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert top_p_filter(lp, 0.4).exp()[0, 0] == pytest.approx(1.0)
    assert math.isclose(float(top_p_filter(lp, 1.0).exp().sum()), 1.0, rel_tol=1e-6)
