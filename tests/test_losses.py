"""megakd.losses (single process): gradients, reference agreement, chunking, sparse targets, masks, errors."""

import itertools

import pytest
import torch

try:  # tests/ as a package or as a plain directory on sys.path
    from tests import losses_reference as ref
except ImportError:
    import losses_reference as ref
from megakd.losses import KINDS, SparseTarget, distill_loss, keep_top, truncate_teacher

PROB_KINDS = [k for k in KINDS if k != "mse"]
KIND_ARGS = {"sfkl": {"skew": 0.2}, "srkl": {"skew": 0.2}, "jsd": {"beta": 0.3}}


def logits(*shape, seed=0, dtype=torch.float64, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(dtype)


def sparse_target(lead, V, k, seed=0, ghost=True, pad=True):
    """Random sparse target: distinct ids per row, mass < 1 when ghost, some unused (padding) slots."""
    g = torch.Generator().manual_seed(seed)
    n = int(torch.tensor(lead).prod())
    ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(n)])
    w = torch.randn(n, k + 1, generator=g).log_softmax(-1).double()
    logprobs = w[:, :k] if ghost else w[:, :k].log_softmax(-1)
    if pad:
        ids[0, -1] = -1  # unused: id -1
        logprobs[0, -1] = float("-inf")
        logprobs[-1, 0] = float("-inf")  # unused: log-prob -inf (its id belongs to the ghost)
    return SparseTarget(ids.reshape(*lead, k), logprobs.reshape(*lead, k))


def teacher_for(target, lead, V, seed=1):
    return sparse_target(lead, V, 6, seed) if target == "sparse" else logits(*lead, V, seed=seed)


def reference(student, teacher, kind, T, top_p, top_k, **args):
    if isinstance(teacher, SparseTarget):
        ids, lp = teacher.ids, teacher.logprobs
        if kind == "nll":
            top_p, top_k = 1.0, 1
        if top_p < 1 or top_k:
            V = student.shape[-1]
            dense = ref.truncate_probs(ref.sparse_to_dense(ids, lp, V), top_p, top_k)
            ids, lp = ref.dense_to_sparse(dense)
        return ref.sparse_loss(student, ids, lp.to(student.dtype), kind, T, **args)
    return ref.loss(student, teacher, kind, T, top_p, top_k, **args)


CASES = [
    (kind, target, T, trunc)
    for kind, target, T, trunc in itertools.product(KINDS, ["dense", "sparse"], [1.0, 2.0], [False, True])
    if not (kind == "mse" and (target == "sparse" or trunc))
]


@pytest.mark.parametrize("kind,target,T,trunc", CASES)
def test_gradcheck_and_reference(kind, target, T, trunc):
    """float64 gradcheck of the fused loss, and value + gradient equal to the plain reference."""
    lead, V = (2, 3), 13
    top = dict(top_p=0.8, top_k=4) if trunc else {}
    teacher = teacher_for(target, lead, V)
    args = KIND_ARGS.get(kind, {})
    s = logits(*lead, V, seed=2).requires_grad_()

    def fused(x):
        return distill_loss(x, teacher, kind=kind, temperature=T, chunk_size=2, **top, **args)

    assert torch.autograd.gradcheck(fused, (s,))
    (g_fused,) = torch.autograd.grad(fused(s).sum(), s)
    expected = reference(s, teacher, kind, T, top.get("top_p", 1.0), top.get("top_k", 0), **args)
    (g_ref,) = torch.autograd.grad(expected.sum(), s)
    torch.testing.assert_close(fused(s), expected)
    torch.testing.assert_close(g_fused, g_ref)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs(kind, dtype):
    """bf16/fp32 logits: fp32 loss, gradient in the input dtype, close to the fp64 result."""
    s64, t64 = logits(4, 40, seed=3), logits(4, 40, seed=4)
    s = s64.to(dtype).requires_grad_()
    loss = distill_loss(s, t64.to(dtype), kind=kind)
    loss.sum().backward()
    assert loss.dtype == torch.float32 and s.grad.dtype == dtype
    s_exact = s.detach().double().requires_grad_()
    exact = distill_loss(s_exact, t64.to(dtype).double(), kind=kind)
    exact.sum().backward()
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss.double(), exact, **tol)
    torch.testing.assert_close(s.grad.double(), s_exact.grad, **tol)


def value_and_grad(s, teacher, **kw):
    s = s.detach().clone().requires_grad_()
    loss = distill_loss(s, teacher, **kw)
    loss.backward(torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape))
    return loss.detach(), s.grad


@pytest.mark.parametrize("kind,target", [(k, t) for k in KINDS for t in ("dense", "sparse") if (k, t) != ("mse", "sparse")])
def test_chunked_equals_unchunked(kind, target):
    lead, V = (5, 3), 31
    teacher = teacher_for(target, lead, V)
    s = logits(*lead, V, seed=5)
    whole = value_and_grad(s, teacher, kind=kind, temperature=1.5)
    for chunk in (1, 4, 7):
        parts = value_and_grad(s, teacher, kind=kind, temperature=1.5, chunk_size=chunk)
        torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", PROB_KINDS)
@pytest.mark.parametrize("T", [1.0, 0.7])
def test_sparse_with_all_ids_equals_dense(kind, T):
    """k = V (a full, permuted sparse target) gives the dense loss and gradient: no ghost bucket."""
    lead, V = (3, 4), 17
    s, t = logits(*lead, V, seed=6), logits(*lead, V, seed=7)
    perm = torch.stack([torch.randperm(V, generator=torch.Generator().manual_seed(i)) for i in range(12)])
    logp = torch.log_softmax(t / T, -1).reshape(12, V).gather(1, perm)
    target = SparseTarget(perm.reshape(*lead, V), logp.reshape(*lead, V))
    dense = value_and_grad(s, t, kind=kind, temperature=T)
    sparse = value_and_grad(s, target, kind=kind, temperature=T)
    torch.testing.assert_close(sparse, dense)


def test_padding_slots_are_ignored():
    """A row padded with unused slots (id -1, or log-prob -inf) equals the same row without them."""
    lead, V = (4,), 20
    s = logits(*lead, V, seed=8)
    tight = sparse_target(lead, V, 5, seed=9, pad=False)
    pad_ids = torch.cat([tight.ids, torch.full((4, 2), -1), torch.tensor([[3], [4], [5], [6]])], dim=-1)
    pad_lp = torch.cat([tight.logprobs, torch.zeros(4, 2), torch.full((4, 1), float("-inf"))], dim=-1)
    pad_lp[:, 5:7] = float("-inf")
    pad_ids[:, 5:7] = -1
    padded = SparseTarget(pad_ids, pad_lp)
    for kind in PROB_KINDS:
        torch.testing.assert_close(value_and_grad(s, padded, kind=kind), value_and_grad(s, tight, kind=kind))


@pytest.mark.parametrize("target", ["dense", "sparse"])
def test_masked_positions_contribute_nothing(target):
    lead, V = (4, 3), 19
    teacher = teacher_for(target, lead, V)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0]], dtype=torch.float64)
    s = logits(*lead, V, seed=10).requires_grad_()
    (distill_loss(s, teacher) * mask).sum().backward()
    assert (s.grad[mask == 0] == 0).all() and (s.grad[mask == 1] != 0).any()
    # loss_mask skips the masked tokens: same values where kept, exact zeros (and zero grad) elsewhere
    s2 = s.detach().clone().requires_grad_()
    skipped = distill_loss(s2, teacher, loss_mask=mask.bool(), chunk_size=2)
    (skipped * mask).sum().backward()
    torch.testing.assert_close(skipped, distill_loss(s.detach(), teacher) * mask)
    torch.testing.assert_close(s2.grad, s.grad)


def test_temperature_convention():
    """Both distributions at T, no T^2: loss(z_s, z_t; T) == loss(z_s/T, z_t/T; 1); fkl grad = (q - p)/T."""
    T = 3.0
    s, t = logits(3, 11, seed=11).requires_grad_(), logits(3, 11, seed=12)
    loss = distill_loss(s, t, kind="fkl", temperature=T)
    torch.testing.assert_close(loss, distill_loss(s / T, t / T, kind="fkl"))
    loss.sum().backward()
    q, p = torch.softmax(s.detach() / T, -1), torch.softmax(t / T, -1)
    torch.testing.assert_close(s.grad, (q - p) / T)


def test_truncation_matches_reference():
    """top-p then top-k, renormalised, on tempered teacher logits."""
    V = 30
    t = logits(6, V, seed=13, scale=3.0)
    for T, top_p, top_k in [(1.0, 0.9, 0), (2.0, 1.0, 5), (1.5, 0.95, 8), (1.0, 0.3, 3)]:
        got = truncate_teacher(t, temperature=T, top_p=top_p, top_k=top_k, chunk_size=4)
        assert (got.ids >= 0).sum(-1).min() >= 1
        torch.testing.assert_close(
            ref.sparse_to_dense(got.ids, got.logprobs, V), ref.truncate(t, T, top_p, top_k)
        )


def test_nll_is_cross_entropy_to_teacher_argmax():
    s, t = logits(2, 5, 23, seed=14), logits(2, 5, 23, seed=15)
    expected = torch.nn.functional.cross_entropy(s.reshape(-1, 23), t.reshape(-1, 23).argmax(-1), reduction="none")
    torch.testing.assert_close(distill_loss(s, t, kind="nll"), expected.reshape(2, 5))
    target = SparseTarget(t.argmax(-1, keepdim=True).expand(2, 5, 3).clone(), torch.zeros(2, 5, 3))
    target.ids[..., 1:] = -1
    torch.testing.assert_close(distill_loss(s, target, kind="nll"), expected.reshape(2, 5))


def test_keep_top_on_sparse_targets():
    target = sparse_target((3,), 25, 8, seed=16, pad=False)
    kept = keep_top(target, top_k=2)
    assert ((kept.ids >= 0).sum(-1) == 2).all()
    torch.testing.assert_close(kept.logprobs.logsumexp(-1), torch.zeros(3, dtype=torch.float64))



def _lm_inputs(lead=(3, 5), V=11, k=4):
    """Student logits, a sparse target with unused slots and ghost mass, labels both among the listed
    ids and outside them, and a loss mask."""
    s = logits(*lead, V, seed=3)
    target = sparse_target(lead, V, k, seed=4)
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(V, lead, generator=g)
    flat_ids, flat_labels = target.ids.reshape(-1, k), labels.view(-1)
    flat_labels[1:5] = flat_ids[1:5, 1]  # slot 1 is used in every row but the last
    listed = (flat_ids == flat_labels[:, None]).any(-1)
    assert listed.any() and (~listed).any()
    mask = torch.rand(lead, generator=g) > 0.2
    return s, target, labels, mask


@pytest.mark.parametrize("kind", ["fkl", "rkl", "jsd"])
@pytest.mark.parametrize("T", [1.0, 2.0])
def test_fused_lm_gradcheck_and_equals_separate(kind, T):
    """The fused pass (labels=) == cross-entropy of the labels + the sparse KD loss, values and grads
    (the fused grads written into the logits' storage: grad_in_logits); float64 gradcheck of both
    outputs at once (not in place: gradcheck runs the backward many times)."""
    s, target, labels, mask = _lm_inputs()
    args = KIND_ARGS.get(kind, {})
    x = s.clone().requires_grad_()

    def fused(y, in_place=False):
        return distill_loss(y, target, kind=kind, temperature=T, labels=labels, loss_mask=mask, chunk_size=4,
                            grad_in_logits=in_place, **args)

    assert torch.autograd.gradcheck(fused, (x,))
    out = fused(x.clone(), in_place=True)
    assert out.shape == (2, *labels.shape)
    lm = torch.nn.functional.cross_entropy(x.reshape(-1, x.shape[-1]), labels.reshape(-1), reduction="none")
    kd = distill_loss(x, target, kind=kind, temperature=T, loss_mask=mask, **args)
    separate = torch.stack([lm.reshape(labels.shape) * mask, kd])
    torch.testing.assert_close(out, separate)
    w = logits(*out.shape, seed=6)  # distinct weights for LM and KD
    (g_fused,), (g_separate,) = torch.autograd.grad((out * w).sum(), x), torch.autograd.grad((separate * w).sum(), x)
    torch.testing.assert_close(g_fused, g_separate)


def test_fused_lm_with_a_truncated_dense_teacher_low_precision_and_in_place():
    """Dense teacher logits truncated inside distill_loss take labels too; float32 / bfloat16 logits give
    the float64 values and grads; grad_in_logits leaves the gradient in the logits' own storage."""
    s, _, labels, mask = _lm_inputs()
    t = logits(*s.shape, seed=7)
    kw = dict(kind="fkl", top_k=4, top_p=0.9, labels=labels, loss_mask=mask)
    for dtype, in_place in [(torch.float32, True), (torch.bfloat16, True), (torch.float32, False)]:
        x = s.to(dtype).requires_grad_()
        y = x.clone()  # the logits
        out = distill_loss(y, t.to(dtype), grad_in_logits=in_place, **kw)
        assert out.dtype == torch.float32
        out.sum().backward()
        x64 = x.detach().double().requires_grad_()
        expected = distill_loss(x64, t.to(dtype).double(), **kw)
        expected.sum().backward()
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(out.double(), expected.detach(), **tol)
        torch.testing.assert_close(x.grad.double(), x64.grad, **tol)
        assert torch.equal(y.detach(), x.grad if in_place else x.detach())
        assert (x.grad.reshape(-1, s.shape[-1])[~mask.reshape(-1)] == 0).all()

BAD = [
    (lambda s, t: distill_loss(s, t[..., :-1]), "shape"),
    (lambda s, t: distill_loss(s, t.reshape(2, 3, 10)), "shape"),
    (lambda s, t: distill_loss(s, SparseTarget(torch.zeros(3, 2, 4, dtype=torch.long), torch.zeros(3, 2, 4)), kind="mse"), "mse"),
    (lambda s, t: distill_loss(s, t, kind="mse", top_k=3), "mse"),
    (lambda s, t: distill_loss(s, SparseTarget(torch.full((3, 2, 1), 10), torch.zeros(3, 2, 1))), r"\[0, 10\)"),
    (lambda s, t: distill_loss(s, SparseTarget(torch.full((3, 2, 1), -3), torch.zeros(3, 2, 1))), r"\[0, 10\)"),
    (lambda s, t: distill_loss(s, SparseTarget(torch.zeros(3, 2, 2, dtype=torch.long), torch.full((3, 2, 2), -1.0))), "duplicate"),
    (lambda s, t: distill_loss(s, SparseTarget(torch.zeros(3, 2, 1, dtype=torch.long), torch.ones(3, 2, 1))), "log-prob"),
    (lambda s, t: distill_loss(s, SparseTarget(torch.zeros(3, 2, 1), torch.zeros(3, 2, 1))), "integer"),
    (lambda s, t: distill_loss(s, SparseTarget(torch.zeros(3, 1, 1, dtype=torch.long), torch.zeros(3, 1, 1))), "leading shape"),
    (lambda s, t: distill_loss(s, t, temperature=-1.0), "temperature"),
    (lambda s, t: distill_loss(s, t, temperature=0), "temperature"),
    (lambda s, t: distill_loss(s, t, top_p=0.0), "top_p"),
    (lambda s, t: distill_loss(s, t, top_k=-1), "top_k"),
    (lambda s, t: distill_loss(s, t, kind="kld"), "is not one of"),
    (lambda s, t: distill_loss(s, t, kind="fkl", beta=0.5), "no argument"),
    (lambda s, t: distill_loss(s, t, kind="jsd", beta=1.0), "beta"),
    (lambda s, t: distill_loss(s, t, chunk_size=0), "chunk_size"),
    (lambda s, t: distill_loss(s, t, loss_mask=torch.ones(3)), "loss_mask"),
    (lambda s, t: distill_loss(s, t.long()), "floating"),
    (lambda s, t: distill_loss(s, [1, 2]), "SparseTarget"),
    (lambda s, t: distill_loss(s, t, labels=torch.zeros(3, 2, dtype=torch.long)), "sparse target"),
    (lambda s, t: distill_loss(s, t, top_k=2, labels=torch.full((3, 2), 10)), r"labels must be global vocab ids"),
    (lambda s, t: distill_loss(s, t, top_k=2, labels=torch.zeros(3)), "labels must be a tensor of shape"),
]


@pytest.mark.parametrize("call,match", BAD)
def test_bad_input_is_a_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call(logits(3, 2, 10), logits(3, 2, 10, seed=1))
    assert "\n" not in str(err.value)
