"""Megatron-Core checkpoint (dense, or with mask logits; any TP/PP) -> Hugging Face directory,
and the final keep-masks under HF parameter names."""
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from ..architecture import ModelShape
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
    nm: Optional[Tuple[int, int]]
    """(n, m) of the masks; None for a dense checkpoint."""
    hf_config: Dict[str, Any]
    tokenizer_dir: Optional[str]


def load_megatron_checkpoint(path: str, *, dtype: Optional[torch.dtype] = None,
                             trust: bool = False) -> LoadedCheckpoint:
    """Read a checkpoint at TP=1 (resharding from whatever it was saved at), strictly; no code
    from its files runs unless ``trust`` (``mcore.safe_load``)."""
    from ..mcore.loading import load_model, open_checkpoint

    info = open_checkpoint(path)
    with megatron_world_of_one() as (mcore, _):
        # the local spec: its parameter names are the ones the HF name map knows (TE fuses
        # the norms into the next linear)
        model = load_model(info.directory, shape=info.shape, nm=info.nm, dtype=dtype,
                           use_te=False, trust=trust)
        weight_dtype = model.embedding.word_embeddings.weight.dtype
        params = {name: p.detach() for name, p in model.named_parameters()}
        layer_masks = {f"{name}.weight": layer.hard_mask()
                       for name, layer in mcore.masked_linears(model)}
    shape, hf_vocab = info.shape, info.hf_vocab_size
    tensors = to_hf_tensors(params, shape, hf_vocab_size=hf_vocab)
    masks = to_hf_tensors(layer_masks, shape, hf_vocab_size=hf_vocab, masked_only=True)
    hf_config = info.hf_config or hf_config_from_shape(
        shape, vocab_size=hf_vocab, torch_dtype=str(weight_dtype).replace("torch.", ""))
    return LoadedCheckpoint(tensors, masks, info.nm if layer_masks else None, hf_config,
                            info.tokenizer_dir)


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


MASKS_FILE = "masks.idx.npz"
"""The compact mask file ``save_masks`` writes into the HF directory."""


def convert_megatron_to_hf(checkpoint: str, output: str, *, apply_masks: bool = False,
                           save_masks: bool = False, dtype: Optional[torch.dtype] = None,
                           overwrite: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES,
                           trust: bool = False) -> str:
    """Write ``output``: safetensors + config.json + tokenizer, loadable by AutoModelForCausalLM.

    With ``apply_masks`` the masked weights are multiplied by the argmax masks (dense tensors
    with exact N:M zeros); with ``save_masks`` those masks also go into the directory as
    :data:`MASKS_FILE` (compact, HF names: what ``eval_ppl.py --masks`` and the sparse kernels'
    tools read). Either needs mask logits in the checkpoint. ``trust``: see
    ``load_megatron_checkpoint``.
    """
    check_output_dir(output, overwrite=overwrite)  # before the (large) model is read
    loaded = load_megatron_checkpoint(checkpoint, dtype=dtype, trust=trust)
    for flag, wanted in (("--apply-masks", apply_masks), ("--save-masks", save_masks)):
        if wanted and not loaded.masks:
            raise ValueError(f"{checkpoint!r} has no mask logits: nothing to apply or save "
                             f"(drop {flag})")
    tensors = dict(loaded.tensors)
    if dtype is not None:  # norms are built fp32 on CPU whatever params_dtype says
        tensors = {name: tensor.to(dtype) for name, tensor in tensors.items()}
    if apply_masks:
        for name, mask in loaded.masks.items():
            tensors[name] = tensors[name] * mask.to(tensors[name].dtype)
    extra = None
    if save_masks:
        from ..masking.files import save_masks as write_masks

        def extra(directory: str) -> None:
            write_masks(os.path.join(directory, MASKS_FILE), loaded.masks, fmt="compact",
                        nm=loaded.nm)
    return write_hf_dir(output, tensors, loaded.hf_config, loaded.tokenizer_dir,
                        overwrite=overwrite, max_shard_bytes=max_shard_bytes, extra=extra)


def write_hf_dir(output: str, tensors: Dict[str, torch.Tensor], hf_config: Dict[str, Any],
                 tokenizer_dir: Optional[str], *, overwrite: bool = False,
                 max_shard_bytes: int = MAX_SHARD_BYTES, extra=None) -> str:
    """Write a HF checkpoint directory (safetensors, config.json with the tensors' dtype,
    tokenizer files, and whatever ``extra(directory)`` adds), all at once or not at all."""
    with atomic_output_dir(output, overwrite=overwrite) as tmp:
        if extra is not None:
            extra(tmp)
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
