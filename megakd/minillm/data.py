"""Instruction data: jsonl {prompt, response[, system]} -> (prompt ids, response ids) -> batches.

The prompt is the tokenizer's chat template (system + user turn + generation prompt) when it has
one, else a plain "### Instruction / ### Response" frame; the response ends with EOS. Only response
tokens are trained on. On disk (tools/preprocess_sft.py) an example is one indexed-dataset document
of two sequences, prompt and response, so the boundary is kept.
"""

import json
import os
from typing import Dict, List, Sequence, Tuple

import torch

from megakd.data.indexed import read_parts, write_indexed
from megakd.errors import DataError

Example = Tuple[List[int], List[int]]  # (prompt ids, response ids)


def read_jsonl(path: str) -> List[dict]:
    """Records with a string `prompt`, a string `response` (may be empty when generating) and an
    optional `system`."""
    if not os.path.isfile(path):
        raise DataError(f"instruction data {path} does not exist; pass a jsonl file with "
                        f"'prompt' and 'response' fields")
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n} is not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) \
                    or not isinstance(rec.get("response", ""), str):
                raise DataError(f"{path}:{n} needs a string 'prompt' and a string 'response'")
            records.append(rec)
    if not records:
        raise DataError(f"instruction data {path} holds no records")
    return records


def prompt_ids(tokenizer, record: dict) -> List[int]:
    """The tokens the model sees before its answer."""
    hf = tokenizer.hf_tokenizer
    if getattr(hf, "chat_template", None):
        messages = ([{"role": "system", "content": record["system"]}] if record.get("system") else [])
        messages.append({"role": "user", "content": record["prompt"]})
        ids = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    system = f"{record['system']}\n\n" if record.get("system") else ""
    return tokenizer.tokenize(f"{system}### Instruction:\n{record['prompt']}\n\n### Response:\n")


def encode(tokenizer, record: dict, max_length: int) -> Example:
    """(prompt, response + EOS), cut to max_length tokens: the prompt keeps its end (at most half
    of max_length), the response its start."""
    response = tokenizer.tokenize(record.get("response", "")) + [tokenizer.eod]
    return truncate(prompt_ids(tokenizer, record), response, max_length)


def truncate(prompt: List[int], response: List[int], max_length: int) -> Example:
    prompt = prompt[-max(1, max_length // 2):]
    return prompt, response[:max_length - len(prompt)]


def write_sft(prefix: str, examples: Sequence[Example], vocab_size: int):
    return write_indexed(prefix, ([p, r] for p, r in examples), vocab_size, parts=True)


def load_examples(path: str, tokenizer, max_length: int) -> List[Example]:
    """A jsonl file (encoded now) or an indexed prefix written by tools/preprocess_sft.py."""
    if path.endswith(".jsonl") or path.endswith(".json"):
        return [encode(tokenizer, r, max_length) for r in read_jsonl(path)]
    docs = read_parts(path)
    if any(len(d) != 2 for d in docs):
        raise DataError(f"{path} is not an instruction dataset (documents must be prompt + "
                        f"response); make it with tools/preprocess_sft.py")
    return [truncate(p, r, max_length) for p, r in docs]


def collate(examples: Sequence[Example], pad: int) -> Dict[str, torch.Tensor]:
    """Right-padded batch: tokens [b, S], labels (next token), loss_mask (1 on response targets)."""
    seqs = [p + r for p, r in examples]
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.float)
    for i, ((p, r), s) in enumerate(zip(examples, seqs)):
        tokens[i, :len(s)] = torch.tensor(s)
        mask[i, len(p) - 1:len(s) - 1] = 1.0  # position t predicts token t+1
    labels = torch.roll(tokens, -1, dims=1)
    labels[:, -1] = pad
    positions = torch.arange(width).unsqueeze(0).expand(len(seqs), -1).contiguous()
    return {"tokens": tokens, "labels": labels, "loss_mask": mask, "position_ids": positions}


def to_device(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict[str, torch.Tensor]:
    """A batch built on the CPU (`collate`, the LM data stream) moved to where the model computes."""
    return {k: v.to(device) for k, v in batch.items()}
