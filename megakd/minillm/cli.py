"""Shared set-up of the MiniLLM tools (generate_responses, eval_generation): parallel state, the
tokenizer, models from a checkpoint or a Hugging Face dir, and jsonl output written atomically."""

import json
import os
from typing import Optional

from megatron.core import parallel_state as ps

from megakd import platform
from megakd.config import ParallelConfig, TeacherConfig
from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
from megakd.errors import ConfigError
from megakd.platform import comm
from megakd.teacher.loading import load_teacher, teacher_path


def add_model_args(parser, name: str, required: bool = True):
    g = parser.add_mutually_exclusive_group(required=required)
    g.add_argument(f"--{name}", help=f"{name}: a megakd dist checkpoint")
    g.add_argument(f"--{name}-hf", help=f"{name}: a local Hugging Face model dir or .gguf (converted once)")


def setup(tp: int, tokenizer_path: str, seed: int = 1234) -> MegatronTokenizer:
    env = platform.init_distributed()
    if env.world_size % tp:
        raise ConfigError(f"--tp {tp} does not divide the {env.world_size} launched processes")
    platform.init_model_parallel(tp, 1, seed)
    return MegatronTokenizer(load_tokenizer(tokenizer_path))


def load_model(checkpoint: Optional[str], hf: Optional[str], tp: int, tokenizer, tokenizer_path: str):
    """A frozen eval-mode model (megakd.teacher.loading, so the tokenizer check applies)."""
    return load_teacher(teacher_path(TeacherConfig(checkpoint=checkpoint, hf_path=hf)),
                        ParallelConfig(tp=tp), tokenizer, tokenizer_path)


def gather_dp(mine: list) -> list:
    """Undo `dp_share` (items[r::n]): every DP rank's list, interleaved back into one order."""
    parts = comm.all_gather_object(mine, group=ps.get_data_parallel_group())
    return [p[i] for i in range(max(len(p) for p in parts)) for p in parts if i < len(p)]


def write_jsonl(path: str, records: list):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
