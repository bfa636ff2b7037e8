"""MiniLLM on a CUDA GPU (the `gpu` tier; skipped without one): training in bf16, and KV-cache
sampling with generators on the device of the probabilities."""

import pytest
import torch

from test_minillm_generate import model  # noqa: F401  (fixture: a tiny fp32 GPTModel, built on CUDA here)
from test_minillm_training import bf16_minillm_run, models, task  # noqa: F401  (fixtures)

from megakd.minillm.generate import generate, seeded

pytestmark = pytest.mark.gpu

PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [3, 4, 5, 6, 7, 8, 9, 10]]


def test_minillm_bf16_training_on_cuda(task, models, tmp_path):  # noqa: F811
    """Batches, rollouts (teacher-mixed), the LM term and evaluation on CUDA/NCCL, a bf16 student."""
    bf16_minillm_run(task, models, tmp_path)


def full_forward_logprobs(model, tokens: torch.Tensor) -> torch.Tensor:
    """log q(tokens[t] | tokens[:t]) [S-1] of one sequence, cache-free."""
    with torch.no_grad():
        pos = torch.arange(len(tokens), device=tokens.device)[None]
        lp = torch.log_softmax(model(tokens[None], pos, None)[0, :-1, :190].float(), -1)
    return lp.gather(1, tokens[1:, None]).squeeze(1)


def test_cached_generation_on_cuda_equals_full_forward(model):  # noqa: F811
    """Greedy: each token is the argmax of a cache-free forward. Sampled (per-prompt generators):
    every drawn token's log-prob is the cache-free one."""
    assert next(model.parameters()).is_cuda
    dev = next(model.parameters()).device
    greedy = generate([model], PROMPTS, vocab_size=190, eos=0, max_new_tokens=8, greedy=True)
    assert greedy.tokens.is_cuda
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            seq = list(p)
            for _ in range(8):
                logits = model(torch.tensor([seq], device=dev), torch.arange(len(seq), device=dev)[None], None)
                seq.append(int(logits[0, -1, :190].argmax()))
                if seq[-1] == 0:  # EOS ends the response
                    break
            assert greedy.responses()[i] == seq[len(p):]
    s = generate([model], PROMPTS, vocab_size=190, eos=0, max_new_tokens=8,
                 generator=[seeded(10 + i, dev) for i in range(len(PROMPTS))])
    for row, mask, lp in zip(s.tokens, s.response_mask, s.sample_logprob):
        want = full_forward_logprobs(model, row)[mask[1:]]
        torch.testing.assert_close(lp[mask], want, atol=1e-4, rtol=0)


def test_seeded_sampling_on_cuda_is_reproducible(model):  # noqa: F811
    """Same seeds, same samples; a prompt's answer does not depend on its batch; mixing a model with
    itself samples as the model; a CPU generator is refused up front."""
    dev = next(model.parameters()).device

    def sample(prompts, seeds, **kw):
        return generate([model] * (2 if "mix" in kw else 1), prompts, vocab_size=190, eos=0, max_new_tokens=8,
                        generator=[seeded(s, dev) for s in seeds], **kw)

    a, b = sample(PROMPTS, [1, 2, 3]), sample(PROMPTS, [1, 2, 3])
    assert a.tokens.tolist() == b.tokens.tolist()
    torch.testing.assert_close(a.sample_logprob, b.sample_logprob, atol=0, rtol=0)
    assert sample(PROMPTS[1:2], [2]).responses() == a.responses()[1:2]
    mixed = sample(PROMPTS, [1, 2, 3], mix=0.2)
    assert mixed.tokens.tolist() == a.tokens.tolist()
    with pytest.raises(ValueError, match="make them on the model's device"):
        generate([model], PROMPTS, vocab_size=190, eos=0, max_new_tokens=2, generator=torch.Generator())
