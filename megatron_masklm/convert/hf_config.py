"""Hugging Face config.json <-> ModelShape for the families that convert (no megatron import)."""
from typing import Any, Dict

from ..architecture import ModelShape, padded_vocab_size

ARCHITECTURE_FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
}
"""HF architecture -> family; anything else is refused."""
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURE_FAMILIES)
FAMILY_ARCHITECTURES = {family: (arch, arch[:-len("ForCausalLM")].lower())
                        for arch, family in ARCHITECTURE_FAMILIES.items()}
FAMILY_ARCHITECTURES["gemma3"] = ("Gemma3ForCausalLM", "gemma3_text")
"""family -> (HF architecture, model_type) for configs written without an original."""


NOT_YET = {
    "Gemma2ForCausalLM": "Gemma 2 needs attention and final-logit soft-capping, which this "
                         "release does not build (Gemma 3's other pieces it does)",
}
"""Architectures users ask for that do not convert yet, and what is missing for each."""

MEGATRON_ROPE_SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}
"""Megatron-Core's LLaMA-3.1 RoPE scaling has these fixed; other values cannot be represented."""


def shape_from_hf_config(config: Dict[str, Any], *, vocab_multiple: int = 1) -> ModelShape:
    """The ModelShape of a HF config of a supported family; anything Megatron would compute
    differently is refused with the value that is not supported."""
    arch = (config.get("architectures") or ["?"])[0]
    family = ARCHITECTURE_FAMILIES.get(arch)
    if family is None:
        missing = f" ({NOT_YET[arch]})" if arch in NOT_YET else ""
        raise ValueError(f"architecture {arch!r} (model_type {config.get('model_type')!r}) is not "
                         f"supported{missing}: convert one of {SUPPORTED_ARCHITECTURES}")
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    if family == "gemma3":
        return _gemma3_shape(config, vocab_multiple)
    checks = {
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
        "mlp_bias": (config.get("mlp_bias") or False, False),
    }
    if family != "qwen2":  # Qwen2's q/k/v always have a bias; the others' attention_bias puts
        checks["attention_bias"] = (config.get("attention_bias") or False, False)  # one on o too
    for key, (value, wanted) in checks.items():
        if value != wanted:
            raise ValueError(f"{arch} with {key}={value!r} is not supported (needs {wanted!r})")
    _check_full_attention(arch, config)
    rope = config.get("rope_parameters") or {}  # transformers >= 5 keeps theta and scaling here
    return ModelShape(
        family=family,
        num_layers=config["num_hidden_layers"],
        hidden_size=hidden,
        ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=config.get("num_key_value_heads") or heads,
        kv_channels=config.get("head_dim") or hidden // heads,
        vocab_size=padded_vocab_size(config["vocab_size"], vocab_multiple),
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        rotary_base=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling_factor=_rope_scaling_factor(config.get("rope_scaling") or rope),
    )


def _gemma3_shape(config: Dict[str, Any], vocab_multiple: int) -> ModelShape:
    """Gemma 3 text: GeGLU (tanh), QK-norm, (1 + w) norms before and after each sublayer,
    sqrt(hidden) embedding scale, sliding-window layers with their own RoPE base."""
    arch = "Gemma3ForCausalLM"
    checks = {
        "hidden_activation": (config.get("hidden_activation") or config.get("hidden_act"),
                              "gelu_pytorch_tanh"),
        "attention_bias": (config.get("attention_bias") or False, False),
        "final_logit_softcapping": (config.get("final_logit_softcapping"), None),
        "attn_logit_softcapping": (config.get("attn_logit_softcapping"), None),
        "use_bidirectional_attention": (config.get("use_bidirectional_attention") or False, False),
    }
    for key, (value, wanted) in checks.items():
        if value != wanted:
            raise ValueError(f"{arch} with {key}={value!r} is not supported (needs {wanted!r})")
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    scalar = config.get("query_pre_attn_scalar") or head_dim
    types = config.get("layer_types") or []
    window, skip = _window_pattern(arch, types, config.get("sliding_window"))
    rope = config.get("rope_parameters") or {}
    full, local = rope.get("full_attention", {}), rope.get("sliding_attention", {})
    for kind, params in (("full_attention", full), ("sliding_attention", local)):
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"{arch} with rope_type {params['rope_type']!r} on its {kind} "
                             "layers is not supported (only the default RoPE)")
    if (config.get("rope_scaling") or {}).get("rope_type", "default") != "default":
        raise ValueError(f"{arch} with rope_scaling {config['rope_scaling']} is not supported")
    return ModelShape(
        family="gemma3",
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=config.get("num_key_value_heads") or heads,
        kv_channels=head_dim,
        vocab_size=padded_vocab_size(config["vocab_size"], vocab_multiple),
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        softmax_scale=None if scalar == head_dim else float(scalar) ** -0.5,
        window_size=window,
        window_attn_skip_freq=skip,
        rotary_base=float(full.get("rope_theta") or config.get("rope_theta") or 1e6),
        rotary_base_local=float(local.get("rope_theta") or config.get("rope_local_base_freq")
                                or 1e4),
        tied_embeddings=bool(config.get("tie_word_embeddings", True)),
    )


def _window_pattern(arch: str, types, window):
    """(window_size, window_attn_skip_freq) of HF layer_types: sliding layers but every k-th
    (Megatron's rule), or none."""
    if not types or all(kind == "full_attention" for kind in types):
        return None, None
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown or not window:
        raise ValueError(f"{arch} with layer_types {unknown or types[:3]} and sliding_window "
                         f"{window!r} is not supported")
    full = [i + 1 for i, kind in enumerate(types) if kind == "full_attention"]
    skip = full[0] if full else None
    expected = ["full_attention" if skip and (i + 1) % skip == 0 else "sliding_attention"
                for i in range(len(types))]
    if list(types) != expected:
        raise ValueError(f"{arch}'s layer_types are not every {skip}th layer global: Megatron's "
                         "window_attn_skip_freq cannot express that pattern")
    return int(window), skip


def _check_full_attention(arch: str, config: Dict[str, Any]) -> None:
    """Megatron-Core's GPT model attends to the whole context in every layer."""
    window = config.get("sliding_window")
    if "use_sliding_window" in config or "layer_types" in config:  # Qwen2/Qwen3 keep the key
        local = [kind for kind in (config.get("layer_types") or []) if kind != "full_attention"]
        if config.get("use_sliding_window") or local:
            raise ValueError(f"{arch} with sliding-window layers (use_sliding_window="
                             f"{config.get('use_sliding_window')}, layer_types {local[:2]}) is not "
                             "supported: Megatron-Core's GPT model attends to the whole context")
    elif window is not None and window < config.get("max_position_embeddings", 0):
        raise ValueError(f"sliding_window={window} is not supported (Megatron-Core's GPT model "
                         "attends to the whole context)")


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
    """A config.json of ``shape``'s family (used when no original config was kept)."""
    if shape.family not in FAMILY_ARCHITECTURES:
        raise ValueError(f"a {shape.family!r} model has no Hugging Face layout: only "
                         f"{sorted(FAMILY_ARCHITECTURES)} convert")
    arch, model_type = FAMILY_ARCHITECTURES[shape.family]
    if shape.family == "gemma3":
        return _gemma3_config(shape, vocab_size=vocab_size, torch_dtype=torch_dtype)
    config = {
        **_layout_keys(shape, arch, model_type, vocab_size),
        "max_position_embeddings": shape.max_position_embeddings,
        "rope_theta": shape.rotary_base,
        "rms_norm_eps": shape.norm_eps,
        "tie_word_embeddings": shape.tied_embeddings,
        "hidden_act": "silu",
        "mlp_bias": False,
        "torch_dtype": torch_dtype,
    }
    if shape.family != "qwen2":
        config["attention_bias"] = False
    if shape.family == "mistral":
        config["sliding_window"] = None
    if shape.rope_scaling_factor:
        config["rope_scaling"] = {"rope_type": "llama3", "factor": shape.rope_scaling_factor,
                                  **MEGATRON_ROPE_SCALING}
    return config


def _gemma3_config(shape: ModelShape, *, vocab_size: int, torch_dtype: str) -> Dict[str, Any]:
    types = ["sliding_attention" if shape.is_window_layer(i + 1) else "full_attention"
             for i in range(shape.num_layers)]
    local = shape.rotary_base_local or shape.rotary_base
    return {
        **_layout_keys(shape, *FAMILY_ARCHITECTURES["gemma3"], vocab_size),
        "query_pre_attn_scalar": (shape.kv_channels if shape.softmax_scale is None
                                  else round(shape.softmax_scale ** -2)),
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": shape.norm_eps,
        "tie_word_embeddings": shape.tied_embeddings,
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "sliding_window": shape.window_size or shape.max_position_embeddings,
        "layer_types": types,
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": shape.rotary_base},
                            "sliding_attention": {"rope_type": "default", "rope_theta": local}},
        "rope_theta": shape.rotary_base,
        "rope_local_base_freq": local,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "torch_dtype": torch_dtype,
    }


def _layout_keys(shape: ModelShape, arch: str, model_type: str, vocab_size: int) -> Dict[str, Any]:
    """The config.json keys every family writes the same way."""
    return {"architectures": [arch], "model_type": model_type, "hidden_size": shape.hidden_size,
            "intermediate_size": shape.ffn_hidden_size, "num_hidden_layers": shape.num_layers,
            "num_attention_heads": shape.num_attention_heads,
            "num_key_value_heads": shape.groups, "head_dim": shape.kv_channels,
            "vocab_size": vocab_size}
