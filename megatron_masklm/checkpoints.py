"""Where things are in a Megatron checkpoint directory: one place for the layout that training,
conversion, pruning and evaluation share (Megatron-LM's, so its tools find their way around).

    <dir>/latest_checkpointed_iteration.txt   the pointer: an iteration number, or "release"
    <dir>/release/  or  <dir>/iter_0000100/    a megatron.core dist checkpoint (metadata.json)
        masklm_checkpoint.json                 a training run's: iteration, N:M, run config
    <dir>/model_shape.json                     ModelShape (no shape flags needed)
    <dir>/hf_config.json                       the HF config it was converted from (the way back)
    <dir>/tokenizer/                           the tokenizer files

Nothing here imports megatron.core (nor any subpackage: a leaf module, usable from every
layer); reading the weights is ``mcore.loading``'s (``load_model``, ``load_dense_weights``).
"""
import json
import os
import re
import sys
from typing import Any, Dict, Optional, Tuple

from .architecture import ModelShape

POINTER_FILE = "latest_checkpointed_iteration.txt"
RELEASE = "release"
META_FILE = "masklm_checkpoint.json"
MODEL_SHAPE_FILE = "model_shape.json"
HF_CONFIG_FILE = "hf_config.json"
TOKENIZER_DIR = "tokenizer"
DIST_METADATA = "metadata.json"
LOGITS_SUFFIX = "mask_logits"
"""The name every masked linear's logits parameter ends with."""


def iteration_dir(run_dir: str, iteration: int) -> str:
    return os.path.join(run_dir, f"iter_{iteration:07d}")


def latest_checkpoint(run_dir: Optional[str], *,
                      announce: Optional[str] = "using") -> Optional[str]:
    """The directory the pointer of ``run_dir`` names; without a pointer, its newest complete
    ``iter_*`` (or ``release``) checkpoint, said on stderr as "``announce`` it" (None: silently);
    None when it holds no checkpoint at all. A pointer is written last, so a run killed between
    a checkpoint's rename and the pointer's first write has complete checkpoints but no pointer."""
    if not run_dir:
        return None
    pointer = os.path.join(run_dir, POINTER_FILE)
    if not os.path.exists(pointer):
        return _newest_complete(run_dir, announce=announce)
    with open(pointer, encoding="utf-8") as handle:
        text = handle.read().strip()
    if text == RELEASE:
        return os.path.join(run_dir, RELEASE)
    try:
        return iteration_dir(run_dir, int(text))
    except ValueError:
        raise ValueError(f"checkpoint pointer {pointer!r} holds {text!r}, not an iteration") from None


def _is_complete(directory: str) -> bool:
    """A whole checkpoint: the dist checkpoint's metadata, and a training run's own metadata
    (``release`` dirs, converted or pruned, have none)."""
    own = (os.path.basename(directory) == RELEASE
           or os.path.exists(os.path.join(directory, META_FILE)))
    return own and is_dist_checkpoint(directory)


def _newest_complete(run_dir: str, *, announce: Optional[str]) -> Optional[str]:
    try:
        names = os.listdir(run_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None
    iterations = sorted((int(match.group(1)), name) for name in names
                        if (match := re.fullmatch(r"iter_(\d+)", name)))
    candidates = [name for _, name in reversed(iterations)] + [RELEASE] * (RELEASE in names)
    if not candidates:
        return None
    for name in candidates:
        if _is_complete(os.path.join(run_dir, name)):
            if announce:
                print(f"note: no {POINTER_FILE} in {run_dir}: {announce} its newest complete "
                      f"checkpoint {name}", file=sys.stderr, flush=True)
            return os.path.join(run_dir, name)
    raise ValueError(
        f"{run_dir!r} has no {POINTER_FILE} and none of its checkpoints ({', '.join(candidates)}) "
        f"is complete (each needs {DIST_METADATA} and {META_FILE}; a save cut short leaves them "
        "out): pass a directory with a complete checkpoint, or delete the incomplete ones")


def write_release_pointer(directory: str) -> None:
    """Point ``directory``'s pointer at its ``release/`` checkpoint (converted or pruned)."""
    with open(os.path.join(directory, POINTER_FILE), "w", encoding="utf-8") as handle:
        handle.write(RELEASE)


def is_dist_checkpoint(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, DIST_METADATA))


def resolve_checkpoint(path: str) -> Tuple[str, str]:
    """(root dir, dist checkpoint dir) for a run/converted dir or a dist checkpoint dir."""
    pointed = latest_checkpoint(path)
    if pointed:
        return path, pointed
    if is_dist_checkpoint(path):
        return os.path.dirname(os.path.abspath(path)), path
    raise ValueError(f"{path!r} is not a Megatron checkpoint: no {POINTER_FILE} and no "
                     f"{DIST_METADATA}")


def resolve_dense_checkpoint(path: str) -> str:
    """A dense checkpoint directory: a dist checkpoint, or a run dir with a pointer file."""
    if is_dist_checkpoint(path):
        return path
    pointed = latest_checkpoint(path)
    if pointed and is_dist_checkpoint(pointed):
        return pointed
    raise ValueError(f"--pretrained-checkpoint {path!r} is neither a Megatron dist checkpoint "
                     f"(no {DIST_METADATA}) nor a run directory with {POINTER_FILE}")


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """A JSON file's content, None when it does not exist, a ValueError naming it if unreadable."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path!r}: {error}") from error


def read_model_shape(checkpoint_dir: Optional[str]) -> Dict[str, Any]:
    """The model shape saved next to a checkpoint (empty if there is none)."""
    if not checkpoint_dir:
        return {}
    return dict(read_json(os.path.join(checkpoint_dir, MODEL_SHAPE_FILE)) or {})


def checkpoint_sources(root: str, directory: str):
    """(shape, pattern, HF config, tokenizer dir) of a checkpoint: the shape from the root's
    model_shape.json or the run's metadata; the HF config and tokenizer from the root or, for a
    training run that has none of its own, from its pretrained checkpoint."""
    meta = read_json(os.path.join(directory, META_FILE))
    shape = read_json(os.path.join(root, MODEL_SHAPE_FILE))
    if shape is None and meta is not None:
        shape = meta["run_config"]["model"]
    if shape is None:
        raise ValueError(f"no {MODEL_SHAPE_FILE} in {root!r}: cannot tell the model's shape")
    homes = [root]
    if meta is not None and meta["run_config"]["checkpoint"].get("pretrained_checkpoint"):
        homes.append(meta["run_config"]["checkpoint"]["pretrained_checkpoint"])
    hf_config = next((c for c in (read_json(os.path.join(h, HF_CONFIG_FILE)) for h in homes) if c),
                     None)
    tokenizer = next((os.path.join(h, TOKENIZER_DIR) for h in homes
                      if os.path.isdir(os.path.join(h, TOKENIZER_DIR))), None)
    return ModelShape.from_dict(shape), (meta or {}).get("pattern"), hf_config, tokenizer
