"""Megatron-Core glue: the only package that imports megatron.core.

Masked parallel linears, the spec transform, the model builder, version compatibility and
the CPU (gloo) backend.
"""
from ..architecture import ModelShape
from .cpu_backend import enable_cpu_backend
from .layers import MaskedColumnParallelLinear, MaskedLinearMixin, MaskedRowParallelLinear
from .model import (
    apply_mask_state,
    apply_mask_training_freeze,
    apply_prior_masks,
    build_dense_gpt_model,
    build_masked_gpt_model,
    build_transformer_config,
    check_nm,
    hard_masks,
    load_model_tensors,
    masked_linears,
    masks_off,
    use_transformer_engine,
    without_te_extra_state,
)
from .parallel import (MASK_NOISE_RNG, destroy_distributed, initialize_distributed, seed_mask_noise,
                       set_random_seeds)
from .spec import apply_masking_to_spec, get_masked_gpt_layer_spec

__all__ = [
    "MASK_NOISE_RNG", "MaskedColumnParallelLinear", "MaskedLinearMixin",
    "MaskedRowParallelLinear", "ModelShape", "apply_mask_state", "apply_mask_training_freeze",
    "apply_masking_to_spec", "masks_off", "apply_prior_masks", "build_masked_gpt_model",
    "build_dense_gpt_model", "build_transformer_config", "check_nm", "destroy_distributed", "enable_cpu_backend",
    "get_masked_gpt_layer_spec", "hard_masks", "initialize_distributed", "masked_linears",
    "load_model_tensors", "seed_mask_noise", "set_random_seeds", "use_transformer_engine",
    "without_te_extra_state",
]
