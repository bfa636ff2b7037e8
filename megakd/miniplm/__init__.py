"""MiniPLM Difference Sampling: score corpus instances by teacher vs reference LM, keep the best.

    instances.py  cut one or more indexed datasets into instances (fixed-length chunks or documents)
    model.py      checkpoint path -> GPTModel for forward-only scoring (config from the checkpoint)
    score.py      per-instance mean log-likelihoods, DP-sharded, resumable shards -> SCORES/
    select.py     top-alpha or Gumbel-top-k selection -> refined <prefix>.bin/.idx, stats, histogram
    text.py       instance -> exact source text (byte-level BPE), for cross-family re-tokenisation
    split.py      carve a deterministic held-out slice (reference-model data) out of a dataset

The pipeline and its commands: docs/MINIPLM.md.
"""
