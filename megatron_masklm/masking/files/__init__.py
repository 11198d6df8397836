"""Mask files: the one home of their formats, reading, writing and applying (no megatron).

Two formats, told apart by their content (:func:`read_packed_masks`):

- ``npz-bits`` (:mod:`.npz`): the released format (SPEC section 5), one packed bit per weight
  under ``<name>.mask``, no shapes stored;
- ``compact`` (:mod:`.compact`, "masklm-nm-index/1"): one candidate index per group of M,
  with the shapes and N:M stored (its module docstring is the spec).

Entries are named by HF parameter names (``tools/export_masks.py``, ``--hf-masks``) or global
Megatron ones (``tools/prune_oneshot.py --output-mask``); mapping Megatron names and shards is
``megatron_masklm.convert.masks`` and ``megatron_masklm.mcore.global_masks``. :mod:`.apply`
applies a HF-named file to a state dict or a HF model.
"""
from .apply import (MASKED_WEIGHT_RE, apply_masks_to_hf_model, apply_masks_to_state_dict,
                    exact_mask, is_masked_weight, match_masks)
from .compact import (COMPACT_FORMAT, index_bits, indices_to_mask, mask_to_indices, pack_indices,
                      save_masks_compact, unpack_indices)
from .npz import MASK_SUFFIX, load_masks_npz, pack_mask, save_masks_npz, unpack_mask
from .packed import (FORMATS, PackedMasks, detect_mask_format, load_masks_any, load_masks_compact,
                     read_packed_masks, resolve_pattern, save_masks)

__all__ = [
    "COMPACT_FORMAT", "FORMATS", "MASKED_WEIGHT_RE", "MASK_SUFFIX", "PackedMasks",
    "apply_masks_to_hf_model", "apply_masks_to_state_dict", "detect_mask_format", "exact_mask",
    "index_bits", "indices_to_mask", "is_masked_weight", "load_masks_any", "load_masks_compact",
    "load_masks_npz", "mask_to_indices", "match_masks", "pack_indices", "pack_mask",
    "read_packed_masks", "resolve_pattern", "save_masks", "save_masks_compact", "save_masks_npz",
    "unpack_indices", "unpack_mask",
]
