"""Initial logits and the one-shot prior shift (SPEC section 2)."""
from typing import Optional

import torch

from .sampling import check_group_shape


def candidate_overlap(prior_mask_RI: torch.Tensor, candidates_CM: torch.Tensor) -> torch.Tensor:
    """Kept positions each candidate shares with the prior, per group: [R, G, C] in fp32."""
    _, m = candidates_CM.shape
    groups = check_group_shape(prior_mask_RI.shape, m, what="prior mask")
    prior = prior_mask_RI.reshape(prior_mask_RI.shape[0], groups, m).float()
    return prior @ candidates_CM.float().t()


def prior_logit_shift(
    prior_mask_RI: torch.Tensor,
    candidates_CM: torch.Tensor,
    *,
    strength: float,
    logits_std: float,
) -> torch.Tensor:
    """alpha * std(pi) * (overlap(M0, S_k) - N/2) for every group and candidate: [R, G, C]."""
    if not bool(((prior_mask_RI == 0) | (prior_mask_RI == 1)).all()):
        raise ValueError("prior mask must be binary (0/1 or bool): pass the keep-mask, not weights")
    n = candidates_CM[0].sum().item()
    return strength * logits_std * (candidate_overlap(prior_mask_RI, candidates_CM) - n / 2)


def fixed_logits(mask_RI: torch.Tensor, candidates_CM: torch.Tensor) -> torch.Tensor:
    """Logits [R, G, C] whose argmax is exactly ``mask_RI`` (an exact N:M keep-mask): 1 for the
    candidate equal to each group, 0 for the others. A fixed mask (weight recovery) is held so."""
    n = int(candidates_CM[0].sum().item())
    overlap = candidate_overlap(mask_RI.to(candidates_CM.device), candidates_CM)
    matches = overlap == n
    if not bool((matches.sum(-1) == 1).all()) or not bool(((mask_RI == 0) | (mask_RI == 1)).all()):
        raise ValueError(f"a fixed mask must keep exactly {n} of every {candidates_CM.shape[1]} "
                         f"consecutive inputs")
    return matches.float()


@torch.no_grad()
def apply_prior_(
    logits_RGC: torch.Tensor,
    prior_mask_RI: torch.Tensor,
    candidates_CM: torch.Tensor,
    *,
    strength: float,
    logits_std: Optional[float] = None,
) -> torch.Tensor:
    """Shift ``logits_RGC`` in place towards the candidates that agree with a one-shot mask.

    ``logits_std`` is the std of the whole layer's logits before the update; pass it when the
    tensor is a tensor-parallel shard, so every shard uses the unsharded layer's value.
    """
    num_c, m = candidates_CM.shape
    groups = check_group_shape(prior_mask_RI.shape, m, what="prior mask")
    expected = (prior_mask_RI.shape[0], groups, num_c)
    if tuple(logits_RGC.shape) != expected:
        raise ValueError(
            f"prior mask of shape {tuple(prior_mask_RI.shape)} does not match logits of shape "
            f"{tuple(logits_RGC.shape)}: expected logits {expected} [rows, in/M, C(M,N)]"
        )
    if logits_std is None:
        logits_std = logits_RGC.float().std().item()
    shift = prior_logit_shift(
        prior_mask_RI.to(logits_RGC.device), candidates_CM.to(logits_RGC.device),
        strength=strength, logits_std=logits_std,
    )
    logits_RGC.add_(shift.to(logits_RGC.dtype))
    return logits_RGC
