"""Local Hugging Face tokenizers: load (directory or GGUF), fingerprint, adapt to megatron-core.

Tokenizers are only ever read from local paths: nothing here downloads from a hub at run time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from typing import Iterable, List, Optional, Sequence

from megakd.errors import DataError

from megatron.core.tokenizers import MegatronTokenizerBase

EOS_TOKEN = "<|endoftext|>"

# megatron-core's own "never in the data" pad id (megatron/core/datasets/megatron_dataset.py).
_MEGATRON_NO_PAD = -1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_tokenizer(path: str):
    """Load a Hugging Face tokenizer from a local directory or a local ``.gguf`` file.

    Raises DataError (one line, with the fix) for a missing path or one that holds no tokenizer.
    """
    path = os.fspath(path)
    hint = ("pass a local Hugging Face tokenizer directory (as written by save_pretrained) "
            "or a .gguf file; tools/fetch_assets.py makes some")
    if not os.path.exists(path):
        raise DataError(f"tokenizer path {path} does not exist; {hint}")
    from transformers import AutoTokenizer  # slow import: only once the path looks usable

    try:
        if os.path.isfile(path) and path.endswith(".gguf"):
            folder, name = os.path.split(os.path.abspath(path))
            return AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        if os.path.isdir(path):
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers raises OSError/ValueError/KeyError/... for a bad dir
        raise DataError(f"cannot load a tokenizer from {path} ({_one_line(e)}); {hint}") from e
    raise DataError(f"tokenizer path {path} is neither a directory nor a .gguf file; {hint}")


def vocab_fingerprint(tokenizer) -> str:
    """A short stable hash of token -> id (added tokens included) and the special tokens.

    Two tokenizers with the same fingerprint map every token string to the same id, which is what
    teacher/student distillation needs; it does not depend on the tokenizer class or file format.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    special = sorted(set(tokenizer.all_special_tokens))
    payload = json.dumps({"vocab": vocab, "special": special, "eos": tokenizer.eos_token},
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


class MegatronTokenizer(MegatronTokenizerBase):
    """Adapter that lets megatron-core's GPTDataset use a Hugging Face tokenizer.

    GPTDatasetConfig reads ``vocab_size``, ``eod`` and ``pad`` (and ``unique_identifiers`` for the
    dataset cache hash). ``pad`` is the HF pad id only when it is a token of its own; when it is
    missing or equals eod/eos/bos (GPT-2 style) it is megatron-core's -1, which never occurs in
    the data, so megatron-core does not warn about an ambiguous pad and mask real EOD tokens.
    """

    def __init__(self, hf_tokenizer, eod: Optional[int] = None) -> None:
        super().__init__(path=getattr(hf_tokenizer, "name_or_path", "") or "", config={})
        self._hf = hf_tokenizer
        eod = hf_tokenizer.eos_token_id if eod is None else eod
        if eod is None:
            raise DataError(
                f"tokenizer {self.path or type(hf_tokenizer).__name__} has no EOS token to use as "
                "end-of-document; pass eod=<token id> or use a tokenizer with an eos_token")
        self._eod = int(eod)
        self._fingerprint = vocab_fingerprint(hf_tokenizer)

    @property
    def hf_tokenizer(self):
        return self._hf

    def tokenize(self, text: str) -> List[int]:
        """Token ids of ``text`` without BOS/EOS (documents get EOD appended separately)."""
        return self._hf(text, add_special_tokens=False, verbose=False)["input_ids"]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._hf.decode(list(map(int, ids)), clean_up_tokenization_spaces=False)

    def apply_chat_template(self, conversation, **kwargs):
        return self._hf.apply_chat_template(conversation, **kwargs)

    @property
    def vocab(self) -> dict:
        return self._hf.get_vocab()

    @property
    def inv_vocab(self) -> dict:
        return {i: t for t, i in self._hf.get_vocab().items()}

    @property
    def vocab_size(self) -> int:
        return len(self._hf)

    @property
    def eod(self) -> int:
        return self._eod

    @property
    def eos(self) -> int:
        eos = self._hf.eos_token_id
        return self._eod if eos is None else int(eos)

    @property
    def bos(self) -> Optional[int]:
        return self._hf.bos_token_id

    @property
    def pad(self) -> int:
        pad = self._hf.pad_token_id
        if pad is None or pad in (self._eod, self._hf.eos_token_id, self._hf.bos_token_id):
            return _MEGATRON_NO_PAD
        return int(pad)

    @property
    def unique_identifiers(self) -> OrderedDict:
        """What megatron-core hashes into its dataset-cache key: the vocab, not the path."""
        return OrderedDict(
            [("class", f"{type(self).__module__}.{type(self).__qualname__}"),
             ("vocab_fingerprint", self._fingerprint), ("eod", self._eod)])


def build_tiny_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 512) -> str:
    """Train a small byte-level BPE on ``texts`` and save it as a PreTrainedTokenizerFast dir.

    Byte-level, with no normalizer, so decoding gives back any input text exactly. The only special
    token is ``<|endoftext|>`` (id 0), used as EOS. Deterministic for the same texts.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=EOS_TOKEN,
                                   clean_up_tokenization_spaces=False)
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir
