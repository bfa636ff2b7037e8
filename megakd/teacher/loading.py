"""Teacher weights for every placement: a megakd checkpoint or a local HF dir, checked against the
student's tokenizer (vocab fingerprint when recorded, padded vocab size), eval mode, frozen."""

import torch.distributed as dist

from megakd.config import ParallelConfig
from megakd.data.tokenizer import vocab_fingerprint
from megakd.errors import ConfigError, MegakdError


def hf_checkpoint(trainer, hf_path: str, model_cfg) -> str:
    """Rank 0 converts an HF model once (cached); every rank gets the path, or the error."""
    from megakd.convert import cached_hf_checkpoint

    box = [None, None]  # (checkpoint path, error): every rank fails when the conversion does
    if trainer.env.rank == 0:
        try:
            box[0] = cached_hf_checkpoint(hf_path, model_cfg)
        except MegakdError as e:
            box[1] = e
    dist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


def load_teacher(trainer, parallel: ParallelConfig):
    """The teacher model (eval, frozen) from teacher.checkpoint or teacher.hf_path, checked against
    the student's tokenizer: same vocab fingerprint (when recorded) and the same padded vocab."""
    from megakd.convert import load_checkpoint_model, model_config_from_hf

    cfg = trainer.cfg
    t = cfg.teacher
    path = t.checkpoint or hf_checkpoint(trainer, t.hf_path, model_config_from_hf(t.hf_path))
    teacher, common = load_checkpoint_model(path, parallel)
    mine = vocab_fingerprint(trainer.tokenizer.hf_tokenizer)
    theirs = common.get("tokenizer", {})  # recorded by the trainer; absent in HF conversions
    if theirs.get("fingerprint", mine) != mine:
        raise ConfigError(f"teacher {path} was trained with tokenizer {theirs.get('path')} "
                          f"(vocab fingerprint {theirs['fingerprint']}), the student uses "
                          f"{cfg.data.tokenizer} ({mine}); distill between models that "
                          f"share a tokenizer")
    student_vocab = trainer.model.vocab_size
    if teacher.vocab_size != student_vocab or common["vocab_size"] > trainer.tokenizer.vocab_size:
        raise ConfigError(f"teacher {path} has vocabulary {common['vocab_size']} (padded "
                          f"{teacher.vocab_size}) but the student's tokenizer has "
                          f"{trainer.tokenizer.vocab_size} (padded {student_vocab}); distill "
                          f"between models that share a tokenizer")
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
