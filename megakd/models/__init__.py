"""megatron-core GPTModel builders (Llama / GPT-2 style); local layer spec on CPU, TE spec on GPU."""

from megakd.config import Runtime  # noqa: F401  (how a saved model runs; lives with the config)
from megakd.models.gpt import (build_model, padded_vocab_size, sharded_logits,
                               transformer_config)

__all__ = ["Runtime", "build_model", "padded_vocab_size", "sharded_logits", "transformer_config"]
