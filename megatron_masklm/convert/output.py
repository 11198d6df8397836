"""What the converters write: a single-process Megatron world to build models in, and the
files around a released checkpoint (``hf_to_megatron``'s layout, also what pruning saves)."""
import contextlib
import json
import os
from dataclasses import asdict
from typing import Any, Callable, Dict, Optional

from .. import checkpoints as layout
from ..architecture import ModelShape


@contextlib.contextmanager
def megatron_world_of_one():
    """megatron_masklm.mcore with TP = PP = 1 in this process (set up and torn down if needed).

    Yields ``(mcore, dist_checkpointing)``; conversions read and write checkpoints at TP=1,
    which Megatron's dist checkpoints reshard to any other size.
    """
    from megatron.core import dist_checkpointing

    from .. import mcore
    from ..mcore.parallel import tensor_parallel_world

    with tensor_parallel_world(single_process=True):
        yield mcore, dist_checkpointing


def write_release_files(directory: str, *, shape: ModelShape, hf_config: Optional[Dict[str, Any]],
                        save_tokenizer: Optional[Callable[[str], Any]] = None) -> None:
    """The files beside the dist checkpoint ``directory/release/`` (written by the caller):
    model_shape.json, hf_config.json (when there is one), the pointer to ``release`` and, with
    ``save_tokenizer`` (called with the target directory), tokenizer/."""
    write_json(os.path.join(directory, layout.MODEL_SHAPE_FILE), asdict(shape))
    if hf_config is not None:
        write_json(os.path.join(directory, layout.HF_CONFIG_FILE), hf_config)
    layout.write_release_pointer(directory)
    if save_tokenizer is not None:
        save_tokenizer(os.path.join(directory, layout.TOKENIZER_DIR))


def write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, sort_keys=True, default=str)
