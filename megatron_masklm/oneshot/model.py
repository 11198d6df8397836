"""Sequential one-shot N:M pruning of a dense Megatron-Core GPT model, at any TP size.

As in the SparseGPT and Wanda papers, layer by layer: the calibration hidden states enter
decoder layer i; a first pass through the layer collects the input statistics of its linears
(forward pre-hooks); the linears are pruned; a second pass through the *pruned* layer gives the
inputs of layer i+1. So each layer is calibrated on what the already-pruned layers before it
produce. The pruning maths on plain tensors is in this package (``pruning``, ``statistics``);
this module walks the Megatron model (imported by name: ``oneshot/__init__`` imports no
megatron), on mcore's sharding helpers.

Tensor parallelism changes nothing in the result:
- column-parallel linears (qkv, fc1) see the whole input on every rank, so their statistics
  are already full; each rank prunes its own rows (N:M groups run along the input, and every
  method treats rows independently given the statistics);
- row-parallel linears (proj, fc2) see a slice of the input. Magnitude and Wanda scores are
  per input column, so the slice is enough. SparseGPT needs the full-width Hessian and full
  rows: the inputs are all-gathered before they enter the Hessian, the weight is gathered, each
  rank runs SparseGPT on a share of the rows and the results are gathered back.

The pruned model keeps its pruned (SparseGPT: updated) weights in memory; what to write is the
caller's choice. The returned keep-masks are unsharded and keyed by global Megatron names,
the layout :func:`megatron_masklm.convert.masks.load_global_masks` reads.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.transformer_layer import TransformerLayer
from tqdm import tqdm

from ..mcore import compat
from ..mcore.global_masks import global_name, layer_owners
from ..mcore.parallel import gather_global_tensor, shard_global_tensor
from .config import PruneConfig
from .pruning import magnitude_mask, sparsegpt, wanda_mask
from .statistics import InputStatistics


@dataclass
class _Linear:
    """A parallel linear of a decoder layer and how its weight is split over TP."""

    name: str  # global module name
    module: torch.nn.Module
    axis: int  # 0: column-parallel (rows split), 1: row-parallel (inputs split)
    stride: int  # 2 for a GLU fc1 ([gate; up] halves each split)

    @property
    def group(self):
        return compat.layer_tp_group(self.module)


class _CaughtLayerInput(Exception):
    """Raised by a pre-hook to stop a model forward at the first decoder layer."""


def _layer_linears(layer: TransformerLayer, prefix: str, owners: Dict[str, int]) -> List[_Linear]:
    linears = []
    for name, module in layer.named_modules():
        if isinstance(module, RowParallelLinear):
            axis = 1
        elif isinstance(module, ColumnParallelLinear):
            axis = 0
        else:
            continue
        full = f"{prefix}.{name}"
        glu = name.endswith("linear_fc1") and layer.config.gated_linear_unit
        linears.append(_Linear(global_name(full, owners), module, axis, 2 if glu else 1))
    if not linears:
        raise RuntimeError(f"decoder layer {prefix} has no Megatron parallel linear to prune: "
                           "build the model with the local (non Transformer Engine) spec")
    return linears


def _decoder_layers(model: torch.nn.Module) -> List[Tuple[str, TransformerLayer]]:
    layers = [(name, module) for name, module in model.named_modules()
              if isinstance(module, TransformerLayer)]
    if not layers:
        raise ValueError("the model has no Megatron TransformerLayer to prune")
    return layers


@torch.no_grad()
def _layer_inputs(model, first_layer, tokens_NS: torch.Tensor, micro_batch_size: int):
    """Per micro-batch (args, kwargs) the decoder passes its first layer: whatever this
    megatron-core release passes (rotary embeddings, masks), captured by a pre-hook."""
    device = next(model.parameters()).device
    captured = []

    def catch(module, args, kwargs):
        captured.append((args, kwargs))
        raise _CaughtLayerInput

    handle = first_layer.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in tokens_NS.split(micro_batch_size):
            batch = batch.to(device)
            positions = torch.arange(batch.shape[1], device=device).unsqueeze(0).expand_as(batch)
            try:
                model(batch, positions, None)
            except _CaughtLayerInput:
                continue
            raise RuntimeError("the model forward never reached its first decoder layer")
    finally:
        handle.remove()
    return captured


def _with_hidden(args, kwargs, hidden):
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    return (hidden, *args[1:]), kwargs


def _run_layer(layer, captured) -> List[tuple]:
    """The layer's output for every captured micro-batch, as the next layer's (args, kwargs)."""
    outputs = []
    for args, kwargs in captured:
        output = layer(*args, **kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
        outputs.append(_with_hidden(args, kwargs, hidden))
    return outputs


class _AllInputsSeen(Exception):
    """Raised once every linear of a layer has had its input: the rest of the pass is unused."""


def _collect(linears: List[_Linear], layer, captured, *, hessian: bool) -> Dict[str, InputStatistics]:
    """One pass through ``layer`` with hooks: statistics of every linear's input.

    A row-parallel input is all-gathered for the Hessian (full width, cross-shard terms
    included); for Wanda's per-column norms the local slice is exact already. Each micro-batch
    stops as soon as the last linear's input is seen (the last matmul's output is not needed).
    """
    stats, handles, seen = {}, [], set()

    def hook_for(linear: _Linear, gather: bool) -> Callable:
        def hook(module, args):
            x = args[0]
            if gather:
                x = gather_global_tensor(x, axis=x.dim() - 1, stride=1, group=linear.group)
            stats[linear.name].add(x)
            seen.add(linear.name)
            if len(seen) == len(linears):
                raise _AllInputsSeen
        return hook

    for linear in linears:
        gather = hessian and linear.axis == 1 and linear.group.size() > 1
        width = linear.module.weight.shape[1] * (linear.group.size() if gather else 1)
        stats[linear.name] = InputStatistics(width, hessian=hessian,
                                             device=linear.module.weight.device)
        handles.append(linear.module.register_forward_pre_hook(hook_for(linear, gather)))
    try:
        for args, kwargs in captured:
            seen.clear()
            try:
                layer(*args, **kwargs)
            except _AllInputsSeen:
                continue
            missing = sorted({linear.name for linear in linears} - seen)
            raise RuntimeError(f"a forward of the layer never ran {missing}")
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _sparsegpt_rows(weight_RI, hessian, config: PruneConfig, group, fixed_RI=None):
    """SparseGPT on the full rows, each rank of ``group`` taking a contiguous share of them
    (and of the given keep-mask's rows)."""
    world, rank = group.size(), group.rank()
    rows = weight_RI.shape[0]
    share = -(-rows // world)
    mine = weight_RI[rank * share:(rank + 1) * share]
    given = None if fixed_RI is None else fixed_RI[rank * share:(rank + 1) * share]
    keep, updated = sparsegpt(mine, hessian, config.n, config.m, blocksize=config.blocksize,
                              percdamp=config.percdamp, update=True, keep_RI=given)
    if world == 1:
        return keep, updated
    keeps = _all_gather_padded(keep, share, group)
    weights = _all_gather_padded(updated, share, group)
    return keeps[:rows], weights[:rows]


def _all_gather_padded(local: torch.Tensor, share: int, group) -> torch.Tensor:
    padded = local.new_zeros(share, *local.shape[1:])
    padded[:local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(group.size())]
    dist.all_gather(pieces, padded, group=group)
    return torch.cat(pieces)


def _prune_linear(linear: _Linear, stats: Optional[InputStatistics], config: PruneConfig,
                  fixed: Optional[torch.Tensor] = None):
    """(keep-mask, new weight) for this rank's shard of ``linear``; ``fixed``: the unsharded
    keep-mask SparseGPT reconstructs the weight for instead of choosing one."""
    weight = linear.module.weight.detach()
    if config.method == "magnitude":
        keep = magnitude_mask(weight, config.n, config.m)
        return keep, weight * keep
    if config.method == "wanda":
        keep = wanda_mask(weight, stats.sq_norms, config.n, config.m)
        return keep, weight * keep
    group = linear.group
    if linear.axis == 0 or group.size() == 1:  # full inputs here: this rank's rows only
        given = None if fixed is None else shard_global_tensor(
            fixed, axis=linear.axis, stride=linear.stride, world=group.size(), rank=group.rank())
        keep, updated = sparsegpt(weight, stats.hessian, config.n, config.m,
                                  blocksize=config.blocksize, percdamp=config.percdamp, update=True,
                                  keep_RI=given)
        return keep, updated
    full = gather_global_tensor(weight, axis=1, stride=1, group=group)
    keep, updated = _sparsegpt_rows(full, stats.hessian, config, group, fixed)
    rank, world = group.rank(), group.size()
    return keep.chunk(world, dim=1)[rank], updated.chunk(world, dim=1)[rank]


def _check_groups(linears: List[_Linear], m: int) -> None:
    for linear in linears:
        inputs = linear.module.weight.shape[1]
        if inputs % m:
            raise ValueError(f"{linear.name} has {inputs} inputs on this rank, not a multiple of "
                             f"M={m}: pick an N:M whose M divides it, or a smaller TP size")


@torch.no_grad()
def prune_model(model: torch.nn.Module, config: PruneConfig,
                calibration_NS: Optional[torch.Tensor] = None, *, progress: bool = True,
                fixed_masks: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """Prune every decoder-layer linear of a dense GPTModel (TP >= 1, PP = 1) in place.

    ``calibration_NS``: token windows [N, S] (Wanda and SparseGPT), the same on every rank.
    Returns unsharded boolean keep-masks on the CPU keyed ``<global module name>.weight``,
    the same on every rank. The model's weights end pruned (SparseGPT: updated and pruned).

    ``fixed_masks`` (SparseGPT only; unsharded, keyed as the result is): prune by these masks
    instead of choosing, with SparseGPT's OBS update of the kept weights (the one-shot
    recovery of a learned mask). Each layer is still calibrated on the layers before it as
    pruned and updated.
    """
    if config.needs_data and (calibration_NS is None or calibration_NS.numel() == 0):
        raise ValueError(f"{config.method} needs calibration windows; magnitude needs none")
    if fixed_masks is not None and config.method != "sparsegpt":
        raise ValueError(f"a given mask is pruned by with SparseGPT's weight update; "
                         f"{config.method} only chooses masks")
    model.eval()
    owners = layer_owners(model)
    layers = _decoder_layers(model)
    captured = (_layer_inputs(model, layers[0][1], calibration_NS, config.micro_batch_size)
                if config.needs_data else None)
    masks = {}
    show = progress and (not dist.is_initialized() or dist.get_rank() == 0)
    bar = tqdm(layers, desc=f"{config.method} {config.n}:{config.m}", unit="layer", disable=not show)
    for prefix, layer in bar:
        linears = _layer_linears(layer, prefix, owners)
        _check_groups(linears, config.m)
        stats = (_collect(linears, layer, captured, hessian=config.method == "sparsegpt")
                 if config.needs_data else {})
        for linear in linears:
            fixed = None
            if fixed_masks is not None:
                fixed = fixed_masks.get(f"{linear.name}.weight")
                if fixed is None:
                    raise ValueError(f"the given masks have no entry for {linear.name}.weight")
            keep, weight = _prune_linear(linear, stats.get(linear.name), config, fixed)
            linear.module.weight.copy_(weight.to(linear.module.weight.dtype))
            masks[f"{linear.name}.weight"] = gather_global_tensor(
                keep, axis=linear.axis, stride=linear.stride, group=linear.group).cpu()
        del stats
        if captured is not None and layer is not layers[-1][1]:
            captured = _run_layer(layer, captured)
    return masks


def global_linear_shapes(model: torch.nn.Module) -> Dict[str, Tuple[int, ...]]:
    """``<global module name>.weight`` -> unsharded shape of every decoder-layer linear of a
    dense model (PP = 1): the names and shapes :func:`prune_model`'s masks have."""
    owners, shapes = layer_owners(model), {}
    for prefix, layer in _decoder_layers(model):
        for linear in _layer_linears(layer, prefix, owners):
            shape = list(linear.module.weight.shape)
            shape[linear.axis] *= linear.group.size()
            shapes[f"{linear.name}.weight"] = tuple(shape)
    return shapes


@torch.no_grad()
def apply_global_masks(model: torch.nn.Module, masks: Dict[str, torch.Tensor]) -> None:
    """Multiply every decoder-layer linear's weight shard by its slice of ``masks`` (unsharded,
    keyed ``<global module name>.weight`` as :func:`prune_model` returns them)."""
    owners = layer_owners(model)
    for prefix, layer in _decoder_layers(model):
        for linear in _layer_linears(layer, prefix, owners):
            key = f"{linear.name}.weight"
            if key not in masks:
                raise ValueError(f"no mask for {key}")
            group = linear.group
            shard = shard_global_tensor(masks[key], axis=linear.axis, stride=linear.stride,
                                        world=group.size(), rank=group.rank())
            weight = linear.module.weight
            if shard.shape != weight.shape:
                raise ValueError(f"mask for {key} has shard shape {tuple(shard.shape)}, the weight "
                                 f"{tuple(weight.shape)}")
            weight.mul_(shard.to(device=weight.device, dtype=weight.dtype))
