"""Hugging Face <-> megatron-core distributed checkpoints.

Both directions go through a TP=1/PP=1 megakd model in a world of one process: HF tensors are mapped
(families.py) into its parameters and saved with megakd's checkpointing, and megatron-core's sharded
state dict reshards the result on load, so the checkpoint loads at any TP/PP; the way back loads a
checkpoint saved at any TP/PP into that one-process model and maps its full tensors to HF names.
Outputs are written to a temporary folder and renamed at the end.
"""

import contextlib
import dataclasses
import hashlib
import os
import subprocess
import sys
from typing import Dict, Optional, Tuple

import torch

from megakd import platform
from megakd.config import Config, ModelConfig, ParallelConfig, TrainConfig, from_dict
from megakd.convert.families import family_for_hf, family_for_model
from megakd.convert.hf_io import (AtomicDir, normalize_names, read_hf_config, read_hf_weights,
                                  write_hf)
from megakd.convert.mapping import ConversionError, Dims, hf_to_mcore_tensors, mcore_to_hf_tensors

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ARCH_FIELDS = ("arch", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
               "num_query_groups", "vocab_size", "max_position_embeddings", "rotary_base",
               "tie_embeddings", "qkv_bias", "norm_eps")
"""The model.* keys an HF model dictates (the rest, e.g. dropout and precision, stay the user's)."""
# Kept from the original HF config when a converted model is exported again.
_HF_KEYS_KEPT = ("model_type", "architectures", "bos_token_id", "eos_token_id", "pad_token_id",
                 "sliding_window")
def model_config_from_hf(hf_path: str, base: Optional[ModelConfig] = None) -> ModelConfig:
    """megakd's ModelConfig for an HF model: its architecture over `base`'s other keys."""
    hf_cfg = read_hf_config(hf_path)
    arch = family_for_hf(hf_cfg.model_type).config_from_hf(hf_cfg)
    base = dataclasses.replace(base) if base is not None else ModelConfig()
    return dataclasses.replace(base, **{k: getattr(arch, k) for k in ARCH_FIELDS})


def _dims(m: ModelConfig, padded_vocab: int) -> Dims:
    return Dims(num_heads=m.num_attention_heads,
                num_groups=m.num_query_groups or m.num_attention_heads,
                head_dim=m.hidden_size // m.num_attention_heads, vocab_size=m.vocab_size,
                padded_vocab_size=padded_vocab)


@contextlib.contextmanager
def single_process():
    """A world of one process with megatron-core's TP=1/PP=1 state, torn down afterwards."""
    import torch.distributed as dist

    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConversionError("conversion runs in a single process of its own; call it outside "
                              "torchrun (the trainer does this for model.init_from_hf)")
    saved = {k: v for k, v in os.environ.items() if platform.is_rendezvous_var(k)}
    for k in saved:  # a world of one of its own, not the launching job's rendezvous
        del os.environ[k]
    try:
        platform.init_model_parallel(1, 1)
        yield
    finally:
        platform.destroy()
        os.environ.update(saved)


def _build(m: ModelConfig, runtime, vocab_size: int, seq_length: int,
           parallel: Optional[ParallelConfig] = None):
    """megakd's GPTModel of `m`, run as `runtime` (a megakd.config.Runtime), at the current layout."""
    from megakd.models import build_model

    return build_model(runtime.apply(m), parallel or ParallelConfig(), vocab_size, seq_length)


def _local(precision: str):
    """How conversion builds: the local spec runs without a GPU and has the parameter names
    families.py maps; megatron-core saves it under the TE spec's keys, so either spec loads it."""
    from megakd.config import Runtime

    return Runtime(precision=precision, transformer_impl="local")


def _weights(model) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}


def hf_to_mcore(hf_path: str, out: str, dtype: str = "fp32",
                make_vocab_size_divisible_by: int = 128) -> str:
    """Convert a local HF model directory or .gguf file into a megatron-core dist checkpoint at `out`
    (`out/iter_0000000/` + tracker, weights only; load it with checkpoint.pretrained). Returns out."""
    from megakd import checkpoint

    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    hf_cfg = read_hf_config(hf_path)
    family = family_for_hf(hf_cfg.model_type)
    m = dataclasses.replace(family.config_from_hf(hf_cfg), precision=dtype,
                            make_vocab_size_divisible_by=make_vocab_size_divisible_by)
    weights = normalize_names(read_hf_weights(hf_path), family.hf_prefix)
    seq_length = m.max_position_embeddings
    with AtomicDir(out) as tmp, single_process():
        model = _build(m, _local(dtype), m.vocab_size, seq_length)
        expected = {k: v.shape for k, v in _weights(model).items()}
        padded = model.embedding.word_embeddings.weight.shape[0]
        mapped = hf_to_mcore_tensors(family.all_rules(m.num_layers), weights, expected,
                                     _dims(m, padded))
        params = _weights(model)
        with torch.no_grad():
            for name, t in mapped.items():
                params[name].copy_(t)
        cfg = Config(model=m, train=TrainConfig(seq_length=min(seq_length, 2048)))
        common = {"config": cfg.to_dict(), "vocab_size": m.vocab_size,
                  "hf_config": {k: getattr(hf_cfg, k, None) for k in _HF_KEYS_KEPT},
                  "converted_from": os.path.abspath(hf_path), **checkpoint.layout_state()}
        checkpoint.save(tmp, 0, model, None, None, common)
    return out


def read_checkpoint_config(ckpt: str) -> Tuple[ModelConfig, dict]:
    """(ModelConfig, common state) of a megakd dist checkpoint (root or iter_* directory)."""
    from megatron.core.dist_checkpointing.serialization import load_common_state_dict

    from megakd import checkpoint

    if not os.path.exists(ckpt):
        raise ConversionError(f"checkpoint {ckpt} does not exist; pass a megakd checkpoint directory "
                              f"(with latest_checkpointed_iteration.txt) or one of its iter_* folders")
    common = load_common_state_dict(checkpoint.resolve(ckpt))
    if "config" not in common or "vocab_size" not in common:
        raise ConversionError(f"{ckpt} has no megakd config in its common state (was it written by "
                              f"megakd's trainer or converter?)")
    return from_dict(ModelConfig, common["config"]["model"]), common


def load_checkpoint_model(ckpt: str, parallel: Optional[ParallelConfig] = None, runtime=None):
    """Build the model a checkpoint describes at the current megatron parallel layout and load its
    weights (saved at any TP/PP). `runtime` (megakd.config.Runtime): the precision and layer spec it
    runs with; default: the precision it was saved in, at the local spec. Needs megatron
    parallel_state initialised. Returns (model, common)."""
    from megakd import checkpoint

    m, common = read_checkpoint_config(ckpt)
    model = _build(m, runtime or _local(m.precision), common["vocab_size"],
                   common["config"]["train"]["seq_length"], parallel)
    checkpoint.load_weights(ckpt, model)
    return model, common


def mcore_to_hf(ckpt: str, out: str, tokenizer: Optional[str] = None,
                dtype: Optional[str] = None) -> str:
    """Export a megakd dist checkpoint (saved at any TP/PP) as an HF model directory: config.json +
    model.safetensors (+ tokenizer files from a tokenizer directory or .gguf). Returns out."""
    m, common = read_checkpoint_config(ckpt)
    dtype = dtype or m.precision
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    family = family_for_model(m)
    m = dataclasses.replace(m, vocab_size=m.vocab_size or common["vocab_size"])
    max_positions = m.max_position_embeddings or common["config"]["train"]["seq_length"]
    with AtomicDir(out) as tmp:
        with single_process():
            model, _ = load_checkpoint_model(ckpt)
            weights = _weights(model)
        padded = weights["embedding.word_embeddings.weight"].shape[0]
        tensors = mcore_to_hf_tensors(family.all_rules(m.num_layers), weights, _dims(m, padded))
        tensors = {k: v.to("cpu", DTYPES[dtype]) for k, v in tensors.items()}
        hf_config = family.config_to_hf(m, max_positions)
        kept = common.get("hf_config") or {}
        if kept.get("model_type") in family.model_types:
            hf_config.update({k: v for k, v in kept.items() if v is not None})
        hf_config["dtype"] = str(DTYPES[dtype]).replace("torch.", "")
        write_hf(tmp, hf_config, tensors, tokenizer)
    return out


# ------------------------------------------------------------------ model.init_from_hf / teachers


def cache_root() -> str:
    return os.environ.get("MEGAKD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "megakd")


def _fingerprint(hf_path: str, m: ModelConfig) -> str:
    """Changes when the HF files or the settings that shape the checkpoint change."""
    path = os.path.abspath(hf_path)
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, f) for f in os.listdir(path))
    h = hashlib.sha256(f"{path}|{m.precision}|{m.make_vocab_size_divisible_by}".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"|{os.path.basename(f)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_hf_checkpoint(hf_path: str, m: ModelConfig, cache_dir: Optional[str] = None) -> str:
    """A dist checkpoint of an HF model, converted once into the cache (in a child process, so it can
    be called from inside a torchrun job: call it on one rank and barrier). Returns its path."""
    from megakd import checkpoint

    base = os.path.basename(os.path.abspath(hf_path).rstrip("/")).replace(".gguf", "")
    out = os.path.join(cache_dir or os.path.join(cache_root(), "hf_convert"),
                       f"{base}-{_fingerprint(hf_path, m)}")
    if checkpoint.latest_iteration(out) is not None:
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not platform.is_rendezvous_var(k)}
    code = ("import sys; from megakd.convert import hf_to_mcore; from megakd.errors import cli_main; "
            "cli_main(hf_to_mcore)(*sys.argv[1:3], dtype=sys.argv[3], "
            "make_vocab_size_divisible_by=int(sys.argv[4]))")
    proc = subprocess.run([sys.executable, "-c", code, hf_path, out, m.precision,
                           str(m.make_vocab_size_divisible_by)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()
        raise ConversionError(f"converting {hf_path} failed: {lines[-1].removeprefix('error: ')}")
    return out
