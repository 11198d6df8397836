"""Megatron-Core glue: masked parallel linears, the spec transform, the model builder, the one
loader of a model from a checkpoint (``loading``: conversion, export, pruning and evaluation use
``load_model``, training ``load_dense_weights``), reading checkpoints with no code from their
files run (``safe_load``), whole-model masks <-> this rank's shards (``global_masks``), version
compatibility and the CPU (gloo) backend.

It imports only ``masking`` and the leaf modules; ``convert``, ``oneshot``, ``evaluation`` and
``training`` build on it. Importing it imports megatron.core, and it is the one place that
builds a GPTModel or loads a dist checkpoint; the packages above import megatron.core
themselves only for what they drive directly (``data``: datasets; ``convert``, ``oneshot``,
``training``: dist-checkpoint saving and parallel state; ``oneshot.model``: the layer classes
it prunes; ``training``: DDP and the optimizer).
"""
from ..architecture import ModelShape
from .cpu_backend import enable_cpu_backend
from .layers import MaskedColumnParallelLinear, MaskedLinearMixin, MaskedRowParallelLinear
from .model import (
    apply_mask_state,
    apply_mask_training_freeze,
    apply_fixed_masks,
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
    "apply_masking_to_spec", "masks_off", "apply_fixed_masks", "apply_prior_masks", "build_masked_gpt_model",
    "build_dense_gpt_model", "build_transformer_config", "check_nm", "destroy_distributed", "enable_cpu_backend",
    "get_masked_gpt_layer_spec", "hard_masks", "initialize_distributed", "masked_linears",
    "load_model_tensors", "seed_mask_noise", "set_random_seeds", "use_transformer_engine",
    "without_te_extra_state",
]
