"""Final keep-masks of a Megatron checkpoint, written under HF parameter names."""
from typing import Dict

import torch

from ..masking import parse_nm, save_masks_npz
from ..masking.compact import save_masks_compact
from .megatron_to_hf import load_megatron_checkpoint

FORMATS = ("npz", "compact")


def export_masks(checkpoint: str, path: str, *, fmt: str = "npz") -> Dict[str, torch.Tensor]:
    """Write the argmax masks of ``checkpoint`` (read at TP=1 from any TP/PP) to ``path``.

    ``npz``: the released per-parameter packed-bit format (SPEC section 5); ``compact``: one
    candidate index per group (megatron_masklm.masking.compact). Returns the masks.
    """
    if fmt not in FORMATS:
        raise ValueError(f"mask format {fmt!r} is not one of {FORMATS}")
    loaded = load_megatron_checkpoint(checkpoint)
    if not loaded.masks:
        raise ValueError(f"{checkpoint!r} has no mask logits: it is a dense checkpoint")
    if fmt == "npz":
        save_masks_npz(path, loaded.masks)
    else:
        n, m = parse_nm(loaded.pattern)
        save_masks_compact(path, loaded.masks, n=n, m=m)
    return loaded.masks
