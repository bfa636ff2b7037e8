"""The CPU layer: CUDA device requests land on the CPU, and the RNG tracker behaves like megatron's."""

import pytest
import torch

from megakd.platform import cpu

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU layer is inactive with CUDA")


@pytest.fixture(scope="module", autouse=True)
def installed():
    assert cpu.install() and cpu.install()  # idempotent
    assert cpu.active()


def test_cuda_device_requests_map_to_cpu():
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.empty(2, device=torch.cuda.current_device()).device.type == "cpu"
    assert torch.ones(2).cuda().device.type == "cpu"
    assert torch.ones(2).to("cuda").device.type == "cpu"
    assert torch.ones(2).to(torch.device("cuda", 0)).device.type == "cpu"


def test_type_strings_look_like_cuda_for_megatron_optimizer_checks():
    assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
    assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.zeros(1).type(torch.float64).dtype == torch.float64  # the converting form is intact


def test_cuda_runtime_calls_are_harmless():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        pass


def test_rng_tracker_fork_is_isolated_and_reproducible():
    from megatron.core.tensor_parallel import random as mrandom

    tracker = cpu.CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with tracker.fork("model-parallel-rng"):
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)  # default stream untouched
    with tracker.fork("model-parallel-rng"):
        b = torch.rand(3)
    assert not torch.equal(a, b)  # the forked stream advanced
    fresh = cpu.CpuRNGStatesTracker()
    fresh.add("model-parallel-rng", 7)
    with fresh.fork("model-parallel-rng"):
        assert torch.equal(torch.rand(3), a)  # same seed, same numbers
    with pytest.raises(RuntimeError):
        tracker.add("other", 7)  # seeds are unique, as in megatron-core
    assert isinstance(mrandom.get_cuda_rng_tracker(), cpu.CpuRNGStatesTracker)


def test_megatron_seeding_and_dropout_run_on_cpu():
    from megatron.core.tensor_parallel import random as mrandom

    mrandom.model_parallel_cuda_manual_seed(123, tp_rank=0, ep_rank=0, etp_rank=0)
    with mrandom.get_cuda_rng_tracker().fork():
        x = torch.nn.functional.dropout(torch.ones(100), 0.5)
    assert 0 < (x == 0).sum() < 100
