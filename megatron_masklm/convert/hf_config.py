"""Hugging Face config.json <-> ModelShape for the families that convert (no megatron import)."""
from typing import Any, Dict

from ..architecture import ModelShape, padded_vocab_size

ARCHITECTURE_FAMILIES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
"""HF architecture -> family; anything else is refused."""
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURE_FAMILIES)
FAMILY_ARCHITECTURES = {family: (arch, arch[:-len("ForCausalLM")].lower())
                        for arch, family in ARCHITECTURE_FAMILIES.items()}
"""family -> (HF architecture, model_type) for configs written without an original."""


NOT_YET = {
    "Gemma3ForCausalLM": "Gemma 3 needs pre- and post-sublayer norms, RMSNorm with (1 + weight), "
                         "embeddings scaled by sqrt(hidden_size), GeGLU (tanh), and sliding-window "
                         "local layers with their own RoPE base; this release builds none of "
                         "the post-norms, the embedding scale or the per-layer RoPE base",
    "Gemma2ForCausalLM": "Gemma 2 needs the same pieces as Gemma 3 plus attention and final "
                         "logit soft-capping",
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
    config = {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_hidden_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.groups,
        "head_dim": shape.kv_channels,
        "vocab_size": vocab_size,
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
