"""Loading a Megatron checkpoint without running code from its files (the allow-lists are in
``megatron_masklm.safe_pickle``).

Every load first reads each ``*.metadata`` file through the metadata allow-list, then runs
``dist_checkpointing`` with every ``torch.load`` forced weights-only. A checkpoint that needs
more than that (Megatron-LM's own, whose common state pickles an ``argparse.Namespace``) is
refused with an ``UnsafeCheckpointError`` naming the directory and the class; ``trust=True``
(the tools' ``--trust-checkpoint``) loads it the stock way, for files you created yourself.

This is the one place that calls ``dist_checkpointing.load`` and ``load_tensors_metadata``.
"""
import os
import pickle
import zipfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

from ..cli_errors import CheckpointError
from ..safe_pickle import (TRUST_FLAG, UnsafeCheckpointError, check_metadata, trusting_loads,
                           weights_only_loads)

__all__ = ["UnsafeCheckpointError", "check_common_file", "check_tensor_shapes",
           "check_tensors_present", "load", "load_tensors_metadata"]

COMMON_FILE = "common.pt"
"""The file of a dist checkpoint that holds its non-tensor (common) state."""


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

    check_common_file(directory)
    with _opening(directory, trust):
        return dist_checkpointing.load(state, directory)


def check_common_file(directory: str) -> None:
    """The checkpoint's common state file must be there and whole (Megatron's reader fails on a
    missing one with an AttributeError and on a cut one with a zip error, naming neither)."""
    path = os.path.join(directory, COMMON_FILE)
    fix = "the save did not finish or the file was damaged; pick another checkpoint or re-create it"
    if not os.path.isfile(path):
        from . import compat

        if not compat.common_state_file_required():
            return  # this megatron-core keeps the common state in the shards
        raise CheckpointError(f"checkpoint {directory!r} is incomplete: its {COMMON_FILE} is "
                              f"missing ({fix})")
    try:
        with zipfile.ZipFile(path) as archive:  # torch.save's format; CRCs checked, nothing run
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"checkpoint {directory!r} is damaged: its {COMMON_FILE} cannot be "
                              f"read ({error}): it is truncated or corrupt ({fix})") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint {directory!r} is damaged: its {COMMON_FILE} has a "
                              f"corrupt entry {bad!r} ({fix})")


def load_tensors_metadata(directory: str, *, trust: bool = False):
    """``dist_checkpointing.load_tensors_metadata(directory)``, checked the same way."""
    from megatron.core import dist_checkpointing

    with _opening(directory, trust):
        return dist_checkpointing.load_tensors_metadata(directory)


def check_tensors_present(state: Dict[str, Any], directory: str, *, what: str,
                          trust: bool = False, logits_suffix: str = "mask_logits",
                          fix: Optional[str] = None,
                          present: Optional[Dict[str, Any]] = None) -> None:
    """Every ShardedTensor ``state`` asks for must be in the checkpoint, with the global shape
    it has there (else a clear error, ending in ``fix`` when given). ``present``: the
    checkpoint's tensor metadata, when already read."""
    from . import compat

    if present is None:
        present = load_tensors_metadata(directory, trust=trust)
    missing = sorted(compat.sharded_tensor_keys(state) - set(present))
    if missing:
        logits = [key for key in missing if key.endswith(logits_suffix)]
        detail = (f"it has no mask logits for {len(logits)} of the model's masked weights "
                  f"(e.g. {logits[0]!r})"
                  if logits else f"{len(missing)} tensors are missing (e.g. {missing[:3]})")
        raise ValueError(f"{what} {directory!r} does not match this model: {detail}"
                         + (f": {fix}" if fix else ""))
    check_tensor_shapes(state, present, directory, what=what, fix=fix)


def check_tensor_shapes(state: Dict[str, Any], present: Dict[str, Any], directory: str, *,
                        what: str, fix: Optional[str] = None) -> None:
    """Every ShardedTensor of ``state`` must have the global shape the checkpoint's metadata
    (``present``) gives it; else a ValueError that names the difference (the layer count, or the
    first tensor that differs) and ``fix`` (default: the model's shape flags), where Megatron's
    loader raises a bare shape error."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    differ = {}
    for value in nested_values(state):
        if isinstance(value, ShardedTensor) and value.key in present:
            saved = tuple(present[value.key].global_shape)
            if saved != tuple(value.global_shape):
                differ[value.key] = (saved, tuple(value.global_shape))
    if not differ:
        return
    layers = {(saved[0], wanted[0]) for saved, wanted in differ.values()}
    only_layers = all(key.startswith("decoder.layers.") and saved[1:] == wanted[1:]
                      for key, (saved, wanted) in differ.items())
    if only_layers and len(layers) == 1:  # layers are stacked on the first axis
        saved, wanted = layers.pop()
        raise ValueError(f"{what} {directory!r} has {saved} layers but the model has {wanted}: "
                         + (fix or f"drop --num-layers or set it to {saved}, or pick the "
                                   "matching checkpoint"))
    key, (saved, wanted) = sorted(differ.items())[0]
    raise ValueError(f"{what} {directory!r} does not match this model's shape: {key!r} is "
                     f"{list(saved)} in the checkpoint but {list(wanted)} in the model "
                     f"({len(differ)} tensors differ): "
                     + (fix or "fix the shape flags (--hidden-size, --ffn-hidden-size, "
                               "--num-attention-heads, --num-query-groups, --num-layers, "
                               "--vocab-size) or pick the matching checkpoint"))
