"""A decoder-only model's architecture, with no Megatron import.

One description read by the Megatron builder (``mcore.model``), the HF converters
(``convert``), the memory estimator (``memory``) and the training config. ``family`` names the
Hugging Face layout a model converts to and from; every behaviour is an explicit switch below,
and a switch left unset takes the family's value (its module in :mod:`.families`), so a
``model_shape.json`` written before the switches existed still reads the same.
"""
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional

from . import families

FAMILY_SWITCHES: Mapping[str, Dict[str, Any]] = families.SWITCHES
"""The switches each family implies (a read-only view of the registry, :mod:`.families`)."""

FAMILIES = families.names()
"""The families registered when the package loaded ("gpt", GPT-2 style, has no HF conversion)."""
HF_FAMILIES = families.hf_families()
"""Families with a Hugging Face name map (conversion, HF-named mask files)."""

NORMALIZATIONS = ("RMSNorm", "LayerNorm")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh")
POSITION_EMBEDDINGS = ("rope", "learned_absolute")


@dataclass(kw_only=True)
class ModelShape:
    """Architecture of a decoder-only transformer (Megatron-Core's option names)."""

    family: str = families.DEFAULT_FAMILY
    """Hugging Face layout and the defaults of the switches below: a registered family
    (:mod:`megatron_masklm.families`: llama, mistral, qwen2, qwen3, gemma3, or gpt, GPT-2 style:
    LayerNorm, GeLU, learned positions, biases; no HF conversion)."""
    num_layers: int
    """Transformer layers."""
    hidden_size: int
    """Model width."""
    ffn_hidden_size: int
    """MLP width (of each of gate and up for a gated linear unit)."""
    num_attention_heads: int
    """Query heads."""
    num_query_groups: Optional[int] = None
    """Key/value heads for grouped-query attention; None means one per attention head."""
    kv_channels: Optional[int] = None
    """Width of one attention head; None means hidden_size / num_attention_heads (Qwen3 and
    Gemma set it apart)."""
    vocab_size: int
    """Embedding rows (padded vocabulary, see :func:`padded_vocab_size`); divisible by TP."""
    max_position_embeddings: int = 4096
    """Longest sequence the model is built for."""
    normalization: Optional[str] = None
    """RMSNorm or LayerNorm (None: the family's)."""
    norm_eps: float = 1e-5
    """Epsilon of every norm."""
    gated_linear_unit: Optional[bool] = None
    """MLP fc1 holds [gate; up] halves (SwiGLU/GeGLU) (None: the family's)."""
    activation: Optional[str] = None
    """silu, gelu or gelu_tanh (None: the family's)."""
    add_bias_linear: Optional[bool] = None
    """Biases on every linear (None: the family's)."""
    add_qkv_bias: Optional[bool] = None
    """A bias on the fused QKV projection only, as Qwen2 has (None: the family's)."""
    qk_layernorm: Optional[bool] = None
    """Normalise each query and key head before RoPE, as Qwen3 does (None: the family's)."""
    position_embedding_type: Optional[str] = None
    """rope or learned_absolute (None: the family's)."""
    layernorm_zero_centered_gamma: Optional[bool] = None
    """Norms scale by (1 + weight), in fp32, as Gemma's do (None: the family's)."""
    post_sublayer_norms: Optional[bool] = None
    """Attention and MLP outputs are normalised before the residual add, as in Gemma 2/3
    (None: the family's)."""
    scale_embeddings: Optional[bool] = None
    """Embeddings are multiplied by sqrt(hidden_size), as in Gemma (None: the family's)."""
    softmax_scale: Optional[float] = None
    """Attention logits' scale; None means 1 / sqrt(kv_channels)."""
    window_size: Optional[int] = None
    """Sliding-window attention: a token attends to itself and the window_size - 1 before it;
    None means every layer attends to the whole context."""
    window_attn_skip_freq: Optional[int] = None
    """With window_size: every window_attn_skip_freq-th layer (1-based) attends globally (Gemma
    3: 6); None means every layer is windowed."""
    rotary_base_local: Optional[float] = None
    """RoPE theta of the windowed layers; None means rotary_base (Gemma 3: 1e4 vs 1e6)."""
    rotary_base: float = 10000.0
    """RoPE theta."""
    rope_scaling_factor: Optional[float] = None
    """LLaMA-3.1-style RoPE scaling factor (low/high frequency factors 1/4, original context
    8192: Megatron-Core's fixed values); None means no scaling."""
    tied_embeddings: bool = False
    """Share the input embedding with the output head (SmolLM2, GPT-2 style)."""

    def __post_init__(self):
        for name, value in families.get(self.family).switches.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, value, allowed in (("normalization", self.normalization, NORMALIZATIONS),
                                     ("activation", self.activation, ACTIVATIONS),
                                     ("position_embedding_type", self.position_embedding_type,
                                      POSITION_EMBEDDINGS)):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {allowed}")
        if self.kv_channels is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}: set "
                                 "kv_channels (the head width) explicitly")
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.groups:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_query_groups {self.groups}")
        if self.post_sublayer_norms and self.add_bias_linear:
            raise ValueError("post_sublayer_norms with add_bias_linear is not supported: the norm "
                             "would come before the bias")
        if self.window_size is not None and self.window_size < 1:
            raise ValueError(f"window_size must be >= 1 tokens, got {self.window_size}")

    def is_window_layer(self, layer_number: int) -> bool:
        """Whether 1-based layer ``layer_number`` uses the sliding window (Megatron's rule)."""
        if not self.window_size:
            return False
        return not self.window_attn_skip_freq or layer_number % self.window_attn_skip_freq != 0

    @property
    def groups(self) -> int:
        """Key/value heads."""
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.kv_channels

    @property
    def qkv_bias(self) -> bool:
        """Whether the fused QKV projection has a bias (either switch gives it one)."""
        return self.add_bias_linear or self.add_qkv_bias

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "ModelShape":
        """A shape from ``model_shape.json``; a key this version does not know is an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"model shape keys {unknown} are not known to this version of "
                             "megatron_masklm: the checkpoint was written by a newer one")
        return cls(**values)


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """Embedding rows as Megatron-LM pads a vocabulary: the next multiple of ``multiple``
    (make_vocab_size_divisible_by x tensor-parallel size)."""
    if vocab_size <= 0 or multiple <= 0:
        raise ValueError(f"vocab_size {vocab_size} and its multiple {multiple} must be positive")
    return -(-vocab_size // multiple) * multiple
