"""Gemma 3 (text): GeGLU (tanh), QK-norm, (1 + w) norms before and after each sublayer,
sqrt(hidden) embedding scale, sliding-window layers with their own RoPE base, a softmax scale of
its own (``query_pre_attn_scalar``)."""
from typing import Any, Dict

from .base import Family, check_values
from .llama import LLAMA_SWITCHES

ARCH = "Gemma3ForCausalLM"


def read_config(arch: str, config: Dict[str, Any]) -> Dict[str, Any]:
    """ModelShape options of a Gemma 3 text config.json."""
    check_values(arch, {
        "hidden_activation": (config.get("hidden_activation") or config.get("hidden_act"),
                              "gelu_pytorch_tanh"),
        "attention_bias": (config.get("attention_bias") or False, False),
        "final_logit_softcapping": (config.get("final_logit_softcapping"), None),
        "attn_logit_softcapping": (config.get("attn_logit_softcapping"), None),
        "use_bidirectional_attention": (config.get("use_bidirectional_attention") or False, False),
    })
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
    return dict(
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=config.get("num_key_value_heads") or heads,
        kv_channels=head_dim,
        vocab_size=config["vocab_size"],
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


def write_config(shape, *, torch_dtype: str) -> Dict[str, Any]:
    """Gemma 3's config.json keys of ``shape`` (beyond the shared layout keys)."""
    types = ["sliding_attention" if shape.is_window_layer(i + 1) else "full_attention"
             for i in range(shape.num_layers)]
    local = shape.rotary_base_local or shape.rotary_base
    return {
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


FAMILY = Family(
    name="gemma3", summary="Gemma 3 text",
    switches={**LLAMA_SWITCHES, "activation": "gelu_tanh", "qk_layernorm": True,
              "layernorm_zero_centered_gamma": True, "post_sublayer_norms": True,
              "scale_embeddings": True},
    hf_architectures=(ARCH,), hf_model_type="gemma3_text",
    read_hf_config=read_config, write_hf_config=write_config,
    hf_shape_fields=("window_size", "softmax_scale", "rotary_base_local"),
    hf_not_yet={"Gemma2ForCausalLM": "Gemma 2 needs attention and final-logit soft-capping, "
                                     "which this release does not build (Gemma 3's other "
                                     "pieces it does)"},
    presets={
        "gemma3-270m": dict(num_layers=18, hidden_size=640, ffn_hidden_size=2048,
                            num_attention_heads=4, num_query_groups=1, kv_channels=256,
                            vocab_size=262144, max_position_embeddings=32768, window_size=512,
                            window_attn_skip_freq=6, rotary_base=1e6, rotary_base_local=1e4,
                            norm_eps=1e-6, tied_embeddings=True),
    })
