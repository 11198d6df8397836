"""Whole-model (unsharded) keep-masks named by global Megatron parameter names.

A mask file (a one-shot prior, an exported mask) holds one entry per masked weight, named
``decoder.layers.<global layer>.<path>.weight`` and shaped like the *unsharded* weight, with a
GLU fc1 laid out as [gate; up] (Megatron's checkpoint layout), or the same masks under HF names
(``model.layers.<i>.mlp.gate_proj.weight``, mapped by ``megatron_masklm.convert``); either file
format. These helpers map between that and this rank's shards, at any TP/PP size; reading such a
file onto a model is ``megatron_masklm.convert.masks.load_global_masks``, which names the
files' entries with the HF name map.
"""
import re
from typing import Dict, Tuple

import torch
from megatron.core.transformer.transformer_layer import TransformerLayer

from . import compat
from .layers import MaskedLinearMixin
from ..architecture import ModelShape
from .model import masked_linears
from .parallel import shard_global_tensor

_LAYER_INDEX = re.compile(r"^(.*?layers\.)(\d+)(\..*)$")


def _split(layer: MaskedLinearMixin) -> Tuple[int, int, int, int]:
    """(axis, stride, TP world, TP rank) of how ``layer``'s weight is sharded."""
    group = compat.layer_tp_group(layer)
    stride = 2 if getattr(layer, "glu_fc1", False) and layer.config.gated_linear_unit else 1
    return layer.logits_tp_axis, stride, group.size(), group.rank()


def global_weight_shape(layer: MaskedLinearMixin) -> Tuple[int, ...]:
    """Shape of the unsharded weight of a (possibly TP-sharded) masked linear."""
    axis, _, world, _ = _split(layer)
    shape = list(layer.weight.shape)
    shape[axis] *= world
    return tuple(shape)


def shard_global_mask(mask: torch.Tensor, layer: MaskedLinearMixin) -> torch.Tensor:
    """This rank's slice of an unsharded mask, laid out like ``layer``'s weight shard."""
    axis, stride, world, rank = _split(layer)
    expected = global_weight_shape(layer)
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit a weight of global "
                         f"shape {expected}")
    return shard_global_tensor(mask, axis=axis, stride=stride, world=world, rank=rank)


def global_name(name: str, owners: Dict[str, int]) -> str:
    """``name`` (a module in decoder layer ``<local i>``) renamed to its global layer number;
    ``owners`` maps each TransformerLayer's module name to its 0-based global index."""
    match = _LAYER_INDEX.match(name)
    owner = next((prefix for prefix in owners if name.startswith(prefix + ".")), None)
    if match is None or owner is None:
        return name
    return f"{match.group(1)}{owners[owner]}{match.group(3)}"


def layer_owners(model: torch.nn.Module) -> Dict[str, int]:
    """TransformerLayer module name -> its 0-based global layer index."""
    return {name: module.layer_number - 1 for name, module in model.named_modules()
            if isinstance(module, TransformerLayer)}


def global_layer_names(model: torch.nn.Module) -> Dict[str, str]:
    """Masked layer module name -> its global name (pipeline stages renumber their layers)."""
    owners = layer_owners(model)
    return {name: global_name(name, owners) for name, _ in masked_linears(model)}


def all_global_shapes(model: torch.nn.Module, num_layers: int) -> Dict[str, Tuple[int, ...]]:
    """Global weight name -> unsharded shape for every masked weight of every layer."""
    shapes = {}
    for name, layer in masked_linears(model):
        match = _LAYER_INDEX.match(name)
        if match is None:
            shapes[f"{name}.weight"] = global_weight_shape(layer)
            continue
        for index in range(num_layers):
            shapes[f"{match.group(1)}{index}{match.group(3)}.weight"] = global_weight_shape(layer)
    return shapes


def check_shape_fits(shape: ModelShape, model: torch.nn.Module) -> None:
    """A ValueError unless ``shape`` has the layers, width, heads and query groups ``model``
    was built with."""
    config, groups = model.config, shape.num_query_groups or shape.num_attention_heads
    given = (shape.num_layers, shape.hidden_size, shape.num_attention_heads, groups)
    built = (config.num_layers, config.hidden_size, config.num_attention_heads,
             config.num_query_groups or config.num_attention_heads)
    if given != built:
        raise ValueError(f"model shape (layers, hidden, heads, query groups) {given} is not the "
                         f"one the model was built with {built}")


def model_pattern(model: torch.nn.Module) -> Tuple[int, int]:
    """(N, M) of the model's masked layers: one pattern for all of them, else a ValueError."""
    patterns = {(layer.mask_config.n, layer.mask_config.m) for _, layer in masked_linears(model)}
    if len(patterns) != 1:
        raise ValueError(f"expected one N:M pattern over the model's masked layers, got "
                         f"{sorted(patterns) or 'no masked layers'}")
    return patterns.pop()
