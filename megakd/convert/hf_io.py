"""Read a local Hugging Face model (safetensors, .bin, or .gguf through transformers) and write one.

Only local paths: nothing here downloads from a hub.
"""

import json
import os
import shutil
from typing import Dict, Optional, Tuple

import torch

from megakd.convert.mapping import ConversionError

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
# Buffers some checkpoints carry that are not weights (GPT-2's causal mask, old Llama inv_freq).
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def is_gguf(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".gguf")


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def read_hf_config(path: str):
    """The transformers config of a local model directory or .gguf file."""
    from transformers import AutoConfig

    if not os.path.exists(path):
        raise ConversionError(f"HF model path {path} does not exist; pass a local model directory "
                              f"(config.json + weights) or a .gguf file")
    try:
        if is_gguf(path):
            folder, name = os.path.split(os.path.abspath(path))
            return AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConversionError(f"{path} has no config.json; pass a Hugging Face model directory "
                                  f"(as written by save_pretrained) or a .gguf file")
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except ConversionError:
        raise
    except Exception as e:  # transformers raises ValueError/KeyError/OSError for unknown models
        raise ConversionError(f"cannot read the HF config of {path} ({_one_line(e)})") from e


def read_hf_weights(path: str) -> Dict[str, torch.Tensor]:
    """All weights of a local HF model as {name: tensor} (fp32 for GGUF, stored dtype otherwise)."""
    if is_gguf(path):
        weights = _read_gguf(path)
    else:
        weights = _read_dir(path)
    return {k: v for k, v in weights.items() if not k.endswith(_BUFFER_SUFFIXES)}


def _read_dir(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(os.listdir(path))
    for index, single, load in ((SAFETENSORS_INDEX, "model.safetensors", load_file),
                                (BIN_INDEX, "pytorch_model.bin", _load_bin)):
        if index in files:
            with open(os.path.join(path, index)) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        elif single in files:
            shards = [single]
        else:
            continue
        out = {}
        for shard in shards:
            shard_path = os.path.join(path, shard)
            if not os.path.isfile(shard_path):
                raise ConversionError(f"weight file {shard_path} listed in {index} is missing")
            try:
                out.update(load(shard_path))
            except Exception as e:
                raise ConversionError(f"cannot read weight file {shard_path} ({_one_line(e)})") from e
        return out
    raise ConversionError(f"{path} holds no model.safetensors or pytorch_model.bin (nor a sharded "
                          f"index); is the download complete?")


def _load_bin(path: str) -> Dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_gguf(path: str) -> Dict[str, torch.Tensor]:
    """Dequantise through transformers' GGUF loader (it also undoes llama.cpp's q/k permutation)."""
    import importlib.util

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConversionError(f"reading a .gguf file needs `pip install {' '.join(missing)}`")
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(os.path.abspath(path))
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                     dtype=torch.float32)
    except Exception as e:
        raise ConversionError(f"cannot load GGUF file {path} ({_one_line(e)})") from e
    weights = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    return weights


def normalize_names(weights: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Add the base-model prefix (`model.`, `transformer.`) to checkpoints saved without it."""
    if any(k.startswith(prefix) for k in weights):
        return weights
    return {k if k.startswith("lm_head.") else prefix + k: v for k, v in weights.items()}


def save_tokenizer(tokenizer_path: str, out_dir: str):
    """Copy a tokenizer (directory or .gguf) into out_dir as HF tokenizer files; returns it."""
    from megakd.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    tok.save_pretrained(out_dir)
    return tok


def write_hf(out_dir: str, config: dict, tensors: Dict[str, torch.Tensor],
             tokenizer_path: Optional[str] = None) -> Tuple[str, object]:
    """config.json + model.safetensors (+ tokenizer files) into out_dir, through transformers'
    config class so the file is what `from_pretrained` expects in this transformers version."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, GenerationConfig

    config = dict(config)
    model_type = config.pop("model_type")
    tok = save_tokenizer(tokenizer_path, out_dir) if tokenizer_path else None
    if tok is not None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tok, key, None)
            if value is not None and value < config["vocab_size"]:
                config[key] = value
    hf_config = AutoConfig.for_model(model_type, **config)
    hf_config.save_pretrained(out_dir)
    GenerationConfig.from_model_config(hf_config).save_pretrained(out_dir)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return out_dir, hf_config


class AtomicDir:
    """Write into `<out>.tmp-<pid>` and rename to `out` only on success (no half-written outputs)."""

    def __init__(self, out: str):
        self.out = os.path.abspath(out)
        if os.path.exists(self.out) and (not os.path.isdir(self.out) or os.listdir(self.out)):
            raise ConversionError(f"output {out} already exists; remove it or choose another path")
        self.tmp = f"{self.out}.tmp-{os.getpid()}"

    def __enter__(self) -> str:
        shutil.rmtree(self.tmp, ignore_errors=True)
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if os.path.isdir(self.out):
            os.rmdir(self.out)  # empty (checked above)
        os.replace(self.tmp, self.out)
        return False
