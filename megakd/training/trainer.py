"""The training story: set up parallel state, model, optimizer and data; loop; validate; checkpoint.

Everything distributed is megatron-core's: GPTModel, DDP with grad buckets, (distributed) optimizer,
`get_forward_backward_func` (1F1B when PP > 1), `finalize_model_grads`, dist_checkpointing.
Losses are summed per token and divided by the global token count (`calculate_per_token_loss`), so
the loss and gradients of a step do not depend on how the global batch is split over DP ranks and
micro-batches.
"""

import time
from functools import partial
from typing import Dict, Iterator, List

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from megakd import checkpoint, placements, platform, schedule
from megakd.config import Config
from megakd.data.gpt import BatchStream, build_datasets
from megakd.data.tokenizer import vocab_fingerprint
from megakd.losses import SparseTarget, distill_loss, fuses_lm, schedules
from megakd.models import sharded_logits
from megakd.platform import comm, faults
from megakd.teacher.base import TeacherContext
from megakd.training.logging import MetricsLogger
from megakd.training.optimizer import optimizer_step
from megakd.training.student import resumes, set_up_student



class Trainer:
    loss_keys = ["lm loss"]
    """What loss_func reports per micro-batch, each as a [sum, token count] pair."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        p = cfg.parallel
        s = set_up_student(cfg)
        self.env, self.tokenizer, self.model, self.ddp = s.env, s.tokenizer, s.model, s.ddp
        self.optimizer, self.scheduler, self.dp_rank, self.dp_size = (s.optimizer, s.scheduler,
                                                                      s.dp_rank, s.dp_size)
        self.num_microbatches = cfg.train.global_batch_size // (cfg.train.micro_batch_size * self.dp_size)
        mconfig = self.model.config
        mconfig.no_sync_func = self.ddp.no_sync
        # The schedule may run a wrapper around the DDP model (TeacherSource.pipeline): the grads
        # to finalize are always the student's.
        mconfig.finalize_model_grads_func = \
            lambda _model, *args, **kwargs: finalize_model_grads([self.ddp], *args, **kwargs)
        mconfig.grad_scale_func = self.optimizer.scale_loss

        self.spec = cfg.kd.spec()  # the KD target: kind, kind_args, temperature, top_p, top_k
        source = placements.placement(cfg).source_class()
        self.teacher = source(TeacherContext.of(
            cfg, self.tokenizer, vocab_size=self.model.vocab_size, rank=self.env.rank,
            dp_rank=self.dp_rank, dp_size=self.dp_size, num_microbatches=self.num_microbatches,
            last_stage=ps.is_pipeline_last_stage(), device=self.env.device)) if source else None
        self.schedule_model, self.adjust_shapes = self.ddp, None
        if self.teacher is not None:
            self.loss_keys = ["lm loss", "kd loss", "loss"]
            self.schedule_model, self.adjust_shapes = self.teacher.pipeline(self.ddp)

        self.iteration = 0
        self.consumed_samples = 0
        self._load()

        self.train_ds, self.valid_ds = build_datasets(cfg, self.tokenizer,
                                                      *schedule.sample_counts(cfg.train))
        self.train_iter = self._batches(self.train_ds, self.consumed_samples)
        if self.teacher is not None:
            self.teacher.start(self.iteration, self.consumed_samples)
        is_logger = self.env.rank == 0
        self.logger = MetricsLogger(is_logger, cfg.log.tensorboard_dir, cfg.log.metrics_file)
        self.forward_backward = get_forward_backward_func()
        if is_logger:
            n = sum(x.numel() for x in self.model.parameters())
            print(f"megakd: world {self.env.world_size} (tp {p.tp}, pp {p.pp}, dp {self.dp_size}) on "
                  f"{self.env.backend}; stage-0 params {n:,}; start at iteration {self.iteration}; "
                  f"checkpoints -> {cfg.checkpoint.save or 'none'}", flush=True)

    # ------------------------------------------------------------------ checkpoints
    def _load(self):
        """Resume from checkpoint.load (the start weights were loaded by `set_up_student`)."""
        if resumes(self.cfg):
            common = checkpoint.load(self.cfg.checkpoint.load, self.model, self.optimizer,
                                     self.scheduler)
            self.iteration = common["iteration"]
            self.consumed_samples = common["consumed_samples"]

    def save(self):
        if not self.cfg.checkpoint.save:
            return
        common = {"consumed_samples": self.consumed_samples, "config": self.cfg.to_dict(),
                  "vocab_size": self.tokenizer.vocab_size,
                  "tokenizer": {"path": self.cfg.data.tokenizer,
                                "fingerprint": vocab_fingerprint(self.tokenizer.hf_tokenizer)},
                  **checkpoint.layout_state()}
        checkpoint.save(self.cfg.checkpoint.save, self.iteration, self.model, self.optimizer,
                        self.scheduler, common)

    # ------------------------------------------------------------------ steps
    def _batches(self, dataset, consumed_samples: int) -> Iterator[dict]:
        """This DP rank's micro-batches from `consumed_samples` on (with token keys and the teacher
        source's prefetching when it asks for them)."""
        stream = iter(BatchStream(dataset, self.cfg.train.micro_batch_size, self.dp_rank,
                                  self.dp_size, consumed_samples, self.cfg.data.num_workers,
                                  keys=self.teacher is not None and self.teacher.needs_keys))
        return self.teacher.batches(stream) if self.teacher is not None else stream

    def forward_step(self, data_iterator: Iterator[dict], model):
        batch = {k: v.to(self.env.device) if torch.is_tensor(v) else v
                 for k, v in next(data_iterator).items()}
        tokens, positions, labels = batch["tokens"], batch["position_ids"], batch["labels"]
        if self.teacher is None or not ps.is_pipeline_last_stage():
            # per-token CE (vocab-parallel) on the last stage, hidden states on the others
            output = model(tokens, positions, None, labels=labels)
            return output, partial(self.loss_func, batch["loss_mask"])
        # KD: the student's vocab-sharded logits, in megatron's [s, b] layout (no transpose copy), feed
        # the LM and KD losses; the [b, s] batch tensors are transposed to match (views, small).
        logits = sharded_logits(self.model, lambda: model(tokens, positions, None))  # [s, b, V/TP]
        target = self.teacher.targets(batch)  # dense [s, b, V/TP] logits or a SparseTarget [b, s, k]
        # Dense teacher logits are truncated here; a SparseTarget arrives truncated by its source.
        spec = self.spec
        if not torch.is_tensor(target):
            target = SparseTarget(target.ids.transpose(0, 1), target.logprobs.transpose(0, 1))
            spec = spec.untruncated()
        kw = dict(tp_group=ps.get_tensor_model_parallel_group(), loss_mask=batch["loss_mask"].t())
        if fuses_lm(target, spec):  # one pass for both: [2, s, b]
            # nothing else reads the logits, so the backward may write their gradient in place
            per_token = distill_loss(logits, target, spec, labels=labels.t(), grad_in_logits=True, **kw)
        else:  # the target stays dense: megatron's CE, on a copy (it edits its input in place), + KD
            lm = self.model.compute_language_model_loss(labels, logits.clone())  # [b, s]
            per_token = torch.stack([lm.float().t(), distill_loss(logits, target, spec, **kw)])
        return per_token.transpose(1, 2), partial(self.loss_func, batch["loss_mask"])

    def alpha(self) -> float:
        """KD weight of the step being computed (kd.alpha_schedule over train.iters)."""
        k = self.cfg.kd
        kwargs = {"constant": {"alpha": k.alpha}, "linear": {"start": 0.0, "end": k.alpha},
                  "wsd": {"peak": k.alpha, "warmup": k.alpha_warmup, "decay": k.alpha_decay}}
        return schedules.alpha_at(k.alpha_schedule, self.iteration, max(self.cfg.train.iters, 1),
                                  **kwargs[k.alpha_schedule])

    def loss_func(self, loss_mask: torch.Tensor, per_token: torch.Tensor):
        """Sum of masked per-token losses + token count; megatron divides by the global count.

        LM only: per_token is the CE [b, s]. With KD it is [2, b, s] (LM, KD), mixed by alpha."""
        mask = loss_mask.float()
        count = mask.sum()
        tokens = count.to(torch.int)
        if self.teacher is None:
            loss = (per_token.float() * mask).sum()
            return loss, tokens, {"lm loss": torch.stack([loss.detach(), count])}
        lm, kd = (per_token[0] * mask).sum(), (per_token[1] * mask).sum()
        loss = schedules.mix(lm, kd, self.alpha())
        return loss, tokens, {"lm loss": torch.stack([lm.detach(), count]),
                              "kd loss": torch.stack([kd.detach(), count]),
                              "loss": torch.stack([loss.detach(), count])}

    def _run(self, data_iter, forward_only: bool) -> List[Dict[str, torch.Tensor]]:
        t = self.cfg.train
        return self.forward_backward(
            forward_step_func=self.forward_step, data_iterator=data_iter,
            model=[self.schedule_model], num_microbatches=self.num_microbatches,
            seq_length=t.seq_length, micro_batch_size=t.micro_batch_size, forward_only=forward_only,
            adjust_tensor_shapes_fn=self.adjust_shapes)

    def _reduce(self, stats: List[Dict[str, torch.Tensor]]) -> Dict[str, float]:
        """Per-microbatch [sum, count] pairs -> global per-token means, known on every rank."""
        total = torch.zeros(len(self.loss_keys), 2, dtype=torch.float64)
        for s in stats:  # empty except on the last pipeline stage
            total += torch.stack([s[k].double().cpu() for k in self.loss_keys])
        comm.all_reduce(total, group=ps.get_data_parallel_group())
        comm.broadcast(total, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
        return {k: (total[i, 0] / total[i, 1].clamp(min=1)).item()
                for i, k in enumerate(self.loss_keys)}

    def train_step(self) -> Dict[str, float]:
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        stats = self._run(self.train_iter, forward_only=False)
        stepped = optimizer_step(self.optimizer, self.scheduler)
        metrics = self._reduce(stats)
        if self.teacher is not None:
            metrics["alpha"] = self.alpha()
            metrics.update(self.teacher.metrics())
        metrics.update(stepped)
        return metrics

    def evaluate(self, evaluation: int) -> Dict[str, float]:
        """Evaluation number `evaluation` (1-based) over its train.eval_iters steps of validation data."""
        t = self.cfg.train
        valid_iter = self._batches(self.valid_ds, schedule.valid_start(t, evaluation))
        for m in self.ddp.modules():
            m.eval()
        stats = []
        with torch.no_grad():
            for _ in range(t.eval_iters):
                stats += self._run(valid_iter, forward_only=True)
        self.ddp.train()
        return self._reduce(stats)

    # ------------------------------------------------------------------ loop
    def train(self) -> None:
        t, c, lg = self.cfg.train, self.cfg.checkpoint, self.cfg.log
        self.ddp.train()
        tokens_per_step = t.global_batch_size * t.seq_length
        for step in schedule.steps(t, self.iteration):
            faults.maybe_kill_at_iteration(step.iteration)
            start = time.perf_counter()
            metrics = self.train_step()
            self.iteration = step.iteration
            self.consumed_samples += t.global_batch_size
            elapsed = time.perf_counter() - start
            metrics["tokens/s"] = tokens_per_step / elapsed
            metrics["step time"] = elapsed
            if self.iteration % lg.interval == 0 or self.iteration == t.iters:
                self.logger.log(self.iteration, metrics)
            if step.evaluation:
                self.logger.log(self.iteration, self.evaluate(step.evaluation), prefix="valid")
            if c.interval and self.iteration % c.interval == 0 or step.exit:
                self.save()
        if c.save and (checkpoint.latest_iteration(c.save) or -1) < self.iteration:
            self.save()
        self.logger.close()


def run(cfg: Config) -> None:
    """Build a Trainer from a validated config, train, tear down. With a dedicated teacher the job
    is split first, and the teacher ranks serve targets instead of training."""
    try:
        placement = placements.placement(cfg)
        if placement.own_ranks:
            cfg.validate(platform.launched_world_size())
            split = platform.init_split(placement.teacher_ranks(cfg), cfg.parallel.timeout_minutes)
            if split.role == platform.roles.TEACHER:
                placement.server_class()(cfg, split).serve()
                return
        Trainer(cfg).train()
    finally:
        platform.destroy()
