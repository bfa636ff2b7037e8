"""megatron-core GPTModel builders (Llama / GPT-2 style); local layer spec on CPU, TE spec on GPU."""

from megakd.models.gpt import build_model, padded_vocab_size, sharded_logits, transformer_config

__all__ = ["build_model", "padded_vocab_size", "sharded_logits", "transformer_config"]
