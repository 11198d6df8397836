"""Build masked Megatron-Core GPT models from a :class:`ModelShape`, and act on their masks."""
import contextlib
import functools
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from ..architecture import ModelShape
from ..masking import MaskConfig, MaskState, apply_prior_, fixed_logits, is_exact_nm
from . import compat, features
from .attention import with_sdpa_attention
from .layers import MaskedLinearMixin
from .spec import MASKED_LINEAR_CLASSES, get_masked_gpt_layer_spec

ACTIVATION_FUNCTIONS = {"silu": F.silu, "gelu": F.gelu,
                        "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}


def build_transformer_config(
    shape: ModelShape,
    *,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    sequence_parallel: bool = False,
    bf16: bool = False,
    use_cpu_initialization: Optional[bool] = None,
    **overrides,
) -> TransformerConfig:
    """Megatron TransformerConfig for ``shape``; fused kernels off where CUDA is absent."""
    on_gpu = torch.cuda.is_available()
    groups = shape.groups
    if groups % tensor_model_parallel_size:
        raise ValueError(f"num_query_groups {groups} is not divisible by tensor-parallel size "
                         f"{tensor_model_parallel_size}: pick a TP size that divides it")
    if shape.num_layers % pipeline_model_parallel_size:
        raise ValueError(f"num_layers {shape.num_layers} is not divisible by pipeline-parallel "
                         f"size {pipeline_model_parallel_size}")
    kwargs = dict(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=groups,
        kv_channels=shape.kv_channels,
        layernorm_epsilon=shape.norm_eps,
        normalization=shape.normalization,
        gated_linear_unit=shape.gated_linear_unit,
        activation_func=ACTIVATION_FUNCTIONS[shape.activation],
        add_bias_linear=shape.add_bias_linear,
        add_qkv_bias=shape.add_qkv_bias,
        qk_layernorm=shape.qk_layernorm,
        softmax_scale=shape.softmax_scale,
        window_size=(shape.window_size - 1, 0) if shape.window_size else None,
        window_attn_skip_freq=shape.window_attn_skip_freq if shape.window_size else None,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        sequence_parallel=sequence_parallel and tensor_model_parallel_size > 1,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_cpu_initialization=(not on_gpu) if use_cpu_initialization is None else use_cpu_initialization,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=on_gpu and shape.add_bias_linear,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=on_gpu and compat.HAVE_TE,
        apply_rope_fusion=False,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


TRANSFORMER_IMPLS = ("auto", "transformer_engine", "local")
"""Layer implementations: TE where it can run, TE (or an error), Megatron's local modules."""


def use_transformer_engine(impl: str) -> bool:
    """Whether layer implementation ``impl`` (one of :data:`TRANSFORMER_IMPLS`) means Transformer
    Engine layers here; asking for TE where it cannot run is an error."""
    if impl not in TRANSFORMER_IMPLS:
        raise ValueError(f"transformer_impl {impl!r} is not one of {TRANSFORMER_IMPLS}")
    if impl == "local":
        return False
    if impl == "auto":
        return compat.HAVE_TE and torch.cuda.is_available()
    if not compat.HAVE_TE:
        raise ValueError("transformer_impl 'transformer_engine' needs Transformer Engine, which "
                         "does not import here (NGC PyTorch containers ship it): use 'local'")
    if not torch.cuda.is_available():
        raise ValueError("transformer_impl 'transformer_engine' needs a CUDA GPU: use 'local'")
    return True


def build_masked_gpt_model(
    shape: ModelShape,
    mask_config: MaskConfig,
    *,
    config: Optional[TransformerConfig] = None,
    use_te: bool = False,
    pre_process: bool = True,
    post_process: bool = True,
    sdpa_attention: bool = False,
) -> GPTModel:
    """A Megatron-Core GPTModel whose transformer-block linears all carry learnable N:M masks.

    Embeddings, output head and norms are never masked; in mask-only mode (the default) they and
    the weights are frozen, so only the logits get gradients and optimizer state.
    ``sdpa_attention`` as in :func:`build_dense_gpt_model` (local spec only).
    """
    config = config or build_transformer_config(shape)
    _check_te_features(shape, use_te)
    spec = get_masked_gpt_layer_spec(mask_config, use_te=use_te, normalization=config.normalization,
                                     qk_layernorm=config.qk_layernorm)
    spec = features.with_architecture_features(spec, shape)
    if sdpa_attention:
        spec = with_sdpa_attention(spec)
    model = _gpt_model(shape, config, spec, pre_process=pre_process, post_process=post_process)
    _check_every_block_linear_is_masked(model)
    if torch.cuda.is_available():  # torch norms and CPU-initialised weights start on the host
        model.cuda(torch.cuda.current_device())
    apply_mask_training_freeze(model, train_weights=mask_config.train_weights,
                               frozen_mask=mask_config.frozen)
    if not mask_config.train_weights and config.recompute_granularity == "full" and pre_process:
        # Reentrant checkpointing only back-propagates into blocks whose *inputs* need grad; with
        # a frozen embedding nothing would reach the logits. Mark the embedding output instead.
        model.embedding.register_forward_hook(_require_grad_on_output)
    return model


def build_dense_gpt_model(shape: ModelShape, *, config: Optional[TransformerConfig] = None,
                          use_te: bool = False, pre_process: bool = True,
                          post_process: bool = True, sdpa_attention: bool = False) -> GPTModel:
    """The same GPTModel without masks: what a dense Megatron checkpoint of ``shape`` holds
    (its state-dict keys are the masked model's minus the logits). ``sdpa_attention`` computes
    the local spec's causal attention with torch's fused kernel (same maths, faster on CPU)."""
    config = config or build_transformer_config(shape)
    _check_te_features(shape, use_te)
    spec = compat.gpt_layer_spec(use_te=use_te, normalization=config.normalization,
                                qk_layernorm=config.qk_layernorm)
    spec = features.with_architecture_features(spec, shape)
    if sdpa_attention:
        spec = with_sdpa_attention(spec)
    model = _gpt_model(shape, config, spec, pre_process=pre_process, post_process=post_process)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


def _gpt_model(shape: ModelShape, config: TransformerConfig, spec, *, pre_process: bool,
               post_process: bool) -> GPTModel:
    tp = config.tensor_model_parallel_size
    if shape.vocab_size % tp:
        raise ValueError(f"vocab_size {shape.vocab_size} is not divisible by tensor-parallel size "
                         f"{tp}: pad the vocabulary to a multiple of {tp}")
    final_norm = features.final_norm_class(shape)
    if final_norm is not None:  # the block's own final norm, and this stage's layers
        layers = shape.num_layers // config.pipeline_model_parallel_size
        spec = TransformerBlockSubmodules(layer_specs=[spec] * layers, layer_norm=final_norm)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=shape.vocab_size,
        max_sequence_length=shape.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=shape.tied_embeddings,
        position_embedding_type=shape.position_embedding_type,
        rotary_base=shape.rotary_base,
        **({"rope_scaling": True, "rope_scaling_factor": shape.rope_scaling_factor}
           if shape.rope_scaling_factor else {}),
    )
    features.install_hooks(model, shape)
    return model


def _check_te_features(shape: ModelShape, use_te: bool) -> None:
    needs_local = [name for name in ("layernorm_zero_centered_gamma", "post_sublayer_norms")
                   if getattr(shape, name)]
    if use_te and needs_local:
        raise ValueError(f"{shape.family} layers ({', '.join(needs_local)}) build with the local "
                         "spec only in this release: use transformer_impl 'local'")


def _check_every_block_linear_is_masked(model: torch.nn.Module) -> None:
    """Fail loudly if a spec layout this code does not know left a block linear dense."""
    dense_types = tuple(MASKED_LINEAR_CLASSES)
    decoder = getattr(model, "decoder", model)
    dense = [name for name, module in decoder.named_modules()
             if isinstance(module, dense_types) and not isinstance(module, MaskedLinearMixin)]
    if dense:
        raise RuntimeError(
            f"these transformer-block linears were left unmasked: {dense[:4]} ({len(dense)} in "
            "all); this megatron-core release lays out its layer spec in a way "
            "megatron_masklm.mcore.spec.apply_masking_to_spec does not know yet"
        )


def _require_grad_on_output(module, inputs, output):
    if torch.is_grad_enabled() and not output.requires_grad:
        output.requires_grad_(True)
    return output


def masked_linears(model: torch.nn.Module) -> Iterator[Tuple[str, MaskedLinearMixin]]:
    """(name, layer) for every masked linear in ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, MaskedLinearMixin):
            yield name, module


TE_EXTRA_STATE = "_extra_state"


def without_te_extra_state(sharded_state: dict) -> dict:
    """A model's sharded state dict without Transformer Engine's ``_extra_state`` objects.

    They hold FP8 scaling metadata (masked layers refuse FP8), and TE modules have them where
    the local ones do not (the final norm), so leaving them out of a load lets a checkpoint
    saved with one layer implementation load into the other; the tensors' checkpoint keys
    already agree (Megatron saves the local norms under TE's fused-norm names).
    """
    return {key: value for key, value in sharded_state.items()
            if not key.endswith(TE_EXTRA_STATE)}


def load_model_tensors(model: torch.nn.Module, tensors: dict, *, may_lack: Tuple[str, ...] = ()):
    """``model.load_state_dict(tensors)``, strict except for TE's ``_extra_state`` and names
    ending in ``may_lack``; anything else missing or unexpected is an error."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [key for key in missing if not key.endswith((TE_EXTRA_STATE, *may_lack))]
    if missing or unexpected:
        raise RuntimeError(f"loading left {missing[:3]} unloaded ({len(missing)} in all) and "
                           f"{unexpected[:3]} unused ({len(unexpected)} in all)")


def apply_mask_training_freeze(model: torch.nn.Module, *, train_weights: bool,
                               frozen_mask: bool = False) -> None:
    """Only the mask logits train; with ``train_weights`` everything else trains too; with
    ``frozen_mask`` (weight recovery) everything but the logits."""
    for name, param in model.named_parameters():
        logits = name.endswith("mask_logits")
        param.requires_grad_(not frozen_mask if logits else (train_weights or frozen_mask))


@contextlib.contextmanager
def masks_off(model: torch.nn.Module):
    """Within the block every masked linear uses its plain weight: the dense model, from the
    same parameters (what distillation's teacher is). Restored on exit, also on an error."""
    layers = [layer for _, layer in masked_linears(model)]
    previous = [layer.mask_enabled for layer in layers]
    for layer in layers:
        layer.mask_enabled = False
    try:
        yield model
    finally:
        for layer, enabled in zip(layers, previous):
            layer.mask_enabled = enabled


def apply_mask_state(model: torch.nn.Module, state: MaskState) -> None:
    """Set this step's temperature, logit scale and regulariser weight on every masked layer."""
    for _, layer in masked_linears(model):
        layer.set_mask_state(state)


def _matched_layers(model: torch.nn.Module, masks: Dict[str, torch.Tensor], *,
                    what: str) -> Dict[str, MaskedLinearMixin]:
    """The model's masked layers by name, once ``masks`` has exactly one entry for each."""
    layers = dict(masked_linears(model))
    unknown = sorted(set(masks) - set(layers))
    missing = sorted(set(layers) - set(masks))
    if unknown or missing:
        raise ValueError(f"{what} do not match the model's masked layers: unknown "
                         f"{unknown[:3]}, missing {missing[:3]} ({len(missing)} in all)")
    return layers


@torch.no_grad()
def apply_prior_masks(model: torch.nn.Module, prior_masks: Dict[str, torch.Tensor], *,
                      strength: float) -> None:
    """Shift each layer's logits towards a one-shot keep-mask shard (SPEC section 2).

    ``prior_masks`` maps a masked layer's module name to its mask shaped like its weight
    shard. The std is that of the whole (unsharded) layer's logits, reduced over TP.
    """
    for name, layer in _matched_layers(model, prior_masks, what="prior masks").items():
        prior = prior_masks[name].to(layer.mask_logits.device)
        apply_prior_(layer.mask_logits, prior, layer.mask_candidates,
                     strength=strength, logits_std=_tp_std(layer))


@torch.no_grad()
def apply_fixed_masks(model: torch.nn.Module, masks: Dict[str, torch.Tensor]) -> None:
    """Hold each masked layer at a given keep-mask shard (weight recovery): logits whose argmax
    is exactly that mask (:func:`fixed_logits`), and the pruned weights set to exactly 0, which
    they stay (their gradient is 0 under the fixed mask, so Adam and weight decay leave them).
    ``masks`` is keyed and shaped as :func:`apply_prior_masks`'s."""
    for name, layer in _matched_layers(model, masks, what="fixed masks").items():
        mask = masks[name].to(device=layer.weight.device)
        layer.mask_logits.copy_(fixed_logits(mask, layer.mask_candidates))
        layer.weight.mul_(mask.to(layer.weight.dtype))


def _tp_std(layer: MaskedLinearMixin) -> float:
    """Unbiased std of a layer's logits over all its tensor-parallel shards."""
    logits = layer.mask_logits.detach().double()
    stats = torch.stack([logits.sum(), logits.pow(2).sum(),
                         torch.tensor(float(logits.numel()), dtype=torch.float64,
                                      device=logits.device)])
    group = compat.layer_tp_group(layer)
    if group.size() > 1:
        torch.distributed.all_reduce(stats, group=group)
    total, squares, count = stats.tolist()
    return max((squares - total * total / count) / (count - 1), 0.0) ** 0.5


def hard_masks(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Final argmax keep-mask of every masked layer's shard, keyed by module name."""
    return {name: layer.hard_mask() for name, layer in masked_linears(model)}


def check_nm(model: torch.nn.Module) -> Dict[str, bool]:
    """Whether each masked layer's final mask is exactly N:M along the input dimension."""
    return {name: is_exact_nm(layer.hard_mask(), layer.mask_config.n, layer.mask_config.m)
            for name, layer in masked_linears(model)}
