"""MiniLLM's policy-gradient objective for the reverse KL, KL(q_student || p_teacher), per token.

For a sampled response y (tensors [b, T], `mask` 1 on response tokens):
- reward r_t = log p(y_t | y_<t) - log q_old(y_t | y_<t)  (q_old: the student that sampled y)
- future reward R_t = sum_{t' > t} gamma^(t'-t-1) r_t'  (the current step is left to the single-step
  term), or sum_{t' >= t} gamma^(t'-t) r_t' without it; length normalisation divides R_t by the
  number of rewards summed (the response's remaining length), so long answers do not dominate.
- importance weight w_t = q_old(y_t) / p~(y_t) when y was drawn from p~ (teacher-mixed sampling).
- policy term (PPO-clipped, eps): -w_t * min(rho_t R_t, clip(rho_t, 1-eps, 1+eps) R_t),
  rho_t = q_theta(y_t) / q_old(y_t).
- single-step term: w_t * KL(q_theta(.|y_<t) || p(.|y_<t)), the expectation over y_t of -r_t computed
  exactly over the vocabulary (vocab-parallel, megakd.losses rkl), which removes the sampling
  variance of the current step.
"""

from dataclasses import dataclass

import torch
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megakd.losses import distill_loss


def real_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Vocab-sharded logits with Megatron's padding ids (>= the tokenizer's vocab) pushed to ~zero
    probability, so q is the distribution the sampler draws from (it never emits padding ids).
    Finite (-1e4, not -inf): the fused KL terms subtract logits."""
    v_local = logits.shape[-1]
    start = ps.get_tensor_model_parallel_rank() * v_local
    if start + v_local <= vocab_size:
        return logits
    ids = torch.arange(start, start + v_local, device=logits.device)
    return logits.masked_fill(ids >= vocab_size, -1e4)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log q(tokens) from vocab-sharded logits [b, T, V/TP] (megatron-core's vocab-parallel CE,
    differentiable). A copy goes in: that CE edits its input in place."""
    ce = vocab_parallel_cross_entropy(logits.transpose(0, 1).contiguous().clone().float(),
                                      tokens.transpose(0, 1).contiguous())
    return -ce.transpose(0, 1)


def rewards(teacher_logprob: torch.Tensor, student_logprob: torch.Tensor) -> torch.Tensor:
    """r_t = log p_teacher(y_t) - log q_student(y_t)."""
    return teacher_logprob - student_logprob


def future_rewards(r: torch.Tensor, mask: torch.Tensor, gamma: float, length_norm: bool,
                   include_current: bool) -> torch.Tensor:
    """R_t over the response (masked positions contribute nothing); see the module docstring."""
    r = r * mask
    acc = torch.zeros_like(r[:, 0])
    count = torch.zeros_like(r[:, 0])
    out = torch.zeros_like(r)
    for t in reversed(range(r.shape[1])):
        if include_current:
            acc, count = r[:, t] + gamma * acc, count + mask[:, t]
        out[:, t] = acc / count.clamp(min=1) if length_norm else acc
        if not include_current:
            acc, count = r[:, t] + gamma * acc, count + mask[:, t]
    return out * mask


def importance_weights(old_logprob: torch.Tensor, sample_logprob: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """w_t = q_old(y_t) / p~(y_t), per token (MiniLLM's per-step approximation of the sequence ratio)."""
    return torch.where(mask > 0, (old_logprob - sample_logprob).exp(), torch.zeros_like(mask))


def clipped_policy_term(logprob: torch.Tensor, old_logprob: torch.Tensor, advantage: torch.Tensor,
                        clip_eps: float):
    """Per-token -min(rho A, clip(rho) A) and where the clip was active (eps <= 0: no clipping)."""
    rho = (logprob - old_logprob).exp()
    plain = rho * advantage
    if clip_eps <= 0:
        return -plain, torch.zeros_like(plain, dtype=torch.bool)
    clipped = rho.clamp(1 - clip_eps, 1 + clip_eps) * advantage
    return -torch.minimum(plain, clipped), clipped < plain


def single_step_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   mask: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Exact per-step KL(q || p) [b, T] from logits sharded over `tp_group`, gradient to the
    student only."""
    return distill_loss(student_logits, teacher_logits, kind="rkl", tp_group=tp_group, loss_mask=mask)


@dataclass
class Rollout:
    """Everything the policy step needs about a batch of sampled responses, aligned with the model
    input tokens[:, :-1] (position t predicts token t+1)."""

    tokens: torch.Tensor  # [b, S]
    mask: torch.Tensor  # [b, S-1] 1 where the target is a sampled response token
    old_logprob: torch.Tensor  # [b, S-1]
    teacher_logits: torch.Tensor  # [b, S-1, V/TP]
    advantage: torch.Tensor  # [b, S-1]
    weight: torch.Tensor  # [b, S-1] importance weights
    reward: torch.Tensor  # [b, S-1]


def policy_loss(student_logits: torch.Tensor, ro: Rollout, clip_eps: float, single_step: bool):
    """Per-token MiniLLM loss [b, S-1] and per-token stats (clip flags, exact reverse KL)."""
    logprob = token_logprobs(student_logits, ro.tokens[:, 1:])
    pg, clipped = clipped_policy_term(logprob, ro.old_logprob, ro.advantage, clip_eps)
    kl = single_step_kl(student_logits, ro.teacher_logits, ro.mask, ps.get_tensor_model_parallel_group())
    loss = ro.weight * pg + (ro.weight * kl if single_step else 0.0)
    return loss * ro.mask, {"clipped": clipped.float() * ro.mask, "kl": kl.detach() * ro.mask}
