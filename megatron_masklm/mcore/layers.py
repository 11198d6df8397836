"""Masked Megatron-Core linears: W * M~ is formed first and handed to Megatron's own GEMM path.

Megatron's ColumnParallelLinear and RowParallelLinear route every GEMM through
``_forward_impl(input, weight, ...)``; the subclasses here substitute the masked weight there,
so sequence parallelism, the async TP all-reduce and Megatron's autograd function stay as they
are. The mask logits are sharded exactly like the weight: column-parallel splits rows (dim 0),
row-parallel splits inputs, i.e. logits dim 1 (groups).
"""
import contextlib
from typing import Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    set_tensor_model_parallel_attributes,
)

from ..masking import (
    MaskConfig,
    MaskState,
    check_group_shape,
    gumbel_noise,
    hard_mask,
    masked_weight,
    nm_candidates,
)
from . import compat
from .parallel import MASK_NOISE_RNG, shard_global_tensor


class MaskedLinearMixin:
    """Learnable N:M mask logits [rows, in/M, C(M,N)] on a Megatron linear's weight shard.

    Per-step values (temperature, logit scale, regulariser weight) are plain float attributes
    set by :func:`megatron_masklm.mcore.model.apply_mask_state`; nothing weight-sized is kept
    between forwards.
    """

    logits_tp_axis: int  # the logits dim that tensor parallelism splits

    def _init_mask(self, mask_config: Optional[MaskConfig]) -> None:
        if mask_config is None:
            raise ValueError(f"{type(self).__name__} needs mask_config=MaskConfig(...)")
        weight = self.weight
        if weight is None:
            raise ValueError(f"{type(self).__name__} cannot mask a weight that is not allocated "
                             "(skip_weight_param_allocation=True)")
        groups = check_group_shape(weight.shape, mask_config.m,
                                   what=f"{type(self).__name__} weight shard")
        candidates = nm_candidates(mask_config.n, mask_config.m, device=weight.device)
        self.mask_config = mask_config
        # 0/1 values, so any dtype cast keeps them exact; not saved (it follows from N:M).
        self.register_buffer("mask_candidates", candidates, persistent=False)
        logits = torch.nn.Parameter(torch.zeros(weight.shape[0], groups, candidates.shape[0],
                                                device=weight.device, dtype=torch.float32),
                                    requires_grad=not mask_config.frozen)
        if self.config.perform_initialization:
            self._init_logits(logits, mask_config.init_std)
        set_tensor_model_parallel_attributes(
            logits, True, self.logits_tp_axis, getattr(weight, "partition_stride", 1))
        logits.allreduce = getattr(weight, "allreduce", True)
        self.mask_logits = logits
        self.mask_enabled = True  # False: the plain weight (the dense teacher of distillation)
        self.set_mask_state(MaskState(temperature=mask_config.temperature[0],
                                      logit_scale=mask_config.logit_scale[0],
                                      reg_weight=mask_config.reg_weight[0]))
        for param in (self.weight, getattr(self, "bias", None)):
            if isinstance(param, torch.nn.Parameter):
                param.requires_grad_(mask_config.train_weights)

    @torch.no_grad()
    def _init_logits(self, logits: torch.Tensor, std: float) -> None:
        """Normal(0, std), drawn the way Megatron draws this weight.

        With CPU initialisation the full tensor is drawn and this rank's (strided) slice kept,
        as Megatron does for the weight, so every TP size starts from the same logits.
        """
        if self.config.use_cpu_initialization:
            group = compat.layer_tp_group(self)
            world, rank = group.size(), group.rank()
            stride = getattr(self.weight, "partition_stride", 1)
            full_shape = list(logits.shape)
            full_shape[self.logits_tp_axis] *= world
            full = torch.empty(full_shape, dtype=torch.float32).normal_(0.0, std)
            logits.copy_(shard_global_tensor(full, axis=self.logits_tp_axis, stride=stride,
                                             world=world, rank=rank))
        else:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                logits.normal_(0.0, std)

    def set_mask_state(self, state: MaskState) -> None:
        """Use this step's temperature, logit scale and regulariser weight (plain floats)."""
        self.temperature = float(state.temperature)
        self.logit_scale = float(state.logit_scale)
        self.reg_weight = float(state.reg_weight)

    def _draw_noise(self) -> torch.Tensor:
        tracker = tensor_parallel.get_cuda_rng_tracker()
        states = tracker.get_states()
        if MASK_NOISE_RNG in states:
            rng = tracker.fork(MASK_NOISE_RNG)
        elif states:
            rng = tracker.fork()
        else:  # no Megatron RNG set up (a plain single-process user): the default generator
            rng = contextlib.nullcontext()
        device = self.mask_logits.device
        if device.type == "cpu" and torch.cuda.is_available():
            # the tracker governs the CUDA generator: draw there, so (seed, iteration) still
            # fixes the noise of a layer kept on the host
            with rng:
                return gumbel_noise(self.mask_logits.shape,
                                    device=torch.cuda.current_device()).to(device)
        with rng:
            return gumbel_noise(self.mask_logits.shape, device=device)

    def masked_weight(self, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """W * M~ in training mode (fresh Gumbel noise), W * argmax-mask in eval mode and with a
        fixed mask (weight recovery: the pruned weights' gradient is then exactly 0); W itself
        while the mask is switched off (:func:`megatron_masklm.mcore.masks_off`)."""
        weight = self.weight if weight is None else weight
        if not self.mask_enabled:
            return weight
        logits, candidates = self.mask_logits, self.mask_candidates
        wants_logit_grad = torch.is_grad_enabled() and logits.requires_grad
        if self.mask_config.frozen or (not self.training and not wants_logit_grad):
            mask = hard_mask(logits, candidates).reshape(weight.shape)
            return weight * mask.to(weight.dtype)
        noise = None
        if self.training and self.mask_config.gumbel_noise:
            noise = self._draw_noise()
        return masked_weight(
            weight, logits, candidates,
            temperature=self.temperature,
            logit_scale=self.logit_scale,
            noise_RGC=noise,
            # eval mode: the exact argmax mask forward, straight-through gradient backward
            hard=self.mask_config.hard or not self.training,
            reg_weight=self.reg_weight if self.training else 0.0,
        )

    @torch.no_grad()
    def hard_mask(self) -> torch.Tensor:
        """The final boolean keep-mask of this shard, shaped like the weight shard."""
        return hard_mask(self.mask_logits, self.mask_candidates).reshape(self.weight.shape).bool()

    def _apply(self, fn, *args, **kwargs):
        # Float16Module casts the whole model to bf16/fp16; the logits stay fp32 (their updates
        # are far below bf16 resolution) but follow device moves.
        logits = self.mask_logits.data
        result = super()._apply(fn, *args, **kwargs)
        if self.mask_logits.dtype != torch.float32:
            self.mask_logits.data = logits.to(device=self.mask_logits.device)
        return result

    def _forward_impl(self, input, weight, *args, **kwargs):
        # Megatron's fused wgrad writes into weight.main_grad and returns no gradient; the
        # masked weight's gradient must flow back through autograd to reach the logits.
        if "gradient_accumulation_fusion" in kwargs:
            kwargs["gradient_accumulation_fusion"] = False
        return super()._forward_impl(input, self.masked_weight(weight), *args, **kwargs)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        """Megatron's sharded state plus the logits, split along the same TP axis as the weight."""
        sharded = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        key = f"{prefix}mask_logits"
        sharded.update(compat.sharded_tensors(
            {"mask_logits": self.mask_logits}, prefix, {"mask_logits": self.logits_tp_axis},
            sharded_offsets, tp_group=compat.layer_tp_group(self), metadata=metadata,
        ))
        if getattr(self, "glu_fc1", False) and self.config.gated_linear_unit:
            # Rows are this rank's [gate; up] halves: the same re-layout Megatron's MLP gives
            # the fc1 weight, so logits reshard between TP sizes exactly like it.
            sharded[key] = compat.swiglu_sharded(sharded[key], sharded_offsets, metadata)
        return sharded


class MaskedColumnParallelLinear(MaskedLinearMixin, ColumnParallelLinear):
    """ColumnParallelLinear with learnable N:M mask logits sharded along rows (dim 0)."""

    logits_tp_axis = 0

    def __init__(self, input_size, output_size, *, mask_config: MaskConfig = None,
                 glu_fc1: bool = False, **kwargs):
        super().__init__(input_size, output_size, **kwargs)
        self.glu_fc1 = glu_fc1
        self._init_mask(mask_config)


class MaskedRowParallelLinear(MaskedLinearMixin, RowParallelLinear):
    """RowParallelLinear with learnable N:M mask logits sharded along input groups (dim 1)."""

    logits_tp_axis = 1

    def __init__(self, input_size, output_size, *, mask_config: MaskConfig = None, **kwargs):
        super().__init__(input_size, output_size, **kwargs)
        self._init_mask(mask_config)
