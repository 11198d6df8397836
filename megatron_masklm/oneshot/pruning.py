"""One-shot N:M pruning on plain tensors: magnitude, Wanda and SparseGPT.

Shape legend: R rows (outputs), I inputs, G = I/M groups, M group size. Every method returns a
boolean keep-mask [R, I] with exactly N kept per group of M consecutive inputs. Ties are broken
deterministically: among equal scores the lower input index is kept.
"""
from typing import Optional, Tuple

import torch

from ..masking import check_group_shape, is_exact_nm, validate_nm


def nm_keep_mask(scores_RI: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest-scoring of every M consecutive inputs (lower index wins ties)."""
    n, m = validate_nm(n, m)
    rows, inputs = scores_RI.shape
    groups = check_group_shape(scores_RI.shape, m, what="scores")
    grouped = scores_RI.reshape(rows, groups, m)
    order = torch.argsort(-grouped.float(), dim=-1, stable=True)  # stable: lower index first
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(rows, inputs)


def magnitude_mask(weight_RI: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N largest |w| per group."""
    return nm_keep_mask(weight_RI.detach().abs(), n, m)


def wanda_mask(weight_RI: torch.Tensor, input_sq_norms_I: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Wanda: keep the N largest |W_ij| * ||X_j||_2 per group (``input_sq_norms_I`` = sum of x_j^2)."""
    if input_sq_norms_I.shape != weight_RI.shape[1:]:
        raise ValueError(f"input statistics of shape {tuple(input_sq_norms_I.shape)} do not match "
                         f"a weight with {weight_RI.shape[1]} inputs")
    return nm_keep_mask(weight_RI.detach().abs().float() * input_sq_norms_I.float().sqrt(), n, m)


def sparsegpt(weight_RI: torch.Tensor, hessian_II: torch.Tensor, n: int, m: int, *,
              blocksize: int = 128, percdamp: float = 0.01, update: bool = True,
              keep_RI: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """SparseGPT (Frantar & Alistarh, 2023) with N:M groups along the inputs.

    ``hessian_II`` is the layer-input second moment (2/n X^T X). Columns are pruned left to right;
    at the start of each group the M - N columns with the smallest w^2 / [H^-1]_jj^2 are pruned
    and the error is propagated to the later columns through the Cholesky factor of H^-1:
    column by column inside the group, then for the whole group at once to the rest of its
    block (one matrix product instead of M rank-1 updates), then block by block (lazy batch).
    Returns (keep-mask, updated weight or None without ``update``); the mask is the same either
    way, since it is chosen on the progressively updated weights.

    ``keep_RI``: a given exactly N:M keep-mask (a learned one, say) to reconstruct the weights
    for, instead of choosing one: the same column-by-column OBS update with that mask's pruned
    columns. Choosing is the only difference, so passing the mask SparseGPT itself picks gives
    its weights bit for bit.
    """
    n, m = validate_nm(n, m)
    rows, inputs = weight_RI.shape
    check_group_shape(weight_RI.shape, m, what="weight")
    if hessian_II.shape != (inputs, inputs):
        raise ValueError(f"Hessian of shape {tuple(hessian_II.shape)} does not match {inputs} inputs")
    if blocksize % m:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M={m}")
    if keep_RI is not None:
        if tuple(keep_RI.shape) != (rows, inputs):
            raise ValueError(f"keep-mask of shape {tuple(keep_RI.shape)} does not match the "
                             f"weight's {(rows, inputs)}")
        if not is_exact_nm(keep_RI, n, m):
            raise ValueError(f"the given keep-mask is not exactly {n}:{m} (N kept in every group "
                             f"of M consecutive inputs)")
        keep_RI = keep_RI.to(device=weight_RI.device, dtype=torch.bool)
    W = weight_RI.detach().float().clone()
    upper = _inverse_cholesky(hessian_II.detach().float().clone(), W, percdamp)
    keep = torch.ones_like(W, dtype=torch.bool)
    for start in range(0, inputs, blocksize):
        end = min(start + blocksize, inputs)
        block, errors = W[:, start:end].clone(), torch.zeros(rows, end - start, device=W.device)
        u = upper[start:end, start:end]
        diag = torch.diagonal(u)
        for g in range(0, end - start, m):
            group = slice(g, g + m)
            kept = (nm_keep_mask(block[:, group] ** 2 / diag[group] ** 2, n, m) if keep_RI is None
                    else keep_RI[:, start + g:start + g + m])
            keep[:, start + g:start + g + m] = kept
            pruned = (~kept).float()
            for j in range(m):  # OBS within the group, one column at a time
                i = g + j
                errors[:, i] = block[:, i] * pruned[:, j] / u[i, i]
                if j + 1 < m:
                    block[:, i + 1:g + m].addr_(errors[:, i], u[i, i + 1:g + m], alpha=-1.0)
            block[:, group] *= kept
            # the group's errors reach the rest of the block in one product
            block[:, g + m:].addmm_(errors[:, group], u[group, g + m:], alpha=-1.0)
        W[:, start:end] = block
        W[:, end:].addmm_(errors, upper[start:end, end:], alpha=-1.0)
    return keep, (W.to(weight_RI.dtype) if update else None)


def _inverse_cholesky(H: torch.Tensor, W: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damping)^-1; dead inputs (never active) get H_jj = 1, w = 0."""
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diagonal(H))
    H += damp * torch.eye(H.shape[0], device=H.device, dtype=H.dtype)
    try:
        lower = torch.linalg.cholesky(H)
    except RuntimeError as error:  # torch raises a LinAlgError (a RuntimeError)
        raise ValueError(f"the Hessian is not positive definite even with damping {percdamp}: "
                         "use more calibration data or a larger --percdamp") from error
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
