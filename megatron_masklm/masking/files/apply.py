"""Applying a mask file under HF parameter names: to a state dict (a checkpoint shard) or to a
HF model's parameters in place. Each mask must be exactly the N:M it is applied as.

The names a HF mask file keys (``MASKED_WEIGHT_RE``: the attention and MLP linears of a
LLaMA-style model) are the ones a strict application requires a mask for.
"""
import re
from typing import Mapping, MutableMapping, Optional, Tuple

import torch

from ..nm import group_counts
from .compact import Shape
from .packed import PackedMasks, read_packed_masks, resolve_pattern

MASKED_WEIGHT_RE = re.compile(
    r"model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight")
"""HF LLaMA linears that MaskLLM masks (never embeddings, norms or the head)."""


def is_masked_weight(name: str) -> bool:
    """True for the LLaMA attention / MLP linear weights a mask applies to."""
    return MASKED_WEIGHT_RE.fullmatch(name) is not None


def match_masks(masks: PackedMasks, shapes: Mapping[str, Shape], *, what: str = "checkpoint",
                allow_missing_flag: Optional[str] = None, allow_missing: bool = False) -> None:
    """Every mask of ``masks`` must name a tensor of ``shapes`` (name -> shape of the ``what``'s
    tensors) and fit its shape; every masked weight of ``shapes`` must have a mask unless
    ``allow_missing``. ``allow_missing_flag``: the caller's flag that allows missing masks,
    named as the fix (None: the caller has none)."""
    unknown = sorted(set(masks.packed) - set(shapes))
    if unknown:
        raise ValueError(f"mask file {masks.path!r} has masks for {unknown[:5]} ({len(unknown)} "
                         f"in all) that are not parameters of the {what}")
    missing = sorted(name for name in shapes if is_masked_weight(name) and name not in masks.packed)
    if missing and not allow_missing:
        if allow_missing_flag is None:
            raise ValueError(f"mask file {masks.path!r} does not match the {what}: no mask for "
                             f"{missing[:5]} ({len(missing)} in all)")
        raise ValueError(f"{what} weights {missing[:5]} ({len(missing)} in all) have no mask "
                         f"in {masks.path!r}: pass {allow_missing_flag} to leave them dense")
    for name in masks.packed:
        masks.check_shape(name, shapes[name])


def exact_mask(masks: PackedMasks, name: str, shape: Shape, nm: Tuple[int, int]) -> torch.Tensor:
    """The bool keep-mask of ``name`` unpacked to ``shape``; a ValueError unless it keeps
    exactly N of every M."""
    n, m = nm
    keep = masks.unpack(name, shape)
    if keep.dim() != 2 or keep.shape[1] % m:
        raise ValueError(f"{name}: shape {tuple(shape)} is not 2-D [rows, in] with in divisible "
                         f"by M={m}, so it cannot be {n}:{m}")
    counts = group_counts(keep, m)
    bad = int((counts != n).sum())
    if bad:
        raise ValueError(f"mask {name!r} in {masks.path!r} is not exactly {n}:{m}: {bad} of "
                         f"{counts.numel()} groups keep a different count")
    return keep


def apply_masks_to_state_dict(tensors: MutableMapping[str, torch.Tensor], masks: PackedMasks,
                              nm: Tuple[int, int]) -> MutableMapping[str, torch.Tensor]:
    """Replace every tensor of ``tensors`` that has a mask by weight * mask (zeros written in
    place of the pruned entries), one at a time (a shard's worth of memory, not two); returns
    ``tensors``."""
    for name in [name for name in tensors if name in masks.packed]:
        tensor = tensors[name]
        tensors[name] = tensor.masked_fill(~exact_mask(masks, name, tuple(tensor.shape), nm), 0)
    return tensors


def apply_masks_to_hf_model(model: torch.nn.Module, path: str,
                            nm: Optional[Tuple[int, int]] = None) -> Tuple[int, int]:
    """Multiply the weights of a HF model by the mask file at ``path`` in place, strictly: each
    mask must name a parameter of the model and every linear MaskLLM masks must have one,
    exactly N:M (``nm``, else the file's, else 2:4). Returns that N:M."""
    masks = read_packed_masks(path)
    nm = resolve_pattern(nm, masks.nm)
    params = dict(model.named_parameters())
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        params.pop("lm_head.weight", None)
    match_masks(masks, {name: tuple(p.shape) for name, p in params.items()}, what="model")
    with torch.no_grad():
        for name in masks.packed:
            weight = params[name]
            weight.masked_fill_(~exact_mask(masks, name, tuple(weight.shape), nm)
                                .to(weight.device), 0)
    return nm
