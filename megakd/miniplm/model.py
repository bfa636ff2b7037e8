"""Checkpoint path -> a GPTModel ready for forward-only scoring, built from the checkpoint's config.

Any megakd dist checkpoint works (trained by examples/pretrain_pd.py or converted from Hugging
Face), at any saved TP/PP; the building and loading itself is megakd.convert.load_checkpoint_model,
shared with the converter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megakd.config import ModelConfig, ParallelConfig, from_dict
from megakd.convert import load_checkpoint_model
from megakd import checkpoint


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
    model, common = load_checkpoint_model(path, ParallelConfig(tp=tp, pp=pp))
    model.eval()
    cfg = common["config"]
    mcfg = from_dict(ModelConfig, cfg["model"])
    seq = mcfg.max_position_embeddings or cfg["train"]["seq_length"]
    return LoadedModel(model, checkpoint.resolve(path), mcfg, int(common["vocab_size"]),
                       seq if mcfg.arch == "gpt2" else None, int(common.get("iteration", 0)))
