"""Pure-PyTorch MaskLLM maths and mask files (``files``): no megatron import, runs anywhere.

Shape legend: R rows, I inputs, G = I/M groups, M group size, C = C(M, N) candidates.
"""
from .candidates import MAX_M, nm_candidates, num_candidates, parse_nm, validate_nm
from .config import MaskConfig
from .files import (
    COMPACT_FORMAT,
    PackedMasks,
    detect_mask_format,
    index_bits,
    indices_to_mask,
    load_masks_any,
    load_masks_compact,
    load_masks_npz,
    mask_to_indices,
    pack_indices,
    pack_mask,
    read_packed_masks,
    save_masks_compact,
    save_masks_npz,
    unpack_indices,
    unpack_mask,
)
from .nm import group_counts, is_exact_nm, nm_violations
from .prior import apply_prior_, candidate_overlap, fixed_logits, prior_logit_shift
from .sampling import (
    check_group_shape,
    expected_mask,
    gumbel_noise,
    hard_mask,
    masked_weight,
    soft_mask,
    sparse_weight_regularizer,
)
from .schedules import MaskState, linear_schedule, mask_state_at

__all__ = [
    "MAX_M", "MaskConfig", "MaskState", "apply_prior_", "candidate_overlap", "check_group_shape",
    "expected_mask", "fixed_logits", "group_counts", "gumbel_noise", "hard_mask", "is_exact_nm", "linear_schedule",
    "load_masks_npz", "mask_state_at", "masked_weight", "nm_candidates", "nm_violations",
    "num_candidates", "pack_mask", "parse_nm", "prior_logit_shift", "save_masks_npz",
    "soft_mask", "sparse_weight_regularizer", "unpack_mask", "validate_nm",
    # mask files (megatron_masklm.masking.files)
    "COMPACT_FORMAT", "PackedMasks", "detect_mask_format", "index_bits", "indices_to_mask",
    "load_masks_any", "load_masks_compact", "mask_to_indices", "pack_indices",
    "read_packed_masks", "save_masks_compact", "unpack_indices",
]
