"""Hugging Face LLaMA-family config.json <-> ModelShape (no megatron import beyond ModelShape)."""
import math
from typing import Any, Dict

from ..mcore.model import ModelShape

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
MEGATRON_ROPE_SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}
"""Megatron-Core's LLaMA-3.1 RoPE scaling has these fixed; other values cannot be represented."""


def _padded(vocab: int, multiple: int) -> int:
    return int(math.ceil(vocab / multiple) * multiple)


def shape_from_hf_config(config: Dict[str, Any], *, vocab_multiple: int = 1) -> ModelShape:
    """The ModelShape of a HF LLaMA-family config; anything Megatron would compute differently
    is refused with the value that is not supported."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"architecture {arch!r} (model_type {config.get('model_type')!r}) is not "
                         f"supported: convert one of {SUPPORTED_ARCHITECTURES}")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    checks = {
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
        "attention_bias": (config.get("attention_bias", False), False),
        "mlp_bias": (config.get("mlp_bias", False), False),
        "head_dim": (config.get("head_dim") or hidden // heads, hidden // heads),
    }
    for key, (value, wanted) in checks.items():
        if value != wanted:
            raise ValueError(f"{arch} with {key}={value!r} is not supported (needs {wanted!r})")
    rope = config.get("rope_parameters") or {}  # transformers >= 5 keeps theta and scaling here
    window = config.get("sliding_window")
    if window is not None and window < config.get("max_position_embeddings", 0):
        raise ValueError(f"sliding_window={window} is not supported (Megatron-Core's GPT model "
                         "attends to the whole context)")
    return ModelShape(
        family="llama",
        num_layers=config["num_hidden_layers"],
        hidden_size=hidden,
        ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=config.get("num_key_value_heads") or heads,
        vocab_size=_padded(config["vocab_size"], vocab_multiple),
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        rotary_base=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling_factor=_rope_scaling_factor(config.get("rope_scaling") or rope),
    )


def _rope_scaling_factor(scaling):
    if not scaling:
        return None
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ValueError(f"rope_scaling type {kind!r} is not supported (only LLaMA-3.1's 'llama3')")
    for key, wanted in MEGATRON_ROPE_SCALING.items():
        if float(scaling.get(key, wanted)) != wanted:
            raise ValueError(f"rope_scaling {key}={scaling.get(key)} is not supported: "
                             f"Megatron-Core's LLaMA-3.1 scaling fixes it at {wanted}")
    return float(scaling["factor"])


def hf_config_from_shape(shape: ModelShape, *, vocab_size: int, torch_dtype: str) -> Dict[str, Any]:
    """A LlamaForCausalLM config.json for ``shape`` (used when no original config was kept)."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_hidden_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_query_groups or shape.num_attention_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "rope_theta": shape.rotary_base,
        "rms_norm_eps": shape.norm_eps,
        "tie_word_embeddings": shape.tied_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": torch_dtype,
    }
    if shape.rope_scaling_factor:
        config["rope_scaling"] = {"rope_type": "llama3", "factor": shape.rope_scaling_factor,
                                  **MEGATRON_ROPE_SCALING}
    return config
