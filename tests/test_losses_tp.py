"""TP=2 (two gloo processes, each holding its vocab slice) equals TP=1 for every kind and variant.

All cases run in one spawn to keep the runtime low; each rank saves its per-token losses and its slice
of the gradient, and the parent compares them with the single-process results.
"""

import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megakd.losses import KINDS, SparseTarget, distill_loss, truncate_teacher

LEAD, V, WORLD = (3, 4), 2 * 17, 2


def _full_inputs(dtype):
    g = torch.Generator().manual_seed(1234)
    s = (2 * torch.randn(*LEAD, V, generator=g)).to(dtype)
    t = (3 * torch.randn(*LEAD, V, generator=g)).to(dtype)
    n, k = s[..., 0].numel(), 7
    ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(n)])  # spans both shards
    lp = torch.randn(n, k + 1, generator=g).log_softmax(-1)[:, :k].to(dtype)
    ids[0, -1], lp[1, 0] = -1, float("-inf")  # unused slots
    mask = torch.rand(*LEAD, generator=g) > 0.3
    labels = torch.randint(V, LEAD, generator=g)
    labels.view(-1)[:6] = ids[:6, 1]  # some labels among the listed ids, in both shards
    return s, t, SparseTarget(ids.reshape(*LEAD, k), lp.reshape(*LEAD, k)), mask, labels


def _cases():
    for kind in KINDS:
        args = {"jsd": {"beta": 0.3}, "sfkl": {"skew": 0.2}}.get(kind, {})
        yield f"{kind}-dense", kind, "dense", dict(temperature=2.0, **args)
        if kind != "mse":
            yield f"{kind}-sparse", kind, "sparse", dict(temperature=1.5, **args)
            yield f"{kind}-topk-topp", kind, "dense", dict(temperature=1.5, top_p=0.9, top_k=5, **args)
            yield f"{kind}-topp-only", kind, "dense", dict(top_p=0.8, **args)
            yield f"{kind}-sparse-topk", kind, "sparse", dict(top_k=3, **args)
        yield f"{kind}-masked", kind, "dense", dict(loss_mask=True, chunk_size=2, **args)
        if kind in ("fkl", "rkl", "jsd"):  # the fused LM + KD pass (labels=) at T = 1 and T != 1
            yield f"{kind}-sparse-lm", kind, "sparse", dict(labels=True, loss_mask=True, chunk_size=2, **args)
            yield f"{kind}-sparse-lm-T2", kind, "sparse", dict(labels=True, temperature=2.0, **args)
    yield "fkl-topk-lm", "fkl", "dense", dict(labels=True, top_k=5, temperature=1.5)


def compute_all(rank, world, group):
    """Every case on this rank's vocab slice -> {case: (loss, grad slice)} plus truncation outputs."""
    out = {}
    for dtype in (torch.float64, torch.float32):
        s_full, t_full, sparse, mask, labels = _full_inputs(dtype)
        vl = V // world
        sl = slice(rank * vl, (rank + 1) * vl)
        s_loc, t_loc = s_full[..., sl].contiguous(), t_full[..., sl].contiguous()
        for name, kind, target, kw in _cases():
            kw = dict(kw)
            if kw.pop("loss_mask", False):
                kw["loss_mask"] = mask
            if kw.pop("labels", False):
                kw["labels"] = labels
            s = s_loc.clone().requires_grad_()
            COLLECTIVES.clear()
            loss = distill_loss(s, t_loc if target == "dense" else sparse, kind=kind, tp_group=group, **kw)
            forward_calls = list(COLLECTIVES)
            COLLECTIVES.clear()
            loss.backward(torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape))
            out[(dtype, name)] = (loss.detach(), s.grad)
            out[("collectives", dtype, name)] = (forward_calls, list(COLLECTIVES))
        for top_p, top_k in [(0.9, 5), (0.7, 0), (1.0, 3)]:
            tgt = truncate_teacher(t_loc, temperature=1.3, top_p=top_p, top_k=top_k, tp_group=group)
            out[(dtype, f"truncate-{top_p}-{top_k}")] = (tgt.ids, tgt.logprobs)
    return out


COLLECTIVES = []  # (name, op) of every collective call, recorded in the TP ranks


def _count_collectives():
    """Wrap the torch.distributed collectives of this process so each call is recorded."""
    for name in ("all_reduce", "all_gather"):
        real = getattr(dist, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            COLLECTIVES.append((_name, str(kwargs.get("op", ""))))
            return _real(*args, **kwargs)

        setattr(dist, name, counted)


def separate_lm_and_kd(rank, world):
    """The unfused path the trainer used before: megatron-core's vocab-parallel CE (on a copy: it edits
    its input in place) + the sparse KD loss, for the fused cases -> {case: ((lm, kd), grad slice)}."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    ps.initialize_model_parallel(tensor_model_parallel_size=world)
    out = {}
    for dtype in (torch.float64, torch.float32):
        s_full, t_full, sparse, mask, labels = _full_inputs(dtype)
        vl = V // world
        s_loc, t_loc = s_full[..., rank * vl:(rank + 1) * vl].contiguous(), t_full[..., rank * vl:(rank + 1) * vl]
        for name, kind, target, kw in _cases():
            if not kw.pop("labels", False):
                continue
            kw["loss_mask"] = mask if kw.pop("loss_mask", False) else torch.ones(LEAD, dtype=torch.bool)
            s = s_loc.clone().requires_grad_()
            lm = vocab_parallel_cross_entropy(s.clone(), labels) * kw["loss_mask"]
            kd = distill_loss(s, t_loc.contiguous() if target == "dense" else sparse, kind=kind,
                              tp_group=ps.get_tensor_model_parallel_group(), **kw)
            loss = torch.stack([lm.to(kd.dtype), kd])
            loss.backward(torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape))
            out[(dtype, name)] = (loss.detach(), s.grad)
    ps.destroy_model_parallel()
    return out


def _worker(rank, world, port, outdir):
    torch.set_num_threads(1)  # two ranks share the CPU
    _count_collectives()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = compute_all(rank, world, dist.group.WORLD)
        result["separate"] = separate_lm_and_kd(rank, world)
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(world, fn, *args):
    """Spawn `world` gloo ranks running fn(rank, world, port, outdir, *args); return each rank's saved result."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as outdir:
        mp.spawn(fn, args=(world, port, outdir, *args), nprocs=world, join=True)
        return [torch.load(os.path.join(outdir, f"rank{r}.pt")) for r in range(world)]


@pytest.fixture(scope="module")
def tp_results():
    return compute_all(0, 1, None), run_ranks(WORLD, _worker)


def _names():
    return [name for name, *_ in _cases()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", _names())
def test_tp2_equals_tp1(tp_results, name, dtype):
    single, ranks = tp_results
    loss1, grad1 = single[(dtype, name)]
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for r, res in enumerate(ranks):
        loss2, grad2 = res[(dtype, name)]
        torch.testing.assert_close(loss2, loss1, **tol, msg=lambda m: f"{name} loss rank {r}: {m}")
    grad2 = torch.cat([res[(dtype, name)][1] for res in ranks], dim=-1)
    torch.testing.assert_close(grad2, grad1, **tol, msg=lambda m: f"{name} grad: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tp2_fused_lm_equals_megatron_ce_plus_kd(tp_results, dtype):
    """labels= (one pass) == megatron-core's vocab-parallel CE + the KD loss, values and grads, at TP=2."""
    _, ranks = tp_results
    tol = dict(rtol=2e-5, atol=2e-6)  # megatron's CE computes in fp32 even for fp64 logits
    names = [name for name, *_ in _cases() if name.endswith(("-lm", "-lm-T2"))]
    assert len(names) == 7
    assert set(ranks[0]["separate"]) == {(d, n) for d in (torch.float64, torch.float32) for n in names}
    for name in names:
        for r, res in enumerate(ranks):
            (fused, g_fused), (separate, g_sep) = res[(dtype, name)], res["separate"][(dtype, name)]
            torch.testing.assert_close(fused, separate, **tol, msg=lambda m: f"{name} loss rank {r}: {m}")
            torch.testing.assert_close(g_fused, g_sep, **tol, msg=lambda m: f"{name} grad rank {r}: {m}")


@pytest.mark.parametrize("spec", ["truncate-0.9-5", "truncate-0.7-0", "truncate-1.0-3"])
def test_tp2_truncation_selects_the_global_top(tp_results, spec):
    """The kept set is the global top-p/top-k across shards (same ids, same renormalised log-probs)."""
    single, ranks = tp_results
    ids1, lp1 = single[(torch.float64, spec)]
    for res in ranks:
        ids2, lp2 = res[(torch.float64, spec)]
        assert (ids2 >= 0).sum() == (ids1 >= 0).sum()
        dense1 = torch.zeros(*LEAD, V, dtype=torch.float64).scatter_add(-1, ids1.clamp_min(0), lp1.exp())
        dense2 = torch.zeros(*LEAD, V, dtype=torch.float64).scatter_add(-1, ids2.clamp_min(0), lp2.exp())
        torch.testing.assert_close(dense2, dense1, rtol=1e-12, atol=1e-12)
        # kept ids come from both shards somewhere in the batch
        kept = ids2[ids2 >= 0]
        assert (kept < V // 2).any() and (kept >= V // 2).any()


def test_tp2_collectives(tp_results):
    """No collective in any backward; forward: MAX + one batched SUM (two SUMs for the kinds whose value
    needs normalised probabilities: sfkl, srkl, jsd, tvd on dense logits)."""
    _, ranks = tp_results
    for name, kind, target, kw in _cases():
        fwd, bwd = ranks[0][("collectives", torch.float64, name)]
        assert bwd == [], f"{name}: collective in backward: {bwd}"
        truncated = kind == "nll" or "top_p" in kw or "top_k" in kw
        if target == "dense" and truncated:
            continue  # truncation adds its own MAX / SUM / all-gather of candidates
        sums = [c for c in fwd if c[0] == "all_reduce" and "MAX" not in c[1]]
        maxes = [c for c in fwd if "MAX" in c[1]]
        two_phase = target == "dense" and kind in ("sfkl", "srkl", "jsd", "tvd")
        assert len(maxes) == 1 and len(sums) == (2 if two_phase else 1), f"{name}: {fwd}"
