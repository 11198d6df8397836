"""Checking that a mask (or a pruned weight) is exactly N:M along the input dimension."""
import torch

from .candidates import validate_nm


def group_counts(mask_RI: torch.Tensor, m: int) -> torch.Tensor:
    """Number of kept (non-zero) entries in each group of M consecutive inputs: [R, in/M]."""
    if mask_RI.dim() != 2 or mask_RI.shape[1] % m != 0:
        raise ValueError(
            f"expected a 2-D [rows, in] tensor with in divisible by M={m}, got {tuple(mask_RI.shape)}"
        )
    return (mask_RI != 0).reshape(mask_RI.shape[0], -1, m).sum(-1)


def nm_violations(mask_RI: torch.Tensor, n: int, m: int) -> int:
    """Number of groups that keep more than N of M (a 2:4 pruned weight may keep fewer)."""
    validate_nm(n, m)
    return int((group_counts(mask_RI, m) > n).sum())


def is_exact_nm(mask_RI: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of M keeps exactly N: what a learned or one-shot mask must be."""
    validate_nm(n, m)
    return bool((group_counts(mask_RI, m) == n).all())
