"""Batched sampling from megatron-core GPTModels with a KV cache (`StaticInferenceContext`).

Prompts of different lengths share one batch the way Megatron-LM's text generation does it: the
common prefix is prefilled at once, then every step feeds one token per row, the row's own prompt
token while it is still inside its prompt and a sampled one after. No padding, no attention mask.

Several models can step together (MiniLLM's teacher-mixed sampling p~ = a*p_teacher + (1-a)*q);
each has its own KV cache. In inference mode megatron-core gathers the TP vocab shards of the last
position ([b, V] per step); the token drawn on TP rank 0 is broadcast, so every TP rank holds the
same sequences. Every tensor lives on the device of models[0], and so must the sampling generators
(`seeded`): torch.multinomial draws with a generator of its probabilities' device.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
from megatron.core import parallel_state as ps
from megatron.core.inference.contexts import StaticInferenceContext

from megakd import platform
from megakd.platform import comm


def seeded(seed: int, device: Optional[torch.device] = None) -> torch.Generator:
    """A sampling generator on `device` (default: this process's, where the models compute): on CPU
    the stream of torch.Generator().manual_seed(seed); a CUDA generator's stream is its own."""
    return torch.Generator(device=device or platform.device()).manual_seed(seed)


@dataclass
class Samples:
    """A generated batch. tokens [b, S] = prompt + response (+ eos pad); response_mask marks the
    sampled positions (the EOS that ended a response included); sample_logprob = log of the
    probability the sampler drew each sampled token with (0 elsewhere)."""

    tokens: torch.Tensor
    prompt_lengths: torch.Tensor
    response_mask: torch.Tensor
    sample_logprob: torch.Tensor

    def responses(self) -> List[List[int]]:
        return [row[m].tolist() for row, m in zip(self.tokens, self.response_mask.bool())]


def top_p_filter(logprobs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (the top token always), renormalise."""
    if top_p >= 1.0:
        return logprobs
    sorted_lp, order = logprobs.sort(dim=-1, descending=True)
    before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass of the strictly better tokens
    drop = torch.zeros_like(logprobs, dtype=torch.bool).scatter(-1, order, before >= top_p)
    kept = logprobs.masked_fill(drop, float("-inf"))
    return kept - kept.logsumexp(-1, keepdim=True)


def next_token_logprobs(logits: torch.Tensor, vocab_size: int, temperature: float) -> torch.Tensor:
    """Log-softmax of full-vocab logits [b, V_padded] at temperature T (Megatron's padding ids
    beyond the tokenizer's vocab get probability 0)."""
    return torch.log_softmax(logits[:, :vocab_size].float() / temperature, dim=-1)


@torch.no_grad()
def generate(models: Sequence, prompts: Sequence[Sequence[int]], *, vocab_size: int, eos: int,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
             mix: Optional[float] = None,
             generator: Union[torch.Generator, Sequence[torch.Generator], None] = None,
             greedy: bool = False) -> Samples:
    """Sample a response for every prompt from models[0], or from mix*models[1] + (1-mix)*models[0]
    (probabilities, each at `temperature`; top_p applied to the mixture). Stops at EOS.

    `generator`: one for the batch, or one per prompt (then a prompt's answer does not depend on
    which batch or rank it is generated in)."""
    device = next(models[0].parameters()).device
    _check_generators(generator, device)
    b = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    if int(lengths.min()) < 1:
        raise ValueError("every prompt needs at least one token")
    total = int(lengths.max()) + max_new_tokens
    tokens = torch.full((b, total), eos, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = torch.as_tensor(list(p), dtype=torch.long, device=device)
    response = torch.zeros((b, total), dtype=torch.bool, device=device)
    sample_lp = torch.zeros((b, total), dtype=torch.float32, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    positions = torch.arange(total, device=device).unsqueeze(0).expand(b, -1)
    contexts = [StaticInferenceContext(b, total) for _ in models]
    training = [m.training for m in models]
    for m in models:
        m.eval()
    tp_group = ps.get_tensor_model_parallel_group()
    src = ps.get_tensor_model_parallel_src_rank()
    if mix is not None:
        a = torch.tensor(mix, device=device)
        log_mix = (torch.log(a), torch.log1p(-a))  # teacher, student
    try:
        start = int(lengths.min())
        prev = 0
        for pos in range(start, total):
            # logits for position `pos` from every model, feeding tokens[prev:pos]
            step = []
            for model, ctx in zip(models, contexts):
                if prev:
                    ctx.enable_decode_mode()
                logits = model(tokens[:, prev:pos], positions[:, prev:pos], None, inference_context=ctx,
                               runtime_gather_output=True)  # megatron gathers TP logits in inference
                ctx.sequence_len_offset += pos - prev
                step.append(next_token_logprobs(logits[:, -1], vocab_size, temperature))
            prev = pos
            if mix is None:
                logprobs = step[0]
            else:
                logprobs = torch.logaddexp(step[1] + log_mix[0], step[0] + log_mix[1])
            logprobs = top_p_filter(logprobs, top_p)
            if greedy:
                drawn = logprobs.argmax(-1)
            else:
                drawn = _draw(logprobs.exp(), generator)
            if ps.get_tensor_model_parallel_world_size() > 1:
                comm.broadcast(drawn, src, group=tp_group)
            sampling = (pos >= lengths) & ~done
            tokens[:, pos] = torch.where(sampling, drawn, tokens[:, pos])
            response[:, pos] = sampling
            sample_lp[:, pos] = torch.where(sampling, logprobs.gather(1, drawn[:, None]).squeeze(1), 0.0)
            done |= sampling & ((drawn == eos) | (pos + 1 >= lengths + max_new_tokens))
            if bool(done.all()):
                break
    finally:
        for m, was in zip(models, training):
            m.train(was)
    end = pos + 1
    return Samples(tokens[:, :end], lengths, response[:, :end], sample_lp[:, :end])


def _check_generators(generator, device: torch.device) -> None:
    """Fail up front, naming the fix: torch.multinomial rejects a generator of another device."""
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator or [])
    wrong = {str(g.device) for g in gens if g.device != device}
    if wrong:
        raise ValueError(f"sampling generators on {', '.join(sorted(wrong))} for a model on {device}: "
                         f"make them on the model's device (megakd.minillm.generate.seeded)")


def _draw(probs: torch.Tensor, generator) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generator)])


def answer_all(model, prompts: Sequence[Sequence[int]], *, batch_size: int, **sampling) -> List[List[int]]:
    """Responses (token ids, EOS included when reached) to every prompt, `batch_size` at a time;
    `sampling`: generate's keyword arguments."""
    out = []
    for i in range(0, len(prompts), batch_size):
        out += generate([model], prompts[i:i + batch_size], **sampling).responses()
    return out
