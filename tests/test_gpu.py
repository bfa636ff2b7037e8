"""The GPU tier: the real paths on CUDA + NCCL in bf16 (`gpu`: one GPU; `multigpu`: two or more).

Skipped, with the reason, on machines without CUDA (tests/conftest.py); `scripts/gpu_check.sh` runs
them on a GPU machine. Each job must say it ran on NCCL, so a silent CPU fallback cannot pass. MiniLLM
and FP8 have their own GPU tests (test_gpu_minillm.py, test_fp8.py)."""

import os

import pytest
import torch

from dist_utils import REPO, init_and_teacher, read_metrics, run_job, tiny_args
from losses_reference import sparse_loss as reference_sparse
from test_losses import reference

from megakd.losses import KINDS, SparseTarget, distill_loss

DUMP = os.path.join(REPO, "tools", "dump_teacher_logits.py")
BF16 = {"model.precision": "bf16"}
KD = {"kd.kind": "fkl", "kd.temperature": 1.0, "kd.top_p": 0.95, "kd.top_k": 20, "kd.alpha": 0.9}
KIND_ARGS = {"sfkl": {"skew": 0.2}, "srkl": {"skew": 0.2}, "jsd": {"beta": 0.3}}


def _job(corpus, work, nproc=1, **overrides):
    proc = run_job(tiny_args(corpus, work, **overrides), nproc=nproc)
    assert "on nccl" in proc.stdout, "the job did not run on CUDA/NCCL:\n" + proc.stdout[-2000:]
    return read_metrics(work / "metrics.jsonl")


@pytest.fixture(scope="module")
def gpu_models(tiny_corpus, tmp_path_factory):
    """(init, teacher) checkpoints made on the GPU in bf16."""
    work = tmp_path_factory.mktemp("gpu_models")
    init, teacher = work / "init", work / "teacher"
    _job(tiny_corpus, work / "a", **BF16, **{"train.iters": 0, "checkpoint.save": init})
    _job(tiny_corpus, work / "b", **BF16, **{"train.iters": 3, "checkpoint.save": teacher,
                                               "checkpoint.pretrained": init})
    return init, teacher


@pytest.mark.gpu
def test_comm_over_nccl_takes_cpu_tensors_and_gives_them_back():
    from megakd import platform
    from megakd.platform import comm

    env = platform.init_distributed()
    try:
        assert env.backend == "nccl" and comm.group_device().type == "cuda"
        x = torch.tensor([1.0, 2.0], dtype=torch.float64)  # a CPU tensor, as the trainer's sums are
        assert comm.all_reduce(x, comm.MAX) is x and x.device.type == "cpu" and x.tolist() == [1.0, 2.0]
        comm.broadcast(x, 0)
        assert comm.all_gather(x)[0].device.type == "cpu"
        comm.barrier()
    finally:
        platform.destroy()


@pytest.mark.gpu
def test_lm_bf16_step_save_and_resume_identical(tiny_corpus, tmp_path):
    common = {**BF16, "train.iters": 4, "checkpoint.interval": 2, "optim.lr_schedule": "wsd"}
    want = _job(tiny_corpus, tmp_path / "straight", **common,
                **{"checkpoint.save": tmp_path / "a", "train.exit_interval": 0})
    _job(tiny_corpus, tmp_path / "first", **common,
         **{"checkpoint.save": tmp_path / "b", "train.exit_interval": 2})
    got = _job(tiny_corpus, tmp_path / "resumed", **common,
               **{"checkpoint.save": tmp_path / "b", "checkpoint.load": tmp_path / "b"})
    assert sorted(got) == [3, 4]
    for it in (3, 4):
        for key in ("lm loss", "lr", "grad norm"):
            assert got[it][key] == want[it][key], (it, key)


@pytest.mark.gpu
def test_colocated_pd_step_bf16(gpu_models, tiny_corpus, tmp_path):
    init, teacher = gpu_models
    m = _job(tiny_corpus, tmp_path, **BF16, **KD, **{"kd.source": "online", "train.iters": 2,
                                                    "checkpoint.pretrained": init,
                                                    "teacher.checkpoint": teacher})
    assert all(torch.isfinite(torch.tensor(m[i]["kd loss"])) and m[i]["kd loss"] > 0 for i in (1, 2))


@pytest.mark.gpu
def test_dump_then_offline_pd_step(gpu_models, tiny_corpus, tmp_path):
    init, teacher = gpu_models
    tok_dir, prefix = tiny_corpus
    store = tmp_path / "store"
    proc = run_job(["--teacher", teacher, "--tokenizer", tok_dir, "--data-prefix", prefix,
                    "--output", store, "--top-p", KD["kd.top_p"], "--top-k", KD["kd.top_k"],
                    "--no-progress"], script=DUMP)
    assert os.path.isdir(store), proc.stdout[-2000:]
    m = _job(tiny_corpus, tmp_path / "run", **BF16, **KD, **{"kd.source": "offline",
                                                            "kd.store": store, "train.iters": 2,
                                                            "checkpoint.pretrained": init})
    assert all(m[i]["kd loss"] > 0 for i in (1, 2))


def _cuda_cases():
    for kind in KINDS:
        yield kind, "dense"
        if kind != "mse":
            yield kind, "sparse"


@pytest.mark.gpu
@pytest.mark.parametrize("kind,target", list(_cuda_cases()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kd_loss_on_cuda_matches_the_float64_reference(kind, target, dtype):
    """Values and gradients on CUDA against tests/losses_reference.py in float64 on the CPU, on the
    same (dtype-rounded) inputs; GPU-sized rows (V = 4096) so per-device chunking is exercised."""
    g = torch.Generator().manual_seed(0)
    n, V, k, T = 64, 4096, 16, 2.0
    s = (3 * torch.randn(n, V, generator=g)).to(dtype)
    args = KIND_ARGS.get(kind, {})
    if target == "dense":
        teacher = (3 * torch.randn(n, V, generator=g)).to(dtype)
        cpu_teacher, cuda_teacher = teacher.double(), teacher.cuda()
    else:
        ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(n)])
        lp = torch.randn(n, k + 1, generator=g).log_softmax(-1)[:, :k]
        cpu_teacher = SparseTarget(ids, lp.double())
        cuda_teacher = SparseTarget(ids.cuda(), lp.cuda())
    x = s.double().requires_grad_()
    want = reference(x, cpu_teacher, kind, T, 1.0, 0, **args)
    (want_grad,) = torch.autograd.grad(want.sum(), x)
    y = s.cuda().requires_grad_()
    got = distill_loss(y, cuda_teacher, kind=kind, temperature=T, **args)
    (got_grad,) = torch.autograd.grad(got.sum(), y)
    assert got.device.type == "cuda"
    assert got_grad.dtype == dtype
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-5)
    grad_tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(got_grad.double().cpu(), want_grad, **grad_tol)


@pytest.mark.gpu
def test_fused_lm_and_kd_on_cuda_equals_cross_entropy_plus_kd():
    g = torch.Generator().manual_seed(1)
    n, V, k = 64, 4096, 16
    s = (3 * torch.randn(n, V, generator=g)).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(n)])
    lp = torch.randn(n, k + 1, generator=g).log_softmax(-1)[:, :k]
    labels = torch.randint(V, (n,), generator=g)
    target = SparseTarget(ids.cuda(), lp.cuda())
    both = distill_loss(s.cuda(), target, kind="fkl", labels=labels.cuda())
    ce = torch.nn.functional.cross_entropy(s.double(), labels, reduction="none")
    torch.testing.assert_close(both[0].double().cpu(), ce, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[1].double().cpu(), reference_sparse(s.double(), ids, lp.double(), "fkl"),
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ two or more GPUs


@pytest.fixture(scope="module")
def bf16_reference(tiny_corpus, tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_ref")
    init = work / "init"
    _job(tiny_corpus, work / "a", **BF16, **{"train.iters": 0, "checkpoint.save": init})
    return init, _job(tiny_corpus, work / "b", **BF16, **{"checkpoint.pretrained": init})


@pytest.mark.multigpu
@pytest.mark.parametrize("layout", [{"parallel.tp": 2}, {"parallel.pp": 2}, {}],
                         ids=["tp2", "pp2", "dp2"])
def test_two_gpu_layouts_match_one_gpu_in_bf16(layout, bf16_reference, tiny_corpus, tmp_path):
    """bf16 changes the rounding of split matmuls and reductions: 6 steps agree to ~1e-2."""
    init, ref = bf16_reference
    got = _job(tiny_corpus, tmp_path, nproc=2, **BF16, **layout, **{"checkpoint.pretrained": init})
    for it in range(1, 7):
        assert got[it]["lm loss"] == pytest.approx(ref[it]["lm loss"], rel=2e-2), it


@pytest.mark.multigpu
def test_dedicated_teacher_ranks_on_gpus_equal_colocated(tiny_corpus, tmp_path):
    init, teacher = init_and_teacher(tiny_corpus, tmp_path / "models")
    kd = {**KD, "kd.source": "online", "train.iters": 3, "checkpoint.pretrained": init,
          "teacher.checkpoint": teacher}
    ref = _job(tiny_corpus, tmp_path / "colocated", **kd)
    got = _job(tiny_corpus, tmp_path / "dedicated", nproc=2, **kd,
               **{"teacher.placement": "dedicated", "teacher.ranks": 1, "teacher.timeout_s": 120})
    for it in (1, 2, 3):
        assert got[it]["kd loss"] == pytest.approx(ref[it]["kd loss"], rel=1e-4), it
