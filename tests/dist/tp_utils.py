"""Helpers for the 2-rank tests: gather a TP shard into the unsharded layout, by hand."""
import torch
import torch.distributed as dist
from megatron.core import parallel_state


def gather_tp(shard: torch.Tensor, *, axis: int, stride: int = 1) -> torch.Tensor:
    """Concatenate every TP rank's shard along ``axis``; with stride 2 (GLU fc1) each rank holds
    [gate_r; up_r], and the unsharded tensor is [gate_0; gate_1; ...; up_0; up_1; ...]."""
    group = parallel_state.get_tensor_model_parallel_group()
    world = dist.get_world_size(group)
    if world == 1:
        return shard.clone()
    parts = [torch.empty_like(shard) for _ in range(world)]
    dist.all_gather(parts, shard.contiguous(), group=group)
    pieces = [part.chunk(stride, dim=axis) for part in parts]
    return torch.cat([pieces[r][s] for s in range(stride) for r in range(world)], dim=axis)


def layer_axis_stride(layer):
    """The TP split axis of a masked layer's logits and its stride (2 for a GLU fc1)."""
    stride = 2 if getattr(layer, "glu_fc1", False) and layer.config.gated_linear_unit else 1
    return layer.logits_tp_axis, stride
