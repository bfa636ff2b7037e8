"""MiniLLM loss pieces against hand-computed examples; the single-step term's gradient is the exact
gradient of the per-step reverse KL (float64 gradcheck + the policy-gradient identity)."""

import math

import torch

from megakd.minillm import losses


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype))


def test_reward_is_teacher_minus_student_logprob():
    r = losses.rewards(torch.tensor([[math.log(0.5), math.log(0.1)]]),
                       torch.tensor([[math.log(0.25), math.log(0.1)]]))
    close(r, [[math.log(2.0), 0.0]])


def test_future_reward_discount_and_length_normalisation():
    r = torch.tensor([[9.0, 1.0, 2.0, 3.0, 7.0]])  # position 0: prompt, 4: padding (masked)
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    g = 0.5
    # single step on: R_t sums the rewards after t
    raw = losses.future_rewards(r, mask, g, length_norm=False, include_current=False)
    close(raw, [[0.0, 2 + g * 3, 3.0, 0.0, 0.0]])
    norm = losses.future_rewards(r, mask, g, length_norm=True, include_current=False)
    close(norm, [[0.0, (2 + g * 3) / 2, 3.0 / 1, 0.0, 0.0]])
    # single step off: R_t includes r_t, normalised by the remaining length including t
    cur = losses.future_rewards(r, mask, g, length_norm=True, include_current=True)
    close(cur, [[0.0, (1 + g * 2 + g * g * 3) / 3, (2 + g * 3) / 2, 3.0, 0.0]])


def test_importance_weights():
    old = torch.tensor([[math.log(0.5), math.log(0.3), 0.0]])
    sample = torch.tensor([[math.log(0.25), math.log(0.3), -5.0]])
    w = losses.importance_weights(old, sample, torch.tensor([[1.0, 1.0, 0.0]]))
    close(w, [[2.0, 1.0, 0.0]])


def test_ppo_clipping():
    # rho = 1.5, 1.5, 0.5, 0.5 against advantages +1, -1, +1, -1 with eps = 0.2
    new = torch.log(torch.tensor([0.6, 0.6, 0.2, 0.2]))
    old = torch.log(torch.tensor([0.4, 0.4, 0.4, 0.4]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, clipped = losses.clipped_policy_term(new, old, adv, 0.2)
    close(loss, [-1.2, 1.5, -0.5, 0.8])
    assert clipped.tolist() == [True, False, False, True]
    plain, none = losses.clipped_policy_term(new, old, adv, 0.0)
    close(plain, [-1.5, 1.5, -0.5, 0.5])
    assert not none.any()


def _reference_rkl(s, t):
    logq, logp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    return (logq.exp() * (logq - logp)).sum(-1)


def test_single_step_gradient_is_exact_reverse_kl_gradient():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 11, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 11, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    torch.autograd.gradcheck(lambda x: losses.single_step_kl(x, t, mask), (s,))
    got, = torch.autograd.grad((losses.single_step_kl(s, t, mask) * mask).sum(), s)
    want, = torch.autograd.grad((_reference_rkl(s, t) * mask).sum(), s)
    torch.testing.assert_close(got, want)
    # the policy-gradient identity it replaces: sum_y q(y) (-r(y)) grad log q(y), r = log p - log q
    logq = torch.log_softmax(s, -1)
    r = (torch.log_softmax(t, -1) - logq).detach()
    score, = torch.autograd.grad((logq.exp().detach() * -r * logq * mask[..., None]).sum(), s)
    torch.testing.assert_close(got, score)
