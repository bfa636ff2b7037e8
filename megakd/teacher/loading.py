"""Teacher weights for every placement (co-located, dedicated ranks, the offline logits dump): a
megakd checkpoint or a local HF dir, checked against the student's tokenizer, eval mode, frozen, in
the precision and layer spec its caller asks for (Config.teacher_runtime, or the dump's options).

Nothing here needs a Trainer: the dump tool and dedicated teacher ranks load teachers too. Callers
have megatron parallel_state set up for the layout the teacher runs at (`parallel`)."""

from typing import Optional

import torch.distributed as dist

from megakd.config import ParallelConfig, TeacherConfig
from megakd.data.tokenizer import vocab_fingerprint
from megakd.errors import ConfigError, MegakdError
from megakd.platform import comm


def hf_checkpoint(hf_path: str, model_cfg) -> str:
    """Global rank 0 (of the default group) converts an HF model once (cached); every rank gets the
    path, or the error."""
    from megakd.convert import cached_hf_checkpoint

    box = (None, None)  # (checkpoint path, error): every rank fails when the conversion does
    if dist.get_rank() == 0:
        try:
            box = (cached_hf_checkpoint(hf_path, model_cfg), None)
        except MegakdError as e:
            box = (None, e)
    path, error = comm.broadcast_object(box, src=0)
    if error is not None:
        raise error
    return path


def teacher_path(t: TeacherConfig) -> str:
    """The teacher's dist checkpoint: teacher.checkpoint, or teacher.hf_path converted (cached)."""
    from megakd.convert import model_config_from_hf

    return t.checkpoint or hf_checkpoint(t.hf_path, model_config_from_hf(t.hf_path))


def check_layout(path: str, m, parallel: ParallelConfig):
    """One-line errors for a teacher (ModelConfig `m`) that cannot be split at `parallel`."""
    groups = m.num_query_groups or m.num_attention_heads
    if m.num_attention_heads % parallel.tp or groups % parallel.tp:
        raise ConfigError(f"teacher {path} has {m.num_attention_heads} attention heads in {groups} "
                          f"query groups, which tp={parallel.tp} does not divide (a co-located "
                          f"teacher runs at the student's parallel.tp, a dedicated one at "
                          f"teacher.tp); use a tp that divides {groups}")
    if m.num_layers % parallel.pp:
        raise ConfigError(f"teacher {path} has {m.num_layers} layers, which pp={parallel.pp} does not divide "
                          f"(a co-located teacher's layers are split over the student's parallel.pp "
                          f"stages, a dedicated one's over teacher.pp); use a pp that divides "
                          f"{m.num_layers}")


def load_teacher(path: str, parallel: ParallelConfig, tokenizer, tokenizer_path: str,
                 padded_vocab: Optional[int] = None, runtime=None):
    """The teacher model (eval, frozen) of checkpoint `path` at layout `parallel`, run as `runtime`
    (megakd.config.Runtime; default: as saved, at the local spec).

    Refuses a teacher trained with another tokenizer (vocab fingerprint, when the checkpoint records
    one) or with more token ids than the student's tokenizer. `padded_vocab`: the student's padded
    vocab, required equal when dense logits are compared shard by shard (co-located); sparse targets
    (global ids) do not care about Megatron's padding, so dedicated/offline pass None."""
    from megakd.convert import load_checkpoint_model, read_checkpoint_config

    check_layout(path, read_checkpoint_config(path)[0], parallel)
    teacher, common = load_checkpoint_model(path, parallel, runtime)
    mine = vocab_fingerprint(tokenizer.hf_tokenizer)
    theirs = common.get("tokenizer", {})  # recorded by the trainer; absent in HF conversions
    if theirs.get("fingerprint", mine) != mine:
        raise ConfigError(f"teacher {path} was trained with tokenizer {theirs.get('path')} "
                          f"(vocab fingerprint {theirs['fingerprint']}), the student uses "
                          f"{tokenizer_path} ({mine}); distill between models that "
                          f"share a tokenizer")
    if (padded_vocab is not None and teacher.vocab_size != padded_vocab) \
            or common["vocab_size"] > tokenizer.vocab_size:
        raise ConfigError(f"teacher {path} has vocabulary {common['vocab_size']} (padded "
                          f"{teacher.vocab_size}) but the student's tokenizer has "
                          f"{tokenizer.vocab_size}" + (f" (padded {padded_vocab})" if padded_vocab else "")
                          + "; distill between models that share a tokenizer")
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
