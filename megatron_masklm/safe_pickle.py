"""What may be unpickled from a checkpoint: the allow-lists that let a Megatron (torch
distributed) checkpoint be opened without running code from its files.

A torch_dist checkpoint holds pickles in two places, and stock loading runs both:

* ``.metadata``, which torch's ``FileSystemReader`` reads with ``pickle.load``: a crafted one
  runs any command when the checkpoint is opened, before a single tensor is read;
* byte entries (Megatron's ShardedObjects such as the RNG state, the common state in
  megatron-core >= 0.17) and ``common.pt``, which go through ``torch.load``; torch's
  ``DefaultLoadPlanner`` passes ``weights_only=False`` for the byte entries.

``check_metadata`` reads each ``*.metadata`` file with an unpickler that knows only the classes
DCP metadata holds (dataclasses of ``torch.distributed.checkpoint``, ``torch.Size``, dtypes and
layouts) and refuses anything else without looking it up or calling it.
``weights_only_loads`` sets ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, torch's own switch that makes
every ``torch.load`` use the weights-only unpickler (tensors and plain Python values only),
whatever the caller passed. ``mcore.safe_load`` applies both around every Megatron load.
No megatron import here.
"""
import io
import os
import pickle
from contextlib import contextmanager
from typing import Any, Iterator

import torch

TRUST_FLAG = "--trust-checkpoint"
TRUST_HELP = ("open the Megatron checkpoint even if its files hold pickled objects beyond tensors "
              "and checkpoint metadata, which could run code: only for checkpoints you created")

_DCP = "torch.distributed.checkpoint"
_ALLOWED = {
    (f"{_DCP}.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    (f"{_DCP}.planner", name) for name in (
        "SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "LoadPlan", "ReadItem",
        "LoadItemType")
} | {
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a lookup in torch's own table of layouts
    ("collections", "OrderedDict"),
}
_TORCH_CONSTANTS = (torch.dtype, torch.layout)  # DCP stores memory formats as an enum


class UnsafeCheckpointError(ValueError):
    """A checkpoint file would need code outside the allow-lists to be unpickled."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata; any other global is refused before it is looked up or called."""

    def __init__(self, handle, path: str):
        super().__init__(handle)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_CONSTANTS):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"{self.path!r} asks to unpickle {module}.{name}, which checkpoint metadata never "
            "holds: opening it could run code, so it is refused. If you created this checkpoint "
            f"yourself and trust it, pass {TRUST_FLAG}")

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f"{self.path!r} holds a persistent reference ({pid!r}), which "
                                    "checkpoint metadata never holds; refused")


def read_metadata(path: str) -> Any:
    """The object a DCP ``.metadata`` file holds, unpickled through the allow-list."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return _MetadataUnpickler(io.BytesIO(data), path).load()
    except UnsafeCheckpointError:
        raise
    except Exception as error:  # truncated or not a pickle at all
        raise ValueError(f"cannot read checkpoint metadata {path!r} ({type(error).__name__}: "
                         f"{error}): the file is damaged or not a torch distributed "
                         "checkpoint's") from None


def check_metadata(directory: str) -> None:
    """Read every ``*.metadata`` file of ``directory`` through the allow-list (see module) and
    check the shard files it names are all there, whole."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    paths = [os.path.join(directory, name) for name in sorted(names) if name.endswith(".metadata")]
    if not paths:
        raise ValueError(f"{directory!r} is not a torch distributed checkpoint: it has no "
                         ".metadata file")
    for path in paths:
        check_shards(directory, read_metadata(path))


def check_shards(directory: str, metadata: Any) -> None:
    """Every shard file the metadata points into exists and is long enough (a copy or save that
    stopped part-way otherwise ends in a bare EOFError deep inside the reader)."""
    needed = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        name = getattr(info, "relative_path", None)
        if name is not None:
            needed[name] = max(needed.get(name, 0), int(info.offset) + int(info.length))
    for name, size in sorted(needed.items()):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint {directory!r} is incomplete: its shard {name!r} is "
                             "missing (the save or copy did not finish); use another checkpoint "
                             "or copy it again")
        actual = os.path.getsize(path)
        if actual < size:
            raise ValueError(f"checkpoint {directory!r} is incomplete: its shard {name!r} has "
                             f"{actual} bytes but the metadata needs {size} (truncated by a save "
                             "or copy that did not finish); use another checkpoint or copy it "
                             "again")


@contextmanager
def _torch_load_switch(force: str, clear: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in (force, clear)}
    os.environ[force] = "1"
    os.environ.pop(clear, None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def weights_only_loads():
    """Every ``torch.load`` inside uses torch's weights-only unpickler (its own switch)."""
    return _torch_load_switch("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")


def trusting_loads():
    """``torch.load`` calls inside that do not choose get the full unpickler (torch's switch for
    it): the stock loading of a checkpoint the user vouches for (``--trust-checkpoint``)."""
    return _torch_load_switch("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD")
