"""Forward-only use of a model: load a checkpoint for inference, per-token NLL of token sequences.

A neutral service for every feature that scores text with a model (MiniPLM scoring, held-out
evaluation, the teacher-logits dump): none of them borrows these from another.

`load_for_inference`: any megakd dist checkpoint (trained by examples/pretrain_pd.py or converted from
Hugging Face), at any saved TP/PP, built from the checkpoint's config; the building and loading itself
is megakd.convert.load_checkpoint_model, shared with the converter.

The per-token NLL comes from megatron-core's GPTModel called with ``labels=`` (vocab-parallel cross
entropy: nothing gathers the full vocabulary, so TP > 1 just works).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy
import torch

from megakd.config import ModelConfig, ParallelConfig, from_dict


@dataclass
class LoadedModel:
    model: torch.nn.Module
    path: str  # the iter_* directory that was loaded
    config: ModelConfig
    vocab_size: int  # the tokenizer's (unpadded) vocabulary size
    max_length: Optional[int]  # longest input the model was built for (learned positions), None for RoPE
    iteration: int


def load_for_inference(path: str, tp: int = 1, pp: int = 1) -> LoadedModel:
    """Build the checkpoint's model for this rank (parallel_state must be initialised at tp x pp),
    load its weights and switch it to eval mode."""
    # here, not at the top: importing this module (e.g. for a CLI's argument check) stays free of megatron
    from megakd import checkpoint
    from megakd.convert import load_checkpoint_model

    model, common = load_checkpoint_model(path, ParallelConfig(tp=tp, pp=pp))
    model.eval()
    cfg = common["config"]
    mcfg = from_dict(ModelConfig, cfg["model"])
    seq = mcfg.max_position_embeddings or cfg["train"]["seq_length"]
    return LoadedModel(model, checkpoint.resolve(path), mcfg, int(common["vocab_size"]),
                       seq if mcfg.arch == "gpt2" else None, int(common.get("iteration", 0)))


def right_pad(seqs: List[numpy.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token sequences -> (tokens, position ids), both long [b, longest], tokens right-padded with 0."""
    width = max(len(x) for x in seqs)
    tokens = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, x in enumerate(seqs):
        tokens[r, :len(x)] = torch.from_numpy(x.astype(numpy.int64))
    return tokens, torch.arange(width).unsqueeze(0).expand(len(seqs), -1)


def sequence_nll(model, batch: List[numpy.ndarray], device) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(sum of -log p of tokens 1..n-1, n-1) of each sequence (right-padded into one batch), both
    float64 [b]; None on a pipeline stage other than the last."""
    tokens, position_ids = right_pad(batch)
    mask = torch.zeros(len(batch), tokens.shape[1] - 1, dtype=torch.float64)
    for r, x in enumerate(batch):
        mask[r, :len(x) - 1] = 1
    nll = per_token_nll(model, tokens[:, :-1].to(device), position_ids[:, :-1].to(device),
                        tokens[:, 1:].to(device))
    if nll is None:
        return None
    return (nll.double().cpu() * mask).sum(1), mask.sum(1)


def mean_logprobs(model, batch: List[numpy.ndarray], device) -> Optional[torch.Tensor]:
    """Mean log p of tokens 1..n-1 of each sequence, float64 [b]; None off the last stage."""
    out = sequence_nll(model, batch, device)
    if out is None:
        return None
    nll, count = out
    return -nll / count  # 0/0 = NaN for a one-token instance


def per_token_nll(model, tokens, position_ids, labels) -> Optional[torch.Tensor]:
    """-log p of each label, [b, s], from GPTModel's vocab-parallel cross entropy (labels=).

    With PP > 1 the batch goes through megatron-core's pipeline schedule (forward only, one
    micro-batch); only the last stage gets the result, the others return None.
    """
    from megatron.core import parallel_state as ps

    with torch.no_grad():
        if ps.get_pipeline_model_parallel_world_size() == 1:
            return model(tokens, position_ids, None, labels=labels)
        from megatron.core.pipeline_parallel import get_forward_backward_func

        def step(_data_iterator, stage):
            out = stage(tokens, position_ids, None, labels=labels)
            return out, lambda nll: (nll.sum(), torch.tensor(nll.numel(), dtype=torch.int,
                                                              device=nll.device), {"nll": nll.detach()})

        store = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([None]), model=[model], num_microbatches=1,
            seq_length=tokens.shape[1], micro_batch_size=tokens.shape[0], forward_only=True)
        return store[0]["nll"] if store else None
