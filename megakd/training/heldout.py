"""Held-out LM loss of a checkpoint over whole indexed datasets, in nats per predicted token.

Validation inside training samples a few batches of the training blend's own split; comparing runs
(or a student with its teacher) needs the same fixed text for every model. Every document is cut
into windows of `seq_length` predictions (window k predicts tokens k*L+1 .. (k+1)*L from the tokens
before them inside the window), so every token but a document's first is predicted exactly once
and no model is asked for a context longer than it was trained on. Windows are spread over the
data-parallel ranks and the sums all-reduced.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy
import torch

from megakd.errors import ConfigError
from megakd.platform import comm


def windows(doc: numpy.ndarray, seq_length: int) -> List[numpy.ndarray]:
    """Token windows of at most seq_length + 1 tokens, consecutive ones sharing one token."""
    return [doc[a:a + seq_length + 1] for a in range(0, len(doc) - 1, seq_length)]


def heldout_loss(model, prefix: str, seq_length: int, micro_batch_size: int, device,
                 vocab_size: Optional[int] = None) -> Dict[str, float]:
    """{'nll': mean nats/token, 'tokens': predicted tokens} of `model` over every document of
    `prefix` (meaningful on the last pipeline stage). `vocab_size`: refuse data holding larger ids."""
    from megatron.core import parallel_state as ps

    from megakd.data.indexed import open_indexed
    from megakd.inference import sequence_nll

    if seq_length < 1 or micro_batch_size < 1:
        raise ConfigError("--seq-length and --micro-batch-size must be >= 1")
    ds = open_indexed(prefix)
    docs = [numpy.asarray(ds[i], dtype=numpy.int64) for i in range(len(ds))]
    del ds
    top = max((int(d.max()) for d in docs if len(d)), default=-1)
    if vocab_size is not None and top >= vocab_size:
        # a dataset written with another tokenizer would give a loss that means nothing
        raise ConfigError(f"{prefix} holds token id {top}, beyond the model's vocabulary of {vocab_size}: "
                          "it was tokenized with another tokenizer; evaluate on data made with the model's")
    wins = [w for d in docs for w in windows(d, seq_length)]
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    mine = wins[dp_rank::dp]
    sums = torch.zeros(2, dtype=torch.float64)  # nll sum, predicted tokens
    for b in range(0, len(mine), micro_batch_size):
        out = sequence_nll(model, mine[b:b + micro_batch_size], device)
        if out is not None:
            sums += torch.stack([out[0].sum(), out[1].sum()])
    if ps.is_pipeline_last_stage() and dp > 1:
        comm.all_reduce(sums, group=ps.get_data_parallel_group())
    return {"nll": float(sums[0] / sums[1]) if sums[1] > 0 else float("nan"), "tokens": int(sums[1])}


def evaluate_checkpoint(path: str, prefixes: Sequence[str], seq_length: int, micro_batch_size: int = 4,
                        tp: int = 1, pp: int = 1) -> Optional[Dict[str, Dict[str, float]]]:
    """heldout_loss of checkpoint `path` on each prefix (initialises the parallel state); None
    except on the one rank that reports (last pipeline stage, first TP and DP rank)."""
    from megatron.core import parallel_state as ps

    from megakd import platform
    from megakd.data.indexed import document_lengths
    from megakd.inference import load_for_inference

    for p in prefixes:
        document_lengths(p)  # one-line error for a missing or corrupt dataset before the model loads
    env = platform.init_model_parallel(tp, pp, seed=0)
    m = load_for_inference(path, tp, pp)
    if m.max_length is not None and seq_length > m.max_length:
        raise ConfigError(f"--seq-length {seq_length} is longer than the {m.max_length} positions "
                          f"{path} was built for; use --seq-length {m.max_length} or less")
    out = {p: heldout_loss(m.model, p, seq_length, micro_batch_size, env.device, m.vocab_size)
           for p in prefixes}
    reports = (ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
               and ps.get_data_parallel_rank() == 0)
    return out if reports else None
