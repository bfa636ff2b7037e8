"""Held-out evaluation: exact reverse KL of the student to the teacher, and Rouge-L of generations.

Examples are split over data-parallel ranks and the sums all-reduced, so every rank returns the same
numbers. The reverse KL is per response token, exact over the vocabulary (vocab-parallel):
- `rkl_reference`: teacher-forced on the reference responses;
- `rkl_sampled`: along the student's own samples (fixed seed), the quantity MiniLLM minimises.
"""

from typing import Dict, List, Sequence

import torch
from megatron.core import parallel_state as ps

from megakd import platform
from megakd.minillm.data import Example, collate, to_device
from megakd.minillm.generate import answer_all, generate, seeded
from megakd.minillm.losses import real_vocab, single_step_kl
from megakd.platform import comm


def dp_share(items: Sequence, dp_rank: int, dp_size: int) -> list:
    return list(items[dp_rank::dp_size])


def _sum_over_dp(values: List[float]) -> List[float]:
    return comm.all_reduce(torch.tensor(values, dtype=torch.float64),
                           group=ps.get_data_parallel_group()).tolist()


@torch.no_grad()
def reverse_kl(student, teacher, batch: Dict[str, torch.Tensor], mask: torch.Tensor,
               vocab_size: int) -> torch.Tensor:
    """Sum over masked positions of the exact KL(q_student || p_teacher) of the next token, both
    over the tokenizer's vocabulary."""
    tokens, positions = batch["tokens"], batch["position_ids"]
    q = real_vocab(student(tokens, positions, None), vocab_size)
    p = real_vocab(teacher(tokens, positions, None), vocab_size)
    kl = single_step_kl(q, p, mask, ps.get_tensor_model_parallel_group())
    return (kl * mask).sum()


def _eval_mode(*models):
    was = [m.training for m in models]
    for m in models:
        m.eval()
    return was


def evaluate(student, teacher, examples: Sequence[Example], *, vocab_size: int, eos: int,
             max_new_tokens: int, batch_size: int, seed: int) -> Dict[str, float]:
    """rkl_reference, rkl_sampled and the mean sampled response length over `examples`."""
    was = _eval_mode(student, teacher)
    mine = dp_share(examples, ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())
    device = platform.device()
    gen = seeded(seed, device)
    ref_kl = ref_n = smp_kl = smp_n = n_resp = 0.0
    for i in range(0, len(mine), batch_size):
        chunk = mine[i:i + batch_size]
        batch = to_device(collate(chunk, eos), device)
        ref_kl += float(reverse_kl(student, teacher, batch, batch["loss_mask"], vocab_size))
        ref_n += float(batch["loss_mask"].sum())
        s = generate([student], [p for p, _ in chunk], vocab_size=vocab_size, eos=eos,
                     max_new_tokens=max_new_tokens, generator=gen)
        mask = s.response_mask[:, 1:].float()
        pos = torch.arange(s.tokens.shape[1] - 1, device=device).unsqueeze(0).expand(len(chunk), -1)
        smp_kl += float(reverse_kl(student, teacher, {"tokens": s.tokens[:, :-1], "position_ids": pos},
                                   mask, vocab_size))
        smp_n += float(mask.sum())
        n_resp += len(chunk)
    for m, w in zip((student, teacher), was):
        m.train(w)
    ref_kl, ref_n, smp_kl, smp_n, n_resp = _sum_over_dp([ref_kl, ref_n, smp_kl, smp_n, n_resp])
    return {"rkl_reference": ref_kl / max(ref_n, 1), "rkl_sampled": smp_kl / max(smp_n, 1),
            "response_length": smp_n / max(n_resp, 1)}


def rouge_l_sum(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Sum of Rouge-L F1 (package rouge-score, stemming on, as MiniLLM reports it)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references))


@torch.no_grad()
def generation_rouge(student, tokenizer, examples: Sequence[Example], references: Sequence[str], *,
                     max_new_tokens: int, batch_size: int, seeds: Sequence[int], temperature: float = 1.0,
                     top_p: float = 1.0) -> Dict[str, float]:
    """Rouge-L of sampled answers vs references, one score per seed and their mean (every rank)."""
    was = _eval_mode(student)
    dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    mine, refs = dp_share(examples, dp_rank, dp_size), dp_share(references, dp_rank, dp_size)
    out = {}
    for seed in seeds:
        gen = seeded(seed)
        answers = answer_all(student, [p for p, _ in mine], batch_size=batch_size,
                             vocab_size=tokenizer.vocab_size, eos=tokenizer.eod,
                             max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             generator=gen)
        predictions = [tokenizer.detokenize([t for t in ids if t != tokenizer.eod]) for ids in answers]
        total = _sum_over_dp([rouge_l_sum(predictions, refs)])[0]
        out[f"rougeL_seed{seed}"] = 100.0 * total / len(examples)
    student.train(was[0])
    out["rougeL"] = sum(out[f"rougeL_seed{s}"] for s in seeds) / len(seeds)
    return out
