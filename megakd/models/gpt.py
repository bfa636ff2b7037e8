"""Build megatron-core GPTModels from a `ModelConfig`.

One builder for the families megakd supports; a family is a handful of TransformerConfig switches
(norm, MLP, positions, biases), and the backend (megatron-core local modules vs Transformer Engine) is
a layer-spec swap, as megatron-core intends.
"""

import math
from typing import Callable

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from megakd.config import ModelConfig, ParallelConfig
from megakd.errors import ConfigError, PlatformError
from megakd.platform import fp8

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def padded_vocab_size(vocab_size: int, cfg: ModelConfig, tp: int) -> int:
    """Pad to a multiple of make_vocab_size_divisible_by.

    Unlike Megatron-LM we do not multiply the multiple by TP: the padded size (and so the checkpoint's
    embedding shape) stays the same at every TP, which keeps checkpoints reshardable across TP.
    """
    if cfg.vocab_size is not None:
        if cfg.vocab_size < vocab_size:
            raise ConfigError(f"model.vocab_size={cfg.vocab_size} is smaller than the tokenizer's "
                              f"{vocab_size}; unset it or raise it")
        vocab_size = cfg.vocab_size
    multiple = cfg.make_vocab_size_divisible_by
    padded = int(math.ceil(vocab_size / multiple) * multiple)
    if padded % tp:
        raise ConfigError(f"padded vocab {padded} is not divisible by parallel.tp={tp}; set "
                          f"model.make_vocab_size_divisible_by to a multiple of {tp}")
    return padded


def ffn_hidden_size(cfg: ModelConfig) -> int:
    if cfg.ffn_hidden_size is not None:
        return cfg.ffn_hidden_size
    if cfg.arch == "gpt2":
        return 4 * cfg.hidden_size
    return int(math.ceil(8 * cfg.hidden_size / 3 / 64) * 64)


def use_transformer_engine(cfg: ModelConfig) -> bool:
    """Resolve model.transformer_impl (auto: TE where TE and CUDA are); a TE spec or FP8 that cannot
    run here is a one-line error, never a silent fallback."""
    cfg.check_fp8()
    if cfg.fp8:
        fp8.require_fp8()
    if cfg.transformer_impl == "local":
        return False
    have_te = torch.cuda.is_available() and fp8.transformer_engine_error() is None
    if cfg.transformer_impl == "transformer_engine" and not have_te:
        raise PlatformError("model.transformer_impl=transformer_engine needs CUDA and Transformer "
                            "Engine (use the GPU container, see Dockerfile); on CPU set it to local")
    return have_te


def transformer_config(cfg: ModelConfig, parallel: ParallelConfig) -> TransformerConfig:
    """The megatron-core TransformerConfig for a model family at a given parallel layout."""
    llama = cfg.arch == "llama"
    on_cpu = not torch.cuda.is_available()
    dtype = _DTYPES[cfg.precision]
    te = use_transformer_engine(cfg)  # and the one-line errors for FP8 or TE that cannot run here
    if parallel.sequence_parallel and not te:
        raise PlatformError("parallel.sequence_parallel needs Transformer Engine norms (GPU container); "
                            "set parallel.sequence_parallel=false on CPU")
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=ffn_hidden_size(cfg),
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        kv_channels=cfg.hidden_size // cfg.num_attention_heads,
        normalization="RMSNorm" if llama else "LayerNorm",
        layernorm_epsilon=cfg.norm_eps,
        gated_linear_unit=llama,
        activation_func=F.silu if llama else (lambda x: F.gelu(x, approximate="tanh")),
        add_bias_linear=not llama,
        add_qkv_bias=(not llama) if cfg.qkv_bias is None else cfg.qkv_bias,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=cfg.attention_dropout,
        init_method_std=cfg.init_method_std,
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=cfg.precision == "bf16",
        fp16=cfg.precision == "fp16",
        use_cpu_initialization=on_cpu,
        # Fused kernels need apex/TE on a GPU; the unfused paths are the same math.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        calculate_per_token_loss=True,
        **(fp8.RECIPE if cfg.fp8 else {}),
    )


def layer_spec(cfg: ModelConfig):
    if use_transformer_engine(cfg):
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        return get_gpt_layer_with_transformer_engine_spec()
    return get_gpt_layer_local_spec(normalization="RMSNorm" if cfg.arch == "llama" else "LayerNorm")


def build_model(cfg: ModelConfig, parallel: ParallelConfig, vocab_size: int, seq_length: int,
                pre_process=None, post_process=None) -> GPTModel:
    """A GPTModel for this rank's pipeline stage (needs megatron parallel_state initialised)."""
    tconfig = transformer_config(cfg, parallel)
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    model = GPTModel(
        config=tconfig,
        transformer_layer_spec=layer_spec(cfg),
        vocab_size=padded_vocab_size(vocab_size, cfg, parallel.tp),
        max_sequence_length=cfg.max_position_embeddings or seq_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.tie_embeddings,
        position_embedding_type="rope" if cfg.arch == "llama" else "learned_absolute",
        rotary_base=int(cfg.rotary_base),
    )
    if cfg.precision != "fp32":
        # As megatron's Float16Module does: every parameter in the training precision (the local
        # spec makes norm weights fp32), which megatron's mixed-precision optimizer assumes (its
        # checkpoint maps only half-precision params to the model's).
        model = model.to(_DTYPES[cfg.precision])
    if not torch.cuda.is_available():
        return model
    return model.cuda(torch.cuda.current_device())


def sharded_logits(gpt: GPTModel, forward: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The last stage's vocab-sharded logits [s, b, V/TP] of `forward()` (a call of `gpt`, possibly
    through wrappers such as DDP), in megatron's own layout. GPTModel.forward would transpose them to
    [b, s, V/TP] with a full copy; with `post_process` off for the call it returns the decoder output
    (final norm applied) and the output layer runs here instead, on the same weight."""
    if not gpt.post_process or gpt.config.mtp_num_layers:
        raise ValueError("sharded_logits needs the last pipeline stage of a GPTModel without MTP layers")
    gpt.post_process = False
    try:
        hidden = forward()
    finally:
        gpt.post_process = True
    weight = gpt.shared_embedding_or_output_weight() if gpt.share_embeddings_and_output_weights else None
    logits, _ = gpt.output_layer(hidden, weight=weight)
    return logits
