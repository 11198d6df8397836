"""The declarative map between HF parameters (the families of :mod:`megatron_masklm.families`
that convert) and Megatron-Core GPT parameters. Which parameters a layer has follows the shape's
switches (a QKV bias, QK-norms, post-sublayer norms), never the family's name.

Megatron fuses q/k/v into ``linear_qkv`` rows laid out per query group ([q heads of group g;
k_g; v_g] for each g) and gate/up into ``linear_fc1`` ([gate; up]). Both are row permutations,
so the same functions move weights and keep-masks (a group of M never crosses a row).
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import torch

from .. import families
from ..architecture import ModelShape


@dataclass(frozen=True)
class ParamMap:
    """One Megatron parameter, the HF parameters it is made of, and the two directions."""

    megatron: str
    hf: Tuple[str, ...]
    to_megatron: Callable[..., torch.Tensor]
    to_hf: Callable[[torch.Tensor], Tuple[torch.Tensor, ...]]
    masked: bool = False


def _qkv_layout(shape: ModelShape):
    groups, head_dim = shape.groups, shape.kv_channels
    per_group = shape.num_attention_heads // groups
    return groups, head_dim, per_group


def fuse_qkv(q, k, v, *, shape: ModelShape) -> torch.Tensor:
    """HF q/k/v (rows = heads x head_dim) -> Megatron linear_qkv rows, grouped per query group."""
    groups, head_dim, per_group = _qkv_layout(shape)
    cols = q.shape[1:]
    parts = (q.reshape(groups, per_group * head_dim, *cols), k.reshape(groups, head_dim, *cols),
             v.reshape(groups, head_dim, *cols))
    return torch.cat(parts, dim=1).reshape(-1, *cols)


def split_qkv(qkv, *, shape: ModelShape) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_qkv`."""
    groups, head_dim, per_group = _qkv_layout(shape)
    cols = qkv.shape[1:]
    grouped = qkv.reshape(groups, (per_group + 2) * head_dim, *cols)
    q, k, v = grouped.split([per_group * head_dim, head_dim, head_dim], dim=1)
    return (q.reshape(-1, *cols).contiguous(), k.reshape(-1, *cols).contiguous(),
            v.reshape(-1, *cols).contiguous())


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def check_hf_layout(shape: ModelShape) -> None:
    """``shape`` must be its family's HF layout: a switch set apart from the family's has no
    HF parameter to go to (e.g. a "llama" shape with a QKV bias), nor has a field only other
    families' layouts express (e.g. a sliding window outside Gemma 3)."""
    family = families.hf_family(shape.family)
    if family is None:
        raise ValueError(f"a {shape.family!r} model has no Hugging Face layout: only "
                         f"{families.hf_families()} convert")
    differ = {name: getattr(shape, name) for name, value in family.switches.items()
              if getattr(shape, name) != value}
    if differ:
        raise ValueError(f"a {shape.family!r} model with {differ} has no Hugging Face layout: "
                         f"{shape.family} has {family.switches}")
    extra = {name: getattr(shape, name) for name in families.OPTIONAL_HF_FIELDS
             if name not in family.hf_shape_fields and getattr(shape, name) is not None}
    if extra:
        raise ValueError(f"a {shape.family!r} model with {extra} has no Hugging Face layout")


def param_maps(shape: ModelShape, *, hf_vocab_size: int) -> List[ParamMap]:
    """Every Megatron parameter of a dense GPTModel (local spec) of an HF family and its HF
    source."""
    check_hf_layout(shape)
    vocab = shape.vocab_size
    maps = [ParamMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",),
                     lambda w: _pad_rows(w, vocab), lambda w: (w[:hf_vocab_size].contiguous(),))]
    for i in range(shape.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        attn, mlp = h + "self_attn.", h + "mlp."
        maps += [
            ParamMap(m + "input_layernorm.weight", (h + "input_layernorm.weight",),
                     _same, _one),
            ParamMap(m + "self_attention.linear_qkv.weight",
                     tuple(f"{attn}{p}_proj.weight" for p in "qkv"),
                     lambda q, k, v: fuse_qkv(q, k, v, shape=shape),
                     lambda w: split_qkv(w, shape=shape), masked=True),
        ]
        if shape.add_qkv_bias:  # Qwen2: the biases fuse like the weight rows (never masked)
            maps.append(ParamMap(m + "self_attention.linear_qkv.bias",
                                 tuple(f"{attn}{p}_proj.bias" for p in "qkv"),
                                 lambda q, k, v: fuse_qkv(q, k, v, shape=shape),
                                 lambda b: split_qkv(b, shape=shape)))
        if shape.qk_layernorm:  # Qwen3, Gemma 3: one norm over each head's width, for all heads
            maps += [ParamMap(m + f"self_attention.{p}_layernorm.weight", (f"{attn}{p}_norm.weight",),
                              _same, _one) for p in "qk"]
        pre_mlp = "pre_feedforward_layernorm" if shape.post_sublayer_norms else \
            "post_attention_layernorm"
        if shape.post_sublayer_norms:  # Gemma: each sublayer's output normed before the residual
            maps += [ParamMap(m + "self_attention.linear_proj.post_norm.weight",
                              (h + "post_attention_layernorm.weight",), _same, _one),
                     ParamMap(m + "mlp.linear_fc2.post_norm.weight",
                              (h + "post_feedforward_layernorm.weight",), _same, _one)]
        maps += [
            ParamMap(m + "self_attention.linear_proj.weight", (attn + "o_proj.weight",),
                     _same, _one, masked=True),
            ParamMap(m + "pre_mlp_layernorm.weight", (h + pre_mlp + ".weight",),
                     _same, _one),
            ParamMap(m + "mlp.linear_fc1.weight", (mlp + "gate_proj.weight", mlp + "up_proj.weight"),
                     lambda gate, up: torch.cat([gate, up]), _halves, masked=True),
            ParamMap(m + "mlp.linear_fc2.weight", (mlp + "down_proj.weight",), _same, _one,
                     masked=True),
        ]
    maps.append(ParamMap("decoder.final_layernorm.weight", ("model.norm.weight",), _same, _one))
    if not shape.tied_embeddings:
        maps.append(ParamMap("output_layer.weight", ("lm_head.weight",),
                             lambda w: _pad_rows(w, vocab), lambda w: (w[:hf_vocab_size].contiguous(),)))
    return maps


def _same(tensor):
    return tensor


def _one(tensor):
    return (tensor,)


def _halves(tensor):
    gate, up = tensor.chunk(2)
    return gate.contiguous(), up.contiguous()


def masked_hf_names(maps: List[ParamMap]) -> Dict[str, str]:
    """HF name -> Megatron name of every parameter that carries an N:M mask."""
    return {hf: pm.megatron for pm in maps if pm.masked for hf in pm.hf}
