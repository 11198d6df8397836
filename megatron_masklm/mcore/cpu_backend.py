"""Run megatron-core on CPU over gloo: fallbacks for the CUDA calls it hard-codes.

Active only when CUDA is absent; on a GPU machine :func:`enable_cpu_backend` changes nothing.
Measured list of the calls that need it: ../shared/notes/megatron_cpu.md (shims 1-6).
"""
import contextlib
import logging

import torch
from torch.overrides import TorchFunctionMode

_state = {"enabled": False, "mode": None}


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


def _patch_causal_masks():
    """The torch softmax path builds its default causal masks with device='cuda'."""
    from functools import lru_cache

    from megatron.core.fusions import fused_softmax

    @lru_cache(maxsize=8)
    def causal_mask(sq):
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    def sliding_window_mask(sq, skv, window_size):
        upper = torch.triu(torch.ones(sq, skv, dtype=torch.bool), diagonal=skv - sq - window_size[0])
        return ~torch.tril(upper, diagonal=skv - sq + window_size[1])

    fused_softmax.get_default_causal_mask = causal_mask
    if hasattr(fused_softmax, "get_sliding_window_causal_mask"):
        fused_softmax.get_sliding_window_causal_mask = sliding_window_mask


def enable_cpu_backend(*, cuda_to_cpu_mode: bool = False) -> bool:
    """Install the CPU fallbacks once per process; returns whether the CPU backend is active.

    ``cuda_to_cpu_mode`` also enters :class:`CudaToCpuMode`, needed by Megatron's optimizers
    and pipeline schedules (a Python hook on every torch call).
    """
    if torch.cuda.is_available():
        return False
    if not _state["enabled"]:
        from megatron.core.tensor_parallel import random as mcore_random

        torch.cuda.current_device = lambda: "cpu"
        torch.cuda.synchronize = lambda *args, **kwargs: None
        torch.cuda.current_stream = lambda *args, **kwargs: _NullStream()
        torch.cuda.stream = lambda *args, **kwargs: contextlib.nullcontext()
        torch.cuda.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
        torch.cuda.manual_seed = torch.manual_seed
        mcore_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
        mcore_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
        logging.getLogger(mcore_random.__name__).addFilter(_CpuRngWarningFilter())
        _patch_causal_masks()
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
