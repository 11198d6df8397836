"""Loading a GPTModel from a Megatron checkpoint: the one loader.

* :func:`open_checkpoint`: where a checkpoint path (a run, converted or pruned directory, or a
  dist checkpoint) keeps its dist checkpoint, shape, N:M (parsed here, once), HF config and
  tokenizer (``megatron_masklm.checkpoints`` knows the layout);
* :func:`load_model`: build the model a dist checkpoint holds at the current TP size and load
  it strictly: conversion to HF, mask export, pruning and evaluation all load through it;
* :func:`load_model_weights` / :func:`load_dense_weights`: load a checkpoint's weights into a
  model built elsewhere (what ``load_model`` does after building; training loads its
  ``--pretrained-checkpoint`` this way into the model it built at its own TP/PP).

Resuming a training run (optimizer, scheduler, RNG state) is ``training.checkpointing``'s.
Every read goes through ``safe_load``: no code from the files runs unless ``trust``.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from megatron.core import parallel_state

from . import safe_load
from .model import (build_dense_gpt_model, build_masked_gpt_model, build_transformer_config,
                    load_model_tensors, use_transformer_engine, without_te_extra_state)
from ..architecture import ModelShape
from ..checkpoints import (LOGITS_SUFFIX, checkpoint_sources, resolve_checkpoint,
                           resolve_dense_checkpoint)
from ..masking import MaskConfig, parse_nm

__all__ = ["CheckpointInfo", "checkpoint_dtype", "load_dense_weights", "load_model",
           "load_model_weights", "open_checkpoint"]

SHAPE_FIX = ("its model_shape.json does not describe its tensors: restore the model_shape.json "
             "saved with it")
"""What to do when a checkpoint's tensors disagree with the shape read beside it."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a Megatron checkpoint directory says about itself (nothing loaded yet)."""

    root: str
    """The run / converted / pruned directory (model_shape.json, hf_config.json, tokenizer/)."""
    directory: str
    """The dist checkpoint inside it (``release/``, ``iter_N/``)."""
    shape: ModelShape
    nm: Optional[Tuple[int, int]]
    """(n, m) of a training run's mask logits; None for a dense checkpoint."""
    hf_config: Optional[Dict[str, Any]]
    tokenizer_dir: Optional[str]

    @property
    def pattern(self) -> Optional[str]:
        """``"N:M"`` of the mask logits, None for a dense checkpoint."""
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else None

    @property
    def hf_vocab_size(self) -> int:
        """The HF model's vocabulary (Megatron pads its own, ``shape.vocab_size``)."""
        return (self.hf_config or {}).get("vocab_size", self.shape.vocab_size)


def open_checkpoint(path: str) -> CheckpointInfo:
    """:class:`CheckpointInfo` of a run / converted / pruned directory or a dist checkpoint."""
    root, directory = resolve_checkpoint(path)
    shape, pattern, hf_config, tokenizer_dir = checkpoint_sources(root, directory)
    nm = parse_nm(pattern) if pattern else None
    return CheckpointInfo(root, directory, shape, nm, hf_config, tokenizer_dir)


def load_model(directory: str, *, shape: ModelShape, nm: Optional[Tuple[int, int]] = None,
               dense: bool = False, dtype: Optional[torch.dtype] = None,
               sdpa_attention: bool = False, use_te: Optional[bool] = None,
               trust: bool = False) -> torch.nn.Module:
    """The GPTModel the dist checkpoint ``directory`` holds, at the current TP size, loaded
    strictly (every tensor of the model must be in the checkpoint, shaped as ``shape`` says).

    A checkpoint with mask logits gives a masked model (``nm``: their N:M, from its metadata),
    one without a dense one; ``dense`` builds and loads the dense model whatever the checkpoint
    holds (its logits are left out). ``dtype`` defaults to the checkpoint's;
    ``sdpa_attention`` uses torch's fused causal attention (inference only); ``use_te`` picks
    Transformer Engine layers (None: where TE imports and a GPU is present; False: the local
    spec, whose parameter names the HF name map knows). Needs Megatron's parallel state
    (``mcore.initialize_distributed``).
    """
    present = safe_load.load_tensors_metadata(directory, trust=trust)
    has_logits = any(key.endswith(LOGITS_SUFFIX) for key in present)
    masked = has_logits and not dense
    if nm and not has_logits and not dense:
        raise ValueError(f"{directory!r} says it holds {nm[0]}:{nm[1]} masks but has no mask "
                         "logits")
    if masked and nm is None:
        raise ValueError(f"{directory!r} holds mask logits but no N:M is known for them (its "
                         "run's masklm_checkpoint.json is missing): load it with its run "
                         "directory")
    config = build_transformer_config(
        shape, params_dtype=dtype or present["embedding.word_embeddings.weight"].dtype,
        use_cpu_initialization=True, perform_initialization=False,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size())
    use_te = use_transformer_engine("auto") if use_te is None else use_te
    if masked:
        model = build_masked_gpt_model(shape, MaskConfig(n=nm[0], m=nm[1]), config=config,
                                       use_te=use_te, sdpa_attention=sdpa_attention)
    else:
        model = build_dense_gpt_model(shape, config=config, use_te=use_te,
                                      sdpa_attention=sdpa_attention)
    load_model_weights(directory, model=model, skip_suffix=None, what="checkpoint",
                       fix=SHAPE_FIX, trust=trust, present=present)
    return model


def checkpoint_dtype(directory: str, *, trust: bool = False) -> torch.dtype:
    """The dtype the checkpoint's weights were saved in (its embedding's)."""
    return safe_load.load_tensors_metadata(directory, trust=trust)[
        "embedding.word_embeddings.weight"].dtype


def load_model_weights(directory: str, *, model, skip_suffix: Optional[str], what: str,
                       fix: Optional[str] = None, trust: bool = False,
                       present: Optional[Dict[str, Any]] = None) -> None:
    """Load every tensor of ``model`` from the dist checkpoint ``directory``, except TE's
    ``_extra_state`` and (with ``skip_suffix``) the tensors whose names end in it; strictly
    otherwise. ``what``/``fix`` word the errors (``safe_load.check_tensors_present``);
    ``present``: the checkpoint's tensor metadata, when already read."""
    state = without_te_extra_state(model.sharded_state_dict())
    if skip_suffix:
        state = {key: value for key, value in state.items() if not key.endswith(skip_suffix)}
    safe_load.check_tensors_present(state, directory, what=what, trust=trust,
                                    logits_suffix=skip_suffix or LOGITS_SUFFIX, fix=fix,
                                    present=present)
    loaded = safe_load.load(state, directory, trust=trust)  # also returns the common state
    load_model_tensors(model, {key: loaded[key] for key in state},
                       may_lack=(skip_suffix,) if skip_suffix else ())


def load_dense_weights(path: str, *, model, trust: bool = False) -> None:
    """Load every weight of ``model`` except the mask logits from the dense dist checkpoint at
    ``path`` (or the one its pointer names); no code from its files runs unless ``trust``."""
    load_model_weights(resolve_dense_checkpoint(path), model=model, skip_suffix=LOGITS_SUFFIX,
                       what="pretrained checkpoint", trust=trust)

