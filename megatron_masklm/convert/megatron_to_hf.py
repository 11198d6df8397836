"""Megatron-Core checkpoint (dense, or with mask logits; any TP/PP) -> Hugging Face directory,
and the final keep-masks under HF parameter names."""
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from ..architecture import ModelShape
from ..checkpoints import checkpoint_sources, resolve_checkpoint
from ..masking import MaskConfig, parse_nm
from .hf_config import hf_config_from_shape
from .name_map import param_maps
from ..fileio import atomic_output_dir, check_output_dir, save_safetensors
from .output import megatron_world_of_one
from .sources import TOKENIZER_FILES, copy_files

MAX_SHARD_BYTES = 5 * 2**30


@dataclass
class LoadedCheckpoint:
    """A Megatron checkpoint read at TP=1: HF-named tensors, HF-named masks, config, tokenizer."""

    tensors: Dict[str, torch.Tensor]
    masks: Dict[str, torch.Tensor]
    pattern: Optional[str]
    hf_config: Dict[str, Any]
    tokenizer_dir: Optional[str]


def load_megatron_checkpoint(path: str, *, dtype: Optional[torch.dtype] = None,
                             trust: bool = False) -> LoadedCheckpoint:
    """Read a checkpoint at TP=1 (resharding from whatever it was saved at), strictly; no code
    from its files runs unless ``trust`` (``mcore.safe_load``)."""
    root, directory = resolve_checkpoint(path)
    shape, pattern, hf_config, tokenizer = checkpoint_sources(root, directory)
    hf_vocab = (hf_config or {}).get("vocab_size", shape.vocab_size)
    with megatron_world_of_one() as (mcore, _):
        # the local spec: its parameter names are the ones the HF name map knows (TE fuses
        # the norms into the next linear)
        model = load_model(directory, shape, pattern, dtype=dtype, use_te=False, trust=trust)
        weight_dtype = model.embedding.word_embeddings.weight.dtype
        params = {name: p.detach() for name, p in model.named_parameters()}
        layer_masks = {f"{name}.weight": layer.hard_mask()
                       for name, layer in mcore.masked_linears(model)}
    has_logits = bool(layer_masks)
    tensors = to_hf_tensors(params, shape, hf_vocab_size=hf_vocab)
    masks = to_hf_tensors(layer_masks, shape, hf_vocab_size=hf_vocab, masked_only=True)
    hf_config = hf_config or hf_config_from_shape(shape, vocab_size=hf_vocab,
                                                  torch_dtype=str(weight_dtype).replace("torch.", ""))
    return LoadedCheckpoint(tensors, masks, pattern if has_logits else None, hf_config, tokenizer)


def load_model(directory: str, shape: ModelShape, pattern: Optional[str], *,
               dtype: Optional[torch.dtype] = None, sdpa_attention: bool = False,
               use_te: Optional[bool] = None, trust: bool = False):
    """The GPTModel a dist checkpoint holds, at the current TP size, loaded strictly.

    A checkpoint with mask logits (``pattern`` N:M) gives a masked model, one without a dense
    one; every tensor of the model must be in the checkpoint. ``dtype`` defaults to the
    checkpoint's; ``sdpa_attention`` uses torch's fused causal attention (inference only);
    ``use_te`` picks Transformer Engine layers (None: where TE imports and a GPU is present).
    Needs Megatron's parallel state (``mcore.initialize_distributed``). No code from the files
    runs unless ``trust`` (``mcore.safe_load``).
    """
    from megatron.core import parallel_state

    from .. import mcore
    from ..mcore import safe_load

    present = safe_load.load_tensors_metadata(directory, trust=trust)
    weight_dtype = dtype or present["embedding.word_embeddings.weight"].dtype
    config = mcore.build_transformer_config(
        shape, params_dtype=weight_dtype, use_cpu_initialization=True,
        perform_initialization=False,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size())
    use_te = mcore.use_transformer_engine("auto") if use_te is None else use_te
    has_logits = any(key.endswith("mask_logits") for key in present)
    if pattern and not has_logits:
        raise ValueError(f"{directory!r} says it holds {pattern} masks but has no mask logits")
    if has_logits:
        n, m = parse_nm(pattern)
        model = mcore.build_masked_gpt_model(shape, MaskConfig(n=n, m=m), config=config,
                                             use_te=use_te, sdpa_attention=sdpa_attention)
    else:
        model = mcore.build_dense_gpt_model(shape, config=config, use_te=use_te,
                                            sdpa_attention=sdpa_attention)
    state = mcore.without_te_extra_state(model.sharded_state_dict())
    missing = sorted(mcore.compat.sharded_tensor_keys(state) - set(present))
    if missing:
        raise ValueError(f"{directory!r} does not match model_shape.json: missing {missing[:3]}")
    safe_load.check_tensor_shapes(state, present, directory, what="checkpoint", fix=(
        "its model_shape.json does not describe its tensors: restore the model_shape.json saved "
        "with it"))
    loaded = safe_load.load(state, directory, trust=trust)  # also returns the common state
    mcore.load_model_tensors(model, {key: loaded[key] for key in state})
    return model


def to_hf_tensors(tensors: Dict[str, torch.Tensor], shape: ModelShape, *, hf_vocab_size: int,
                  masked_only: bool = False) -> Dict[str, torch.Tensor]:
    """Unsharded Megatron tensors (parameters, or keep-masks of the masked weights) keyed by
    Megatron name -> the same under HF names (q/k/v and gate/up split apart)."""
    if not tensors:
        return {}
    out = {}
    for pm in param_maps(shape, hf_vocab_size=hf_vocab_size):
        if masked_only and not pm.masked:
            continue
        out.update(zip(pm.hf, pm.to_hf(tensors[pm.megatron])))
    return out


def convert_megatron_to_hf(checkpoint: str, output: str, *, apply_masks: bool = False,
                           dtype: Optional[torch.dtype] = None, overwrite: bool = False,
                           max_shard_bytes: int = MAX_SHARD_BYTES, trust: bool = False) -> str:
    """Write ``output``: safetensors + config.json + tokenizer, loadable by AutoModelForCausalLM.

    With ``apply_masks`` the masked weights are multiplied by the argmax masks (dense tensors
    with exact N:M zeros); the checkpoint must then hold mask logits. ``trust``: see
    ``load_megatron_checkpoint``.
    """
    check_output_dir(output, overwrite=overwrite)  # before the (large) model is read
    loaded = load_megatron_checkpoint(checkpoint, dtype=dtype, trust=trust)
    if apply_masks and not loaded.masks:
        raise ValueError(f"{checkpoint!r} has no mask logits: nothing to apply (drop --apply-masks)")
    tensors = dict(loaded.tensors)
    if dtype is not None:  # norms are built fp32 on CPU whatever params_dtype says
        tensors = {name: tensor.to(dtype) for name, tensor in tensors.items()}
    if apply_masks:
        for name, mask in loaded.masks.items():
            tensors[name] = tensors[name] * mask.to(tensors[name].dtype)
    return write_hf_dir(output, tensors, loaded.hf_config, loaded.tokenizer_dir,
                        overwrite=overwrite, max_shard_bytes=max_shard_bytes)


def write_hf_dir(output: str, tensors: Dict[str, torch.Tensor], hf_config: Dict[str, Any],
                 tokenizer_dir: Optional[str], *, overwrite: bool = False,
                 max_shard_bytes: int = MAX_SHARD_BYTES) -> str:
    """Write a HF checkpoint directory (safetensors, config.json with the tensors' dtype,
    tokenizer files), all at once or not at all."""
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        write_safetensors(tmp, tensors, max_shard_bytes=max_shard_bytes)
        config = {k: v for k, v in hf_config.items() if not k.startswith("_")}
        written = str(next(iter(tensors.values())).dtype).replace("torch.", "")
        config["dtype"] = config["torch_dtype"] = written  # transformers 5 reads dtype, 4 torch_dtype
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        if tokenizer_dir:
            copy_files(TOKENIZER_FILES, tokenizer_dir, tmp)
    return output


def write_safetensors(directory: str, tensors: Dict[str, torch.Tensor], *,
                      max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """HF's layout: one model.safetensors, or numbered shards plus model.safetensors.index.json."""
    shards, current, size = [], {}, 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor.contiguous()
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        save_safetensors(os.path.join(directory, "model.safetensors"), shards[0],
                         metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for index, shard in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors(os.path.join(directory, filename), shard, metadata={"format": "pt"})
        for name, tensor in shard.items():
            weight_map[name] = filename
            total += tensor.numel() * tensor.element_size()
    with open(os.path.join(directory, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
