"""megatron-core optimizer (optionally the distributed optimizer) and its LR schedule."""

from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megakd.config import Config
from megakd.models.gpt import _DTYPES


def build_optimizer(cfg: Config, model_chunks):
    o, m = cfg.optim, cfg.model
    config = OptimizerConfig(
        optimizer=o.optimizer,
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.beta1,
        adam_beta2=o.beta2,
        adam_eps=o.eps,
        clip_grad=o.clip_grad,
        initial_loss_scale=o.initial_loss_scale,
        loss_scale=o.loss_scale,
        bf16=m.precision == "bf16",
        fp16=m.precision == "fp16",
        params_dtype=_DTYPES[m.precision],
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
    )
    return get_megatron_optimizer(config, model_chunks)


def build_scheduler(cfg: Config, optimizer) -> OptimizerParamScheduler:
    """LR schedule in iterations: warm-up, then constant / linear / cosine / WSD decay to min_lr."""
    o = cfg.optim
    decay = o.decay_iters or cfg.train.iters
    style = {"constant": "constant", "linear": "linear", "cosine": "cosine", "wsd": "WSD"}[o.lr_schedule]
    wsd_decay = o.wsd_decay_iters if o.wsd_decay_iters is not None else max(1, decay // 5)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if o.warmup_iters else o.lr,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.warmup_iters,
        lr_decay_steps=max(decay, o.warmup_iters + 1),
        lr_decay_style=style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=max(decay, 1),
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=wsd_decay if style == "WSD" else None,
        lr_wsd_decay_style=o.wsd_decay_style if style == "WSD" else None,
    )


def optimizer_step(optimizer, scheduler) -> dict:
    """One optimizer + LR-schedule step (grads already reduced); the metrics every trainer logs."""
    ok, grad_norm, _ = optimizer.step()
    scheduler.step(increment=1)
    metrics = {"lr": optimizer.param_groups[0]["lr"],
               "grad norm": float(grad_norm) if grad_norm is not None else 0.0}
    if not ok:
        metrics["skipped"] = 1.0
    return metrics
