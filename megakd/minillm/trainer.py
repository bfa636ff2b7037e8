"""Instruction training of a megatron-core student: SFT, word-level KD, SeqKD and MiniLLM.

One optimizer step per iteration over `train.global_batch_size` prompt/response examples (MiniLLM:
prompts, answered by fresh rollouts every `minillm.ppo_epochs` steps), split over DP ranks and
micro-batches. Every loss is a sum over tokens divided by the global token count, and megatron-core's
DDP sums gradients over DP (calculate_per_token_loss), so a step does not depend on the layout.
PP = 1 (no pipeline schedule is needed for a single-stage model): the forward/backward is direct.
Batches are built on the CPU and moved to `platform.device()`; rollouts are sampled there too.
"""

import time
from typing import Dict, List

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import finalize_model_grads

from megakd import checkpoint, platform
from megakd.config import Config, ParallelConfig
from megakd.data.tokenizer import vocab_fingerprint
from megakd.losses import distill_loss
from megakd.minillm import losses
from megakd.minillm.data import Example, collate, load_examples, to_device
from megakd.minillm.evaluate import evaluate
from megakd.minillm.generate import answer_all, generate, seeded
from megakd.platform import comm
from megakd.teacher.loading import load_teacher, teacher_path
from megakd.training.logging import MetricsLogger
from megakd.training.optimizer import optimizer_step
from megakd.training.student import set_up_student


class InstructionTrainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        p, mm = cfg.parallel, cfg.minillm
        s = set_up_student(cfg)  # validation keeps instruction runs at parallel.pp=1
        self.env, self.tokenizer, self.model, self.ddp = s.env, s.tokenizer, s.model, s.ddp
        self.optimizer, self.scheduler, self.dp_rank, self.dp_size = (s.optimizer, s.scheduler,
                                                                      s.dp_rank, s.dp_size)
        self.device = self.env.device
        self.teacher = None
        self.spec = cfg.kd.spec()  # method kd: the KD target (kind, kind_args, temperature, top_p, top_k)
        if mm.method != "sft":
            self.teacher = load_teacher(teacher_path(cfg.teacher), ParallelConfig(tp=p.tp), self.tokenizer,
                                        cfg.data.tokenizer, self.model.vocab_size, cfg.teacher_runtime())
        self.train_examples = load_examples(mm.train_data, self.tokenizer, cfg.train.seq_length)
        self.valid_examples = (load_examples(mm.valid_data, self.tokenizer, cfg.train.seq_length)
                               if mm.valid_data else [])
        if mm.method == "seqkd":
            self.train_examples = self.teacher_answers(self.train_examples)
        self.order = torch.randperm(len(self.train_examples),
                                    generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
        self.lm_stream = self._lm_stream() if mm.method == "minillm" and mm.lm_coef > 0 else None
        self.rollouts: List[losses.Rollout] = []
        self.iteration = 0
        self.logger = MetricsLogger(self.env.rank == 0, cfg.log.tensorboard_dir, cfg.log.metrics_file)

    # ------------------------------------------------------------------ data
    def _lm_stream(self):
        from megakd.data.gpt import BatchStream, build_datasets

        t = self.cfg.train
        train_ds, _ = build_datasets(self.cfg, self.tokenizer, t.iters * t.global_batch_size, 0)
        return iter(BatchStream(train_ds, t.micro_batch_size, self.dp_rank, self.dp_size))

    def local_positions(self) -> List[int]:
        """Positions in the global sample stream of this DP rank's share of the step's batch
        (MiniLLM takes a batch per rollout, i.e. every minillm.ppo_epochs steps)."""
        g = self.cfg.train.global_batch_size
        share = g // self.dp_size
        batch = self.iteration
        if self.cfg.minillm.method == "minillm":
            batch //= self.cfg.minillm.ppo_epochs
        return [batch * g + self.dp_rank * share + j for j in range(share)]

    def local_examples(self) -> List[Example]:
        """This DP rank's share of the step's global batch (a fixed shuffled order, cycled)."""
        return [self.train_examples[self.order[i % len(self.order)]] for i in self.local_positions()]

    def micro_batches(self, items: list) -> List[list]:
        mb = self.cfg.train.micro_batch_size
        return [items[i:i + mb] for i in range(0, len(items), mb)]

    def teacher_answers(self, examples: List[Example]) -> List[Example]:
        """SeqKD: the teacher's greedy answer replaces every reference response."""
        answers = answer_all(self.teacher, [p for p, _ in examples], batch_size=self.cfg.train.micro_batch_size,
                             vocab_size=self.tokenizer.vocab_size, eos=self.tokenizer.eod,
                             max_new_tokens=self.cfg.minillm.max_new_tokens, greedy=True)
        return [(p, r) for (p, _), r in zip(examples, answers)]

    # ------------------------------------------------------------------ losses
    def _global(self, values: List[float]) -> List[float]:
        return comm.all_reduce(torch.tensor(values, dtype=torch.float64),
                               group=ps.get_data_parallel_group()).tolist()

    def supervised_step(self) -> Dict[str, float]:
        """sft / seqkd: CE on response tokens; kd: (1-alpha)*CE + alpha*KD(teacher) on them."""
        k = self.cfg.kd
        batches = [to_device(collate(c, self.tokenizer.eod), self.device)
                   for c in self.micro_batches(self.local_examples())]
        total = self._global([sum(float(b["loss_mask"].sum()) for b in batches)])[0]
        sums = torch.zeros(3, dtype=torch.float64)
        for b in batches:
            mask = b["loss_mask"]
            logits = self.ddp(b["tokens"], b["position_ids"], None)
            ce = -losses.token_logprobs(logits, b["labels"])
            per_token, kd = ce, torch.zeros_like(ce)
            if self.cfg.minillm.method == "kd":
                with torch.no_grad():
                    target = self.teacher(b["tokens"], b["position_ids"], None)
                kd = distill_loss(logits, target, self.spec, tp_group=ps.get_tensor_model_parallel_group(),
                                  loss_mask=mask)
                per_token = (1 - k.alpha) * ce + k.alpha * kd
            loss = (per_token * mask).sum()
            (loss / total).backward()
            sums += torch.tensor([loss.item(), (ce * mask).sum().item(), (kd * mask).sum().item()],
                                 dtype=torch.float64)
        s = self._global(sums.tolist())
        out = {"loss": s[0] / total, "lm loss": s[1] / total}
        if self.cfg.minillm.method == "kd":
            out["kd loss"] = s[2] / total
        return out

    def logits(self, model, tokens, positions):
        """Vocab-sharded logits over the tokenizer's real vocabulary (what generation samples from)."""
        return losses.real_vocab(model(tokens, positions, None), self.tokenizer.vocab_size)

    @torch.no_grad()
    def make_rollouts(self) -> List[losses.Rollout]:
        """Sample responses to this rank's prompts; score them with the teacher and the sampler."""
        mm = self.cfg.minillm
        mix = mm.teacher_mix if mm.teacher_mix > 0 else None
        on_policy = mix is None and mm.temperature == 1.0 and mm.top_p == 1.0
        out = []
        # one random stream per sample (seed, stream position): rollouts do not depend on DP/micro-batching
        gens = [seeded(self.cfg.train.seed * 1_000_003 + i, self.device) for i in self.local_positions()]
        for chunk, chunk_gens in zip(self.micro_batches(self.local_examples()), self.micro_batches(gens)):
            s = generate([self.model] + ([self.teacher] if mix else []), [p for p, _ in chunk],
                         vocab_size=self.tokenizer.vocab_size, eos=self.tokenizer.eod,
                         max_new_tokens=mm.max_new_tokens, temperature=mm.temperature, top_p=mm.top_p,
                         mix=mix, generator=chunk_gens)
            tokens, mask = s.tokens, s.response_mask[:, 1:].float()
            inputs = tokens[:, :-1]
            pos = torch.arange(inputs.shape[1], device=self.device).unsqueeze(0).expand_as(inputs)
            self.model.eval()
            old = losses.token_logprobs(self.logits(self.model, inputs, pos), tokens[:, 1:]) * mask
            self.model.train()
            teacher_logits = self.logits(self.teacher, inputs, pos)
            teacher_lp = losses.token_logprobs(teacher_logits, tokens[:, 1:]) * mask
            reward = losses.rewards(teacher_lp, old) * mask
            adv = losses.future_rewards(reward, mask, mm.gamma, mm.length_norm,
                                        include_current=not mm.single_step)
            weight = mask if on_policy else losses.importance_weights(old, s.sample_logprob[:, 1:], mask)
            out.append(losses.Rollout(tokens, mask, old, teacher_logits, adv, weight, reward))
        return out

    def minillm_step(self) -> Dict[str, float]:
        mm = self.cfg.minillm
        if self.iteration % mm.ppo_epochs == 0:
            self.rollouts = self.make_rollouts()
        total = self._global([sum(float(r.mask.sum()) for r in self.rollouts)])[0]
        sums = torch.zeros(6, dtype=torch.float64)
        for ro in self.rollouts:
            inputs = ro.tokens[:, :-1]
            pos = torch.arange(inputs.shape[1], device=self.device).unsqueeze(0).expand_as(inputs)
            per_token, st = losses.policy_loss(self.logits(self.ddp, inputs, pos), ro, mm.clip_eps,
                                               mm.single_step)
            loss = per_token.sum()
            (loss / max(total, 1.0)).backward()
            sums += torch.tensor([loss.item(), ro.reward.sum().item(), st["kl"].sum().item(),
                                  st["clipped"].sum().item(), ro.weight.sum().item(), len(ro.tokens)],
                                 dtype=torch.float64)
        lm = self.lm_term() if self.lm_stream is not None else 0.0
        s = self._global(sums.tolist())
        t = max(total, 1.0)
        return {"loss": s[0] / t + mm.lm_coef * lm, "reward": s[1] / t, "reverse kl": s[2] / t,
                "clip fraction": s[3] / t, "importance weight": s[4] / t,
                "response length": total / max(s[5], 1.0), "lm loss": lm}

    def lm_term(self) -> float:
        """minillm.lm_coef * LM loss on one global batch of pre-training data (data.prefix)."""
        t = self.cfg.train
        batches = [to_device(next(self.lm_stream), self.device)
                   for _ in range(t.global_batch_size // (t.micro_batch_size * self.dp_size))]
        total = self._global([sum(float(b["loss_mask"].sum()) for b in batches)])[0]
        acc = 0.0
        for b in batches:
            ce = self.ddp(b["tokens"], b["position_ids"], None, labels=b["labels"])
            loss = (ce.float() * b["loss_mask"]).sum()
            (self.cfg.minillm.lm_coef * loss / total).backward()
            acc += loss.item()
        return self._global([acc])[0] / total

    # ------------------------------------------------------------------ loop
    def train_step(self) -> Dict[str, float]:
        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        if self.cfg.minillm.method == "minillm":
            metrics = self.minillm_step()
        else:
            metrics = self.supervised_step()
        finalize_model_grads([self.ddp])
        metrics.update(optimizer_step(self.optimizer, self.scheduler))
        return metrics

    def evaluate(self) -> Dict[str, float]:
        mm = self.cfg.minillm
        return evaluate(self.model, self.teacher, self.valid_examples, vocab_size=self.tokenizer.vocab_size,
                        eos=self.tokenizer.eod, max_new_tokens=mm.max_new_tokens,
                        batch_size=self.cfg.train.micro_batch_size, seed=mm.eval_seed)

    def train(self) -> None:
        t, mm = self.cfg.train, self.cfg.minillm
        can_eval = self.teacher is not None and self.valid_examples
        if can_eval:
            self.logger.log(0, self.evaluate(), prefix="valid")
        self.ddp.train()
        while self.iteration < t.iters:
            start = time.perf_counter()
            metrics = self.train_step()
            self.iteration += 1
            metrics["step time"] = time.perf_counter() - start
            if self.iteration % self.cfg.log.interval == 0 or self.iteration == t.iters:
                self.logger.log(self.iteration, metrics)
            last = self.iteration == t.iters
            if can_eval and (last or (mm.eval_interval and self.iteration % mm.eval_interval == 0)):
                self.logger.log(self.iteration, self.evaluate(), prefix="valid")
        self.save()
        self.logger.close()

    def save(self):
        c = self.cfg.checkpoint
        if not c.save:
            return
        common = {"consumed_samples": self.iteration * self.cfg.train.global_batch_size,
                  "config": self.cfg.to_dict(), "vocab_size": self.tokenizer.vocab_size,
                  "tokenizer": {"path": self.cfg.data.tokenizer,
                                "fingerprint": vocab_fingerprint(self.tokenizer.hf_tokenizer)},
                  **checkpoint.layout_state()}
        checkpoint.save(c.save, self.iteration, self.model, None, None, common)


def run(cfg: Config) -> None:
    trainer = InstructionTrainer(cfg)
    try:
        trainer.train()
    finally:
        platform.destroy()
