"""The student set-up both trainers share (pre-training `Trainer`, instruction `InstructionTrainer`).

Parallel state, the validated config (model.init_from_hf replaces model.* by the HF architecture),
the tokenizer, the megatron-core model with its start weights, DDP, optimizer and LR schedule.
"""

from dataclasses import dataclass
from typing import Any

from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

from megakd import checkpoint, platform
from megakd.config import Config
from megakd.data.tokenizer import MegatronTokenizer, load_tokenizer
from megakd.models import build_model
from megakd.teacher.loading import hf_checkpoint
from megakd.training.optimizer import build_optimizer, build_scheduler


@dataclass(frozen=True)
class Student:
    env: platform.DistEnv
    tokenizer: MegatronTokenizer
    model: Any
    """The bare megatron-core GPTModel (this rank's stage and TP shard)."""
    ddp: DistributedDataParallel
    optimizer: Any
    scheduler: Any
    dp_rank: int
    dp_size: int


def resumes(cfg: Config) -> bool:
    """Whether the run continues from a checkpoint in checkpoint.load."""
    c = cfg.checkpoint
    return bool(c.load) and checkpoint.latest_iteration(c.load) is not None


def set_up_student(cfg: Config) -> Student:
    """Initialise the job, validate `cfg` against it and build the student. Its start weights
    (checkpoint.pretrained or model.init_from_hf) are loaded unless the run resumes, where the
    trainer loads the checkpoint with the optimizer state."""
    p = cfg.parallel
    platform.init_distributed(p.timeout_minutes)
    cfg.validate(platform.job_world_size())
    env = platform.init_model_parallel(p.tp, p.pp, cfg.train.seed, p.timeout_minutes)
    hf_init = None
    hf_path = cfg.model.init_from_hf
    if hf_path:  # the HF architecture replaces model.*: check the result again
        from megakd.convert import model_config_from_hf

        cfg.model = model_config_from_hf(hf_path, base=cfg.model)
        cfg.validate(platform.job_world_size())
        hf_init = hf_checkpoint(hf_path, cfg.model)
    tokenizer = MegatronTokenizer(load_tokenizer(cfg.data.tokenizer))
    model = build_model(cfg.model, p, tokenizer.vocab_size, cfg.train.seq_length)
    start = cfg.checkpoint.pretrained or hf_init
    if start and not resumes(cfg):
        checkpoint.load_weights(start, model)
    ddp = DistributedDataParallel(
        model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                                    use_distributed_optimizer=p.distributed_optimizer),
        module=model)
    optimizer = build_optimizer(cfg, [ddp])
    return Student(env, tokenizer, model, ddp, optimizer, build_scheduler(cfg, optimizer),
                   ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())
