"""Hugging Face <-> megatron-core checkpoint conversion (Llama/SmolLM2/Mistral, Qwen2, GPT-2).

    hf_to_mcore("hf_dir_or.gguf", "ckpt")          # dist checkpoint, loadable at any TP/PP
    mcore_to_hf("ckpt", "hf_out", tokenizer=...)    # from a checkpoint saved at any TP/PP
    model_config_from_hf("hf_dir")                  # the megakd ModelConfig of an HF model

CLI: tools/convert_checkpoint.py. Tables: families.py; tensor layouts: mapping.py.
"""

from megakd.convert.convert import (cached_hf_checkpoint, hf_to_mcore, load_checkpoint_model,
                                    mcore_to_hf, model_config_from_hf, read_checkpoint_config)
from megakd.convert.families import FAMILIES
from megakd.convert.mapping import ConversionError

__all__ = ["ConversionError", "FAMILIES", "cached_hf_checkpoint", "hf_to_mcore",
           "load_checkpoint_model", "mcore_to_hf", "model_config_from_hf", "read_checkpoint_config"]
