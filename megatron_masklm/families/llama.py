"""LLaMA (LLaMA-2/3/3.1, SmolLM2): RMSNorm, SwiGLU, RoPE (LLaMA-3.1 scaling too), no biases.

Also the LLaMA layout's config.json reader and writer, which Mistral, Qwen2 and Qwen3 (and any
family that is LLaMA but for a switch) build with :func:`llama_like`.
"""
from typing import Any, Dict, Mapping, Optional

from .base import Family, check_values

LLAMA_SWITCHES = dict(normalization="RMSNorm", gated_linear_unit=True, activation="silu",
                      add_bias_linear=False, add_qkv_bias=False, qk_layernorm=False,
                      position_embedding_type="rope", layernorm_zero_centered_gamma=False,
                      post_sublayer_norms=False, scale_embeddings=False)

MEGATRON_ROPE_SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}
"""Megatron-Core's LLaMA-3.1 RoPE scaling has these fixed; other values cannot be represented."""


def read_llama_config(arch: str, config: Dict[str, Any], *,
                      attention_bias: bool = True) -> Dict[str, Any]:
    """ModelShape options of a LLaMA-layout config.json. ``attention_bias``: the config's key of
    that name must be false (it would put a bias on o_proj too); Qwen2's q/k/v always have one
    (its ``add_qkv_bias`` switch), so it does not check it."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    checks = {
        "hidden_act": (config.get("hidden_act", "silu"), "silu"),
        "mlp_bias": (config.get("mlp_bias") or False, False),
    }
    if attention_bias:
        checks["attention_bias"] = (config.get("attention_bias") or False, False)
    check_values(arch, checks)
    _check_full_attention(arch, config)
    rope = config.get("rope_parameters") or {}  # transformers >= 5 keeps theta and scaling here
    return dict(
        num_layers=config["num_hidden_layers"],
        hidden_size=hidden,
        ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=config.get("num_key_value_heads") or heads,
        kv_channels=config.get("head_dim") or hidden // heads,
        vocab_size=config["vocab_size"],
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        rotary_base=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        rope_scaling_factor=_rope_scaling_factor(config.get("rope_scaling") or rope),
    )


def write_llama_config(shape, *, torch_dtype: str, attention_bias: bool = True,
                       extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The LLaMA layout's config.json keys of ``shape`` (beyond the shared layout keys);
    ``extra`` keys (e.g. Mistral's ``sliding_window: null``) come after the family's own."""
    config = {
        "max_position_embeddings": shape.max_position_embeddings,
        "rope_theta": shape.rotary_base,
        "rms_norm_eps": shape.norm_eps,
        "tie_word_embeddings": shape.tied_embeddings,
        "hidden_act": "silu",
        "mlp_bias": False,
        "torch_dtype": torch_dtype,
    }
    if attention_bias:
        config["attention_bias"] = False
    config.update(extra or {})
    if shape.rope_scaling_factor:
        config["rope_scaling"] = {"rope_type": "llama3", "factor": shape.rope_scaling_factor,
                                  **MEGATRON_ROPE_SCALING}
    return config


def llama_like(name: str, architecture: str, *, switches: Optional[Mapping[str, Any]] = None,
               summary: str = "", model_type: Optional[str] = None, attention_bias: bool = True,
               extra_config: Optional[Mapping[str, Any]] = None,
               presets: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Family:
    """A family with the LLaMA layout and HF parameter names: LLaMA's switches updated by
    ``switches`` (each switch has its HF parameters in the name map), read and written as
    :func:`read_llama_config` and :func:`write_llama_config` do."""

    def read(arch, config):
        return read_llama_config(arch, config, attention_bias=attention_bias)

    def write(shape, *, torch_dtype):
        return write_llama_config(shape, torch_dtype=torch_dtype, attention_bias=attention_bias,
                                  extra=extra_config)

    return Family(name=name, switches={**LLAMA_SWITCHES, **(switches or {})}, summary=summary,
                  hf_architectures=(architecture,), hf_model_type=model_type,
                  read_hf_config=read, write_hf_config=write, presets=dict(presets or {}))


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


FAMILY = llama_like(
    "llama", "LlamaForCausalLM", summary="LLaMA-2/3/3.1, SmolLM2",
    presets={
        # LLaMA-2 (Touvron et al. 2023): no grouped-query attention below 70B
        "llama2-7b": dict(num_layers=32, hidden_size=4096, ffn_hidden_size=11008,
                          num_attention_heads=32, num_query_groups=32, vocab_size=32000),
        "llama2-13b": dict(num_layers=40, hidden_size=5120, ffn_hidden_size=13824,
                           num_attention_heads=40, num_query_groups=40, vocab_size=32000),
        "smollm2-135m": dict(num_layers=30, hidden_size=576, ffn_hidden_size=1536,
                             num_attention_heads=9, num_query_groups=3, vocab_size=49152,
                             max_position_embeddings=8192, tied_embeddings=True),
    })
