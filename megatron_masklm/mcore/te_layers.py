"""Masked variants of Megatron's Transformer Engine linears (GPU only, import-guarded).

TE modules take no weight argument; their forward reads ``self.weight`` (via getattr), so the
masked weight is put in the module's parameter slot for the duration of the call and the real
parameter is restored afterwards (the fp32 logits are hidden meanwhile: TE requires one dtype
for all of a module's parameters). TE then runs its own fused GEMMs, sequence parallelism and
comm overlap on W * M~. FP8/FP4 compute, delayed wgrad and fused wgrad accumulation would
bypass autograd (and the logits), so they are refused or switched off here.

:class:`MaskedTEMixin` needs nothing from TE (tests run it on CPU against a stand-in with TE's
contract); the classes built on Megatron's TE wrappers exist only where TE imports.
"""
from . import compat
from .layers import MaskedLinearMixin

__all__ = ["MaskedTEMixin"]


class MaskedTEMixin(MaskedLinearMixin):
    """The masked forward for a linear that reads ``self.weight`` itself, as TE's do."""

    def _init_te_mask(self, mask_config):
        config = self.config
        low_precision = [name for name in ("fp8", "fp4") if getattr(config, name, None)]
        if low_precision or getattr(self, "te_quant_params", None) is not None:
            raise ValueError(
                f"masked TE linears do not support {' or '.join(low_precision) or 'quantized'} "
                "compute: the learned mask needs the bf16/fp32 weight every step; train masks in "
                "bf16 (unset --fp8/--fp4 and any quantization recipe)")
        if getattr(config, "delay_wgrad_compute", False):
            raise ValueError("delay_wgrad_compute bypasses autograd and would starve the mask "
                             "logits of gradients: switch it off for mask training")
        self._init_mask(mask_config)
        # TE's fused wgrad writes into weight.main_grad and returns no gradient through
        # autograd; the masked weight's gradient is what reaches the logits.
        self.fuse_wgrad_accumulation = False

    def forward(self, x, *args, **kwargs):
        params = self._parameters
        weight, logits = params["weight"], params["mask_logits"]
        params["weight"] = self.masked_weight(weight)
        # TE asserts that all its parameters share the activation dtype; the fp32 logits are
        # already in the autograd graph of the masked weight, so hide them for the call.
        del params["mask_logits"]
        try:
            return super().forward(x, *args, **kwargs)
        finally:
            params["weight"], params["mask_logits"] = weight, logits


if compat.HAVE_TE:
    from megatron.core.extensions.transformer_engine import (
        TEColumnParallelLinear,
        TELayerNormColumnParallelLinear,
        TERowParallelLinear,
    )

    class MaskedTELayerNormColumnParallelLinear(MaskedTEMixin, TELayerNormColumnParallelLinear):
        """TE fused layernorm + column-parallel linear with N:M mask logits on rows (dim 0)."""

        logits_tp_axis = 0

        def __init__(self, input_size, output_size, *, mask_config=None, glu_fc1=False, **kwargs):
            super().__init__(input_size, output_size, **kwargs)
            self.glu_fc1 = glu_fc1
            self._init_te_mask(mask_config)

    class MaskedTEColumnParallelLinear(MaskedTEMixin, TEColumnParallelLinear):
        """TE column-parallel linear with N:M mask logits on rows (dim 0)."""

        logits_tp_axis = 0

        def __init__(self, input_size, output_size, *, mask_config=None, glu_fc1=False, **kwargs):
            super().__init__(input_size, output_size, **kwargs)
            self.glu_fc1 = glu_fc1
            self._init_te_mask(mask_config)

    class MaskedTERowParallelLinear(MaskedTEMixin, TERowParallelLinear):
        """TE row-parallel linear with N:M mask logits on input groups (dim 1)."""

        logits_tp_axis = 1

        def __init__(self, input_size, output_size, *, mask_config=None, **kwargs):
            super().__init__(input_size, output_size, **kwargs)
            self._init_te_mask(mask_config)

    TE_MASKED_CLASSES = {
        TELayerNormColumnParallelLinear: MaskedTELayerNormColumnParallelLinear,
        TEColumnParallelLinear: MaskedTEColumnParallelLinear,
        TERowParallelLinear: MaskedTERowParallelLinear,
    }
    __all__ += ["MaskedTELayerNormColumnParallelLinear", "MaskedTEColumnParallelLinear",
                "MaskedTERowParallelLinear"]
else:
    TE_MASKED_CLASSES = {}
