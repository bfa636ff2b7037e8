"""Checkpoint path -> a GPTModel ready for forward-only scoring, built from the checkpoint's config.

Any megakd dist checkpoint works (trained by examples/pretrain_pd.py or converted from Hugging
Face), at any saved TP/PP: its common state holds the run config ("config") and the tokenizer's
vocabulary size ("vocab_size"), which is all `build_model` needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.dist_checkpointing.serialization import load_common_state_dict

from megakd.config import Config, ModelConfig, ParallelConfig, from_dict
from megakd.errors import CheckpointError
from megakd.models import build_model
from megakd.training import checkpoint


@dataclass
class LoadedModel:
    model: torch.nn.Module
    path: str  # the iter_* directory that was loaded
    config: ModelConfig
    vocab_size: int  # the tokenizer's (unpadded) vocabulary size
    max_length: int  # longest input the model was built for (learned positions), None for RoPE
    iteration: int


def load_for_inference(path: str, tp: int = 1, pp: int = 1) -> LoadedModel:
    """Build the checkpoint's model for this rank (parallel_state must be initialised at tp x pp),
    load its weights and switch it to eval mode."""
    ckpt = checkpoint.resolve(path)
    common = load_common_state_dict(ckpt)
    if "config" not in common or "vocab_size" not in common:
        raise CheckpointError(f"{ckpt} has no model config in its common state; it was not written "
                              f"by megakd (examples/pretrain_pd.py or tools/convert_checkpoint.py)")
    cfg = from_dict(Config, common["config"])
    mcfg = cfg.model
    seq = mcfg.max_position_embeddings or cfg.train.seq_length
    model = build_model(mcfg, ParallelConfig(tp=tp, pp=pp), int(common["vocab_size"]), seq)
    checkpoint.load_weights(ckpt, model)
    model.eval()
    return LoadedModel(model, ckpt, mcfg, int(common["vocab_size"]),
                       seq if mcfg.arch == "gpt2" else None, int(common.get("iteration", 0)))
