"""Gumbel-softmax N:M masks, in fp32 whatever the weight's dtype.

Shape legend: R rows (output features), I input features, G = I / M groups per row,
M group size, C = C(M, N) candidates.
"""
from typing import Optional

import torch


def check_group_shape(weight_shape, m: int, *, what: str = "weight") -> int:
    """Return G = in / M for a [rows, in] weight, or raise naming the shape and the fix."""
    if len(weight_shape) != 2:
        raise ValueError(f"{what} must be 2-D [rows, in], got shape {tuple(weight_shape)}")
    in_features = weight_shape[1]
    if in_features % m != 0:
        raise ValueError(
            f"{what} input dimension {in_features} (shape {tuple(weight_shape)}) is not divisible "
            f"by M={m}: N:M groups run along the input dimension. Choose an M that divides it, "
            f"or leave this layer dense (under tensor parallelism this is the per-rank shard)."
        )
    return in_features // m


def check_logits_shape(logits_RGC: torch.Tensor, weight_shape, candidates_CM: torch.Tensor) -> None:
    """Raise unless logits are laid out [rows, in/M, C] for this weight and candidate set."""
    num_c, m = candidates_CM.shape
    groups = check_group_shape(weight_shape, m)
    expected = (weight_shape[0], groups, num_c)
    if tuple(logits_RGC.shape) != expected:
        raise ValueError(
            f"mask logits have shape {tuple(logits_RGC.shape)}, expected {expected} "
            f"[rows, in/M, C(M,N)] for a weight of shape {tuple(weight_shape)}"
        )


def gumbel_noise(shape, *, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """I.i.d. Gumbel(0, 1) samples in fp32: -log(-log(U)), U ~ Uniform(0, 1) kept off 0 and 1."""
    uniform = torch.rand(shape, device=device, dtype=torch.float32, generator=generator)
    tiny = torch.finfo(torch.float32).tiny
    # in place: the same values as -log(-log(u)) at less than half the time on CPU
    return uniform.clamp_(min=tiny, max=1.0 - 1e-7).log_().neg_().log_().neg_()


def _scores(logits_RGC, logit_scale, noise_RGC):
    scores = logits_RGC.float() * logit_scale
    return scores if noise_RGC is None else scores + noise_RGC


def soft_mask(
    logits_RGC: torch.Tensor,
    candidates_CM: torch.Tensor,
    *,
    temperature: float,
    logit_scale: float,
    noise_RGC: Optional[torch.Tensor] = None,
    hard: bool = False,
) -> torch.Tensor:
    """Differentiable mask [R, G, M] = sum_k softmax((kappa*pi + g)/tau)_k S_k, plain autograd.

    With ``hard`` the forward value is the sampled candidate and the gradient the soft one
    (straight-through). :func:`masked_weight` computes the same with less memory.
    """
    scores = _scores(logits_RGC, logit_scale, noise_RGC)
    probs = torch.softmax(scores / temperature, dim=-1)
    if hard:
        one_hot = torch.nn.functional.one_hot(scores.argmax(-1), probs.shape[-1]).to(probs.dtype)
        probs = one_hot - probs.detach() + probs
    return probs @ candidates_CM.float()


@torch.no_grad()
def expected_mask(
    logits_RGC: torch.Tensor, candidates_CM: torch.Tensor, *, temperature: float, logit_scale: float
) -> torch.Tensor:
    """The noise-free soft mask [R, G, M] without autograd, for monitoring: :func:`soft_mask`'s
    value through the training forward's in-place softmax (several times faster on CPU)."""
    probs = _softmax_last_(_scores(logits_RGC, logit_scale, None) / temperature)
    return probs @ candidates_CM.float()


def hard_mask(logits_RGC: torch.Tensor, candidates_CM: torch.Tensor) -> torch.Tensor:
    """The final (eval) mask [R, G, M]: per group, the candidate with the largest logit."""
    return candidates_CM[logits_RGC.argmax(-1)]


class _MaskedWeight(torch.autograd.Function):
    """W * M~ with the sparse-weight regulariser's gradient folded into the backward.

    Saves only the softmax probabilities (C/M fp32 values per weight) and recomputes the mask
    in backward, so no mask-sized tensor outlives the forward except inside autograd.
    """

    @staticmethod
    def forward(ctx, weight, logits, noise, candidates, temperature, logit_scale, hard, reg_weight):
        scores = _scores(logits, logit_scale, noise)
        probs = _softmax_last_(scores / temperature)
        # without noise the pick is exactly argmax(logits): scaling could merge near-ties
        index = (logits if noise is None else scores).argmax(-1) if hard else None
        mask = _mask_from(probs, index, candidates, weight.shape)
        ctx.save_for_backward(weight, probs, candidates, index)
        ctx.scale = logit_scale / temperature
        ctx.reg_weight = reg_weight
        ctx.logits_dtype = logits.dtype
        return weight * mask.to(weight.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        weight, probs, candidates, index = ctx.saved_tensors
        mask = _mask_from(probs, index, candidates, weight.shape)
        grad_weight = grad_logits = None
        if ctx.needs_input_grad[0]:
            grad_weight = grad_out * mask.to(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            w = weight.float()
            # dL/dM = W * grad - 2 lambda W^2 M: the regulariser -lambda ||W M||^2 (W detached).
            grad_mask = w * mask
            grad_mask.mul_(-2.0 * ctx.reg_weight).add_(grad_out.float()).mul_(w)
            grad_probs = grad_mask.view(*probs.shape[:2], -1) @ candidates.t().float()
            grad_scores = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True))
            grad_logits = (grad_scores * ctx.scale).to(ctx.logits_dtype)
        return grad_weight, grad_logits, None, None, None, None, None, None


def _softmax_last_(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, in place. On CPU, torch.softmax over a last dimension as
    short as C(4,2) = 6 is about 5x slower than these four vectorised passes (same maths,
    within an fp32 rounding); the mask's softmax runs over every group of every layer."""
    scores -= scores.amax(-1, keepdim=True)
    scores.exp_()
    scores /= scores.sum(-1, keepdim=True)
    return scores


def _mask_from(probs_RGC, index_RG, candidates_CM, weight_shape):
    if index_RG is None:
        mask = probs_RGC @ candidates_CM.float()
    else:
        mask = candidates_CM.float()[index_RG]
    return mask.reshape(weight_shape)


def masked_weight(
    weight_RI: torch.Tensor,
    logits_RGC: torch.Tensor,
    candidates_CM: torch.Tensor,
    *,
    temperature: float,
    logit_scale: float,
    noise_RGC: Optional[torch.Tensor] = None,
    hard: bool = False,
    reg_weight: float = 0.0,
) -> torch.Tensor:
    """W * M~ in W's dtype, mask maths in fp32; the logit gradient includes the regulariser.

    ``reg_weight`` is lambda of loss = LM - lambda * ||W * M~||^2 (W detached). It acts only
    through the backward, so it works on every pipeline stage without touching the loss; scale
    it like the loss (e.g. by 1 / num_microbatches) when gradients are accumulated.
    """
    check_logits_shape(logits_RGC, weight_RI.shape, candidates_CM)
    return _MaskedWeight.apply(
        weight_RI, logits_RGC, noise_RGC, candidates_CM, temperature, logit_scale, hard, reg_weight
    )


def sparse_weight_regularizer(weight_RI: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum ||W * M~||^2 in fp32 with W detached (the value whose -lambda multiple joins the loss)."""
    return (weight_RI.detach().float() * mask.reshape(weight_RI.shape)).pow(2).sum()
