"""Run megatron-core on CPU over gloo: fallbacks for the CUDA calls it hard-codes.

Active only when CUDA is absent; on a GPU machine :func:`enable_cpu_backend` changes nothing.
Nothing is patched on import: the entry points' set-up (``initialize_distributed``) installs
the fallbacks, and :func:`disable_cpu_backend` puts every replaced function back.
Measured list of the calls that need it: ../shared/notes/megatron_cpu.md (shims 1-6).
"""
import contextlib
import functools
import logging

import torch
from torch.overrides import TorchFunctionMode

_state = {"enabled": False, "mode": None, "undo": []}


class _NullStream:
    """Stands in for a CUDA stream: waits are no-ops on CPU, where everything is in order."""

    def wait_event(self, *args, **kwargs):
        return None

    def wait_stream(self, *args, **kwargs):
        return None

    def synchronize(self):
        return None

    def record_event(self, *args, **kwargs):
        return None


class _CpuRngWarningFilter(logging.Filter):
    """On CPU the 'CUDA' RNG is the CPU RNG, so Megatron's fork warning is expected noise."""

    def filter(self, record):
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _cpu_device(device):
    if isinstance(device, int) and not isinstance(device, bool):
        return "cpu"
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


_TYPE_NAMES = {torch.float32: "torch.cuda.FloatTensor", torch.float16: "torch.cuda.HalfTensor",
               torch.bfloat16: "torch.cuda.BFloat16Tensor"}


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites device='cuda' to CPU, makes .cuda() a no-op and reports float tensors as CUDA.

    Megatron's optimizers, grad clipping and pipeline schedules hard-code CUDA tensors; this
    lets them run unchanged. It hooks every torch call, so it is opt-in.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = _cpu_device(kwargs["device"])
        name = getattr(func, "__name__", "")
        tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if tensor is not None and name == "cuda":
            return tensor
        if tensor is not None and name == "type" and len(args) == 1 and not kwargs:
            return _TYPE_NAMES.get(tensor.dtype, func(*args))
        if tensor is not None and name == "to":
            args = (tensor,) + tuple(_cpu_device(a) for a in args[1:])
        return func(*args, **kwargs)


@functools.lru_cache(maxsize=8)
def _causal_mask(sq):
    """The torch softmax path builds its default causal masks with device='cuda'."""
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def _sliding_window_mask(sq, skv, window_size):
    upper = torch.triu(torch.ones(sq, skv, dtype=torch.bool), diagonal=skv - sq - window_size[0])
    return ~torch.tril(upper, diagonal=skv - sq + window_size[1])


def _patch(owner, name: str, value) -> None:
    """``owner.name = value``, remembered so :func:`disable_cpu_backend` can put it back."""
    original = getattr(owner, name)
    _state["undo"].append(lambda: setattr(owner, name, original))
    setattr(owner, name, value)


def enable_cpu_backend(*, cuda_to_cpu_mode: bool = False) -> bool:
    """Install the CPU fallbacks once per process; returns whether the CPU backend is active.

    ``cuda_to_cpu_mode`` also enters :class:`CudaToCpuMode`, needed by Megatron's optimizers
    and pipeline schedules (a Python hook on every torch call).
    """
    if torch.cuda.is_available():
        return False
    if not _state["enabled"]:
        from megatron.core.fusions import fused_softmax
        from megatron.core.tensor_parallel import random as mcore_random

        cuda = torch.cuda
        _patch(cuda, "current_device", lambda: "cpu")
        _patch(cuda, "synchronize", lambda *args, **kwargs: None)
        _patch(cuda, "current_stream", lambda *args, **kwargs: _NullStream())
        _patch(cuda, "stream", lambda *args, **kwargs: contextlib.nullcontext())
        _patch(cuda, "get_rng_state", lambda *args, **kwargs: torch.get_rng_state())
        _patch(cuda, "manual_seed", torch.manual_seed)
        _patch(mcore_random, "_get_cuda_rng_state", lambda *args, **kwargs: torch.get_rng_state())
        _patch(mcore_random, "_set_cuda_rng_state",
               lambda state, *args, **kwargs: torch.set_rng_state(state))
        _patch(fused_softmax, "get_default_causal_mask", _causal_mask)
        if hasattr(fused_softmax, "get_sliding_window_causal_mask"):
            _patch(fused_softmax, "get_sliding_window_causal_mask", _sliding_window_mask)
        logger = logging.getLogger(mcore_random.__name__)
        log_filter = _CpuRngWarningFilter()
        logger.addFilter(log_filter)
        _state["undo"].append(lambda: logger.removeFilter(log_filter))
        _state["enabled"] = True
    if cuda_to_cpu_mode and _state["mode"] is None:
        _state["mode"] = CudaToCpuMode()
        _state["mode"].__enter__()
    return True


def leave_cuda_to_cpu_mode() -> None:
    """Exit the :class:`CudaToCpuMode` that :func:`enable_cpu_backend` entered, if it did.

    A tool run in-process (tests) must not leave every later torch call hooked.
    """
    if _state["mode"] is not None:
        mode, _state["mode"] = _state["mode"], None
        mode.__exit__(None, None, None)


def disable_cpu_backend() -> None:
    """Undo :func:`enable_cpu_backend`: leave :class:`CudaToCpuMode` and put back every
    ``torch.cuda`` and megatron.core function it replaced (the process is as before)."""
    leave_cuda_to_cpu_mode()
    while _state["undo"]:
        _state["undo"].pop()()
    _state["enabled"] = False


def cpu_backend_enabled() -> bool:
    return _state["enabled"]
