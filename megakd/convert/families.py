"""The model families megakd converts: one mapping table and one config mapping per family.

  llama  Llama / SmolLM2 / Mistral (RMSNorm, SwiGLU, RoPE, GQA, tied or untied embeddings)
  qwen2  the Llama table plus a bias on q/k/v (megakd: model.qkv_bias=true)
  gpt2   learned positions, LayerNorm, tanh-GELU, biases everywhere, Conv1D ([in, out]) weights

HF Llama-format q/k weights need no permutation: both transformers and megatron-core apply RoPE with
rotate-half over the two halves of each head (megatron-core's rotary_interleaved=False); the permute
of Meta's original checkpoints is already undone in HF files. The logits tests check this.
"""

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

from megakd.config import ModelConfig
from megakd.convert.mapping import (CONV1D, GLU, PACKED_QKV, PACKED_QKV_CONV1D, QKV, VOCAB,
                                    ConversionError, Rule, expand)
from megakd.models.gpt import ffn_hidden_size


@dataclass(frozen=True)
class Family:
    name: str
    model_types: Sequence[str]
    """HF config.model_type values read by this family."""
    rules: Sequence[Rule]
    layer_rules: Sequence[Rule]
    mcore_layer: str
    hf_layer: str
    hf_prefix: str
    """The base-model prefix of HF weight names (some checkpoints are saved without it)."""
    config_from_hf: Callable[[object], ModelConfig]
    config_to_hf: Callable[[ModelConfig, int], Dict]

    def all_rules(self, num_layers: int) -> List[Rule]:
        return expand(self.rules, self.layer_rules, num_layers, self.mcore_layer, self.hf_layer)


# ------------------------------------------------------------------------------------------- llama
LLAMA_RULES = [
    Rule("embedding.word_embeddings.weight", ["model.embed_tokens.weight"], VOCAB),
    Rule("decoder.final_layernorm.weight", ["model.norm.weight"]),
    Rule("output_layer.weight", ["lm_head.weight"], VOCAB, optional=True),
]
LLAMA_LAYER = [
    Rule("input_layernorm.weight", ["input_layernorm.weight"]),
    Rule("self_attention.linear_qkv.weight",
         ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"], QKV),
    Rule("self_attention.linear_proj.weight", ["self_attn.o_proj.weight"]),
    Rule("pre_mlp_layernorm.weight", ["post_attention_layernorm.weight"]),
    Rule("mlp.linear_fc1.weight", ["mlp.gate_proj.weight", "mlp.up_proj.weight"], GLU),
    Rule("mlp.linear_fc2.weight", ["mlp.down_proj.weight"]),
]
QWEN2_LAYER = LLAMA_LAYER + [
    Rule("self_attention.linear_qkv.bias",
         ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"], QKV),
]


def _rope_theta(hf) -> float:
    """rope_theta from a transformers 5 `rope_parameters` or a 4.x `rope_theta`; only plain RoPE."""
    params = getattr(hf, "rope_parameters", None) or {}
    scaling = getattr(hf, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConversionError(f"RoPE scaling {rope_type!r} (config rope_parameters/rope_scaling) is "
                              f"not supported by megakd's models; only plain RoPE converts")
    theta = params.get("rope_theta", getattr(hf, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def _require(hf, key, ok, what):
    value = getattr(hf, key, None)
    if not ok(value):
        raise ConversionError(f"config {key}={value!r} is not supported ({what})")


def llama_config_from_hf(hf) -> ModelConfig:
    qwen2 = hf.model_type == "qwen2"
    _require(hf, "hidden_act", lambda v: v == "silu", "megakd's llama family uses SwiGLU with silu")
    _require(hf, "attention_bias", lambda v: not v, "biases on q/k/v/o; only Qwen2's q/k/v bias is")
    _require(hf, "mlp_bias", lambda v: not v, "MLP biases")
    heads = hf.num_attention_heads
    _require(hf, "head_dim", lambda v: v in (None, hf.hidden_size // heads),
             "head_dim must be hidden_size / num_attention_heads")
    if qwen2:
        _require(hf, "use_sliding_window", lambda v: not v, "sliding-window attention")
    window = getattr(hf, "sliding_window", None)
    if not qwen2 and window is not None and window < hf.max_position_embeddings:
        warnings.warn(f"{hf.model_type} sliding_window={window} is dropped: megakd attends over the "
                      f"whole sequence, identical for sequences up to {window} tokens")
    return ModelConfig(
        arch="llama", num_layers=hf.num_hidden_layers, hidden_size=hf.hidden_size,
        ffn_hidden_size=hf.intermediate_size, num_attention_heads=heads,
        num_query_groups=getattr(hf, "num_key_value_heads", None) or heads,
        vocab_size=hf.vocab_size, max_position_embeddings=hf.max_position_embeddings,
        rotary_base=_rope_theta(hf), tie_embeddings=bool(hf.tie_word_embeddings),
        norm_eps=hf.rms_norm_eps, qkv_bias=True if qwen2 else None)


def llama_config_to_hf(m: ModelConfig, max_positions: int) -> Dict:
    qwen2 = bool(m.qkv_bias)
    return dict(
        model_type="qwen2" if qwen2 else "llama",
        architectures=["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"],
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=ffn_hidden_size(m),
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups or m.num_attention_heads,
        max_position_embeddings=max_positions, rms_norm_eps=m.norm_eps,
        rope_theta=float(int(m.rotary_base)),  # megakd builds RoPE with int(rotary_base)
        tie_word_embeddings=m.tie_embeddings, hidden_act="silu",
        attention_dropout=m.attention_dropout,
        **({} if qwen2 else dict(attention_bias=False, mlp_bias=False,
                                 head_dim=m.hidden_size // m.num_attention_heads)))


# -------------------------------------------------------------------------------------------- gpt2
GPT2_RULES = [
    Rule("embedding.word_embeddings.weight", ["transformer.wte.weight"], VOCAB),
    Rule("embedding.position_embeddings.weight", ["transformer.wpe.weight"]),
    Rule("decoder.final_layernorm.weight", ["transformer.ln_f.weight"]),
    Rule("decoder.final_layernorm.bias", ["transformer.ln_f.bias"]),
    Rule("output_layer.weight", ["lm_head.weight"], VOCAB, optional=True),
]
GPT2_LAYER = [
    Rule("input_layernorm.weight", ["ln_1.weight"]),
    Rule("input_layernorm.bias", ["ln_1.bias"]),
    Rule("self_attention.linear_qkv.weight", ["attn.c_attn.weight"], PACKED_QKV_CONV1D),
    Rule("self_attention.linear_qkv.bias", ["attn.c_attn.bias"], PACKED_QKV),
    Rule("self_attention.linear_proj.weight", ["attn.c_proj.weight"], CONV1D),
    Rule("self_attention.linear_proj.bias", ["attn.c_proj.bias"]),
    Rule("pre_mlp_layernorm.weight", ["ln_2.weight"]),
    Rule("pre_mlp_layernorm.bias", ["ln_2.bias"]),
    Rule("mlp.linear_fc1.weight", ["mlp.c_fc.weight"], CONV1D),
    Rule("mlp.linear_fc1.bias", ["mlp.c_fc.bias"]),
    Rule("mlp.linear_fc2.weight", ["mlp.c_proj.weight"], CONV1D),
    Rule("mlp.linear_fc2.bias", ["mlp.c_proj.bias"]),
]


def gpt2_config_from_hf(hf) -> ModelConfig:
    _require(hf, "activation_function", lambda v: v in ("gelu_new", "gelu_pytorch_tanh"),
             "megakd's gpt2 family uses tanh-approximated GELU")
    _require(hf, "scale_attn_weights", lambda v: v in (None, True), "unscaled attention")
    _require(hf, "scale_attn_by_inverse_layer_idx", lambda v: not v, "per-layer attention scaling")
    _require(hf, "reorder_and_upcast_attn", lambda v: not v, "reordered attention")
    _require(hf, "add_cross_attention", lambda v: not v, "cross-attention")
    return ModelConfig(
        arch="gpt2", num_layers=hf.n_layer, hidden_size=hf.n_embd,
        ffn_hidden_size=hf.n_inner or 4 * hf.n_embd, num_attention_heads=hf.n_head,
        vocab_size=hf.vocab_size, max_position_embeddings=hf.n_positions,
        tie_embeddings=bool(hf.tie_word_embeddings), norm_eps=hf.layer_norm_epsilon)


def gpt2_config_to_hf(m: ModelConfig, max_positions: int) -> Dict:
    if m.qkv_bias is False:
        raise ConversionError("model.qkv_bias=false has no GPT-2 counterpart (GPT-2 has every bias)")
    return dict(
        model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=m.vocab_size,
        n_positions=max_positions, n_embd=m.hidden_size, n_layer=m.num_layers,
        n_head=m.num_attention_heads, n_inner=ffn_hidden_size(m), activation_function="gelu_new",
        layer_norm_epsilon=m.norm_eps, tie_word_embeddings=m.tie_embeddings,
        resid_pdrop=m.hidden_dropout, embd_pdrop=m.hidden_dropout, attn_pdrop=m.attention_dropout)


LLAMA = Family("llama", ("llama", "mistral"), LLAMA_RULES, LLAMA_LAYER, "decoder.layers.{}.",
               "model.layers.{}.", "model.", llama_config_from_hf, llama_config_to_hf)
QWEN2 = dataclasses.replace(LLAMA, name="qwen2", model_types=("qwen2",), layer_rules=QWEN2_LAYER)
GPT2 = Family("gpt2", ("gpt2",), GPT2_RULES, GPT2_LAYER, "decoder.layers.{}.", "transformer.h.{}.",
              "transformer.", gpt2_config_from_hf, gpt2_config_to_hf)
FAMILIES = (LLAMA, QWEN2, GPT2)


def family_for_hf(model_type: str) -> Family:
    for f in FAMILIES:
        if model_type in f.model_types:
            return f
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ConversionError(f"unsupported architecture model_type={model_type!r}; megakd converts "
                          f"{known}")


def family_for_model(m: ModelConfig) -> Family:
    if m.arch == "gpt2":
        return GPT2
    return QWEN2 if m.qkv_bias else LLAMA
