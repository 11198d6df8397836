"""Loading a Megatron checkpoint without running code from its files (the allow-lists are in
``megatron_masklm.safe_pickle``).

Every load first reads each ``*.metadata`` file through the metadata allow-list, then runs
``dist_checkpointing`` with every ``torch.load`` forced weights-only. A checkpoint that needs
more than that (Megatron-LM's own, whose common state pickles an ``argparse.Namespace``) is
refused with an ``UnsafeCheckpointError`` naming the directory and the class; ``trust=True``
(the tools' ``--trust-checkpoint``) loads it the stock way, for files you created yourself.

This is the one place that calls ``dist_checkpointing.load`` and ``load_tensors_metadata``.
"""
import pickle
from contextlib import contextmanager
from typing import Any, Dict, Iterator

from ..safe_pickle import (TRUST_FLAG, UnsafeCheckpointError, check_metadata, trusting_loads,
                           weights_only_loads)

__all__ = ["UnsafeCheckpointError", "check_tensors_present", "load", "load_model_weights",
           "load_tensors_metadata"]


def _weights_only_failure(error: BaseException):
    """The weights-only unpickling error inside ``error`` (DCP wraps per-rank failures)."""
    seen = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, pickle.UnpicklingError) and "eights only" in str(current):
            return current
        stack += [current.__cause__, current.__context__]
        for failure in getattr(current, "failures", {}).values():  # DCP's CheckpointException
            stack.append(failure[0] if isinstance(failure, tuple) else failure)  # (error, trace)
    return None


@contextmanager
def _opening(directory: str, trust: bool) -> Iterator[None]:
    if trust:
        with trusting_loads():
            yield
        return
    check_metadata(directory)
    try:
        with weights_only_loads():
            yield
    except BaseException as error:  # DCP's CheckpointException is a BaseException
        failure = _weights_only_failure(error)
        if failure is None:
            raise
        first = str(failure).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line),
                      first[0] if first else "")
        raise UnsafeCheckpointError(
            f"{directory!r} holds a pickled object that torch's weights-only loader refuses "
            f"({detail.strip()}): opening it could run code, so it is refused. If you created "
            f"this checkpoint yourself and trust it, pass {TRUST_FLAG}") from None


def load(state: Dict[str, Any], directory: str, *, trust: bool = False) -> Dict[str, Any]:
    """``dist_checkpointing.load(state, directory)`` without running code from its files."""
    from megatron.core import dist_checkpointing

    with _opening(directory, trust):
        return dist_checkpointing.load(state, directory)


def load_tensors_metadata(directory: str, *, trust: bool = False):
    """``dist_checkpointing.load_tensors_metadata(directory)``, checked the same way."""
    from megatron.core import dist_checkpointing

    with _opening(directory, trust):
        return dist_checkpointing.load_tensors_metadata(directory)


def check_tensors_present(state: Dict[str, Any], directory: str, *, what: str,
                          trust: bool = False, logits_suffix: str = "mask_logits") -> None:
    """Every ShardedTensor ``state`` asks for must be in the checkpoint (else a clear error)."""
    from . import compat

    present = set(load_tensors_metadata(directory, trust=trust))
    missing = sorted(compat.sharded_tensor_keys(state) - present)
    if missing:
        logits = [key for key in missing if key.endswith(logits_suffix)]
        detail = (f"it has no mask logits for {len(logits)} of the model's masked weights "
                  f"(e.g. {logits[0]!r})"
                  if logits else f"{len(missing)} tensors are missing (e.g. {missing[:3]})")
        raise ValueError(f"{what} {directory!r} does not match this model: {detail}")


def load_model_weights(directory: str, *, model, skip_suffix: str, what: str,
                       trust: bool = False) -> None:
    """Load every tensor of ``model`` whose name does not end in ``skip_suffix`` from the dist
    checkpoint ``directory`` (TE's ``_extra_state`` aside), strictly otherwise."""
    from .model import load_model_tensors, without_te_extra_state

    state = {key: value for key, value in without_te_extra_state(model.sharded_state_dict()).items()
             if not key.endswith(skip_suffix)}
    check_tensors_present(state, directory, what=what, trust=trust, logits_suffix=skip_suffix)
    loaded = load(state, directory, trust=trust)  # also returns the common state
    load_model_tensors(model, {key: loaded[key] for key in state}, may_lack=(skip_suffix,))
