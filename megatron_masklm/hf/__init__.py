"""Hugging Face checkpoint tools that need no megatron: applying and verifying N:M masks."""
from .masks import (
    MASKED_WEIGHT_RE,
    NMReport,
    ParamCheck,
    apply_masks_to_hf_dir,
    is_masked_weight,
    iter_safetensors,
    safetensors_files,
    verify_nm_path,
)

__all__ = [
    "MASKED_WEIGHT_RE", "NMReport", "ParamCheck", "apply_masks_to_hf_dir", "is_masked_weight",
    "iter_safetensors", "safetensors_files", "verify_nm_path",
]
