"""CPU support for megatron-core: the few CUDA assumptions it makes, answered in one place.

megatron-core is written for GPUs; on a CPU-only machine (these dev boxes, CI) a handful of spots call
CUDA directly. `install()` patches exactly those, and only when CUDA is absent, so the very same
megatron-core code paths (TP layers, 1F1B pipeline, DDP + distributed optimizer, dist_checkpointing)
run on gloo. Nothing here is active on a GPU machine.

What is handled:
- factory calls with ``device="cuda"`` / an int device, ``Tensor.cuda()``, ``Tensor.to("cuda")``: mapped
  to CPU by a TorchFunctionMode (thread-local: entered on the main thread, where megatron runs);
- ``Tensor.type()`` with no argument reports ``torch.cuda.*Tensor`` because the optimizers and grad
  clipping assert on that string;
- ``torch.cuda.current_device/synchronize/empty_cache/Stream/...``: CPU answers or no-ops;
- the CUDA RNG tracker (dropout regions fork it): a tracker over the CPU generator.
"""

import contextlib

import torch
from megatron.core.tensor_parallel import random as mrandom
from megatron.core.tensor_parallel.random import CudaRNGStatesTracker
from torch.overrides import TorchFunctionMode

_MODE = None


def active() -> bool:
    """True when the CPU layer is installed (CUDA absent)."""
    return _MODE is not None


def _is_cuda_device(device) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


class _CpuDeviceMode(TorchFunctionMode):
    """Route CUDA device requests to the CPU for every torch call made on this thread."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if "cuda" not in name else name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


class _NullStream:
    """Stands in for torch.cuda.Stream: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def record_event(self, *args, **kwargs):
        return _NullEvent()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _NullEvent(_NullStream):
    def record(self, *args, **kwargs):
        pass

    def query(self):
        return True


def _nullcontext(*args, **kwargs):
    return contextlib.nullcontext()


def _patch_torch_cuda():
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.synchronize = lambda *a, **k: None
    cuda.empty_cache = lambda: None
    cuda.Stream = _NullStream
    cuda.Event = _NullEvent
    cuda.default_stream = lambda *a, **k: _NullStream()
    cuda.current_stream = lambda *a, **k: _NullStream()
    cuda.stream = _nullcontext
    cuda.device = _nullcontext
    cuda.set_device = lambda *a, **k: None
    cuda.manual_seed = lambda seed: None
    cuda.manual_seed_all = lambda seed: None
    cuda.memory_allocated = lambda *a, **k: 0
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)


class CpuRNGStatesTracker(CudaRNGStatesTracker):
    """megatron-core's CudaRNGStatesTracker, over the CPU generator.

    Named states (data-parallel, model-parallel, expert) are CPU generator states; `fork` swaps one in
    for the duration of a region (e.g. dropout inside tensor-parallel layers) and swaps it back.
    """

    def __init__(self):
        super().__init__(use_cudagraphable_rng=False)

    def add(self, name, seed):
        if seed in self.seeds_:
            raise RuntimeError(f"rng seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self._is_initialized = True
        self.seeds_.add(seed)
        saved = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(saved)

    @contextlib.contextmanager
    def fork(self, name="model-parallel-rng"):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        saved = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)


def _install_rng_tracker():
    if not isinstance(mrandom._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker):
        mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
        mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def install() -> bool:
    """Install the CPU layer if CUDA is absent. Idempotent. Returns True when active."""
    global _MODE
    if torch.cuda.is_available():
        return False
    if _MODE is None:
        _patch_torch_cuda()
        _MODE = _CpuDeviceMode()
        _MODE.__enter__()
    _install_rng_tracker()
    return True

