"""Qwen3 (dense): the LLaMA layout with a per-head RMSNorm on queries and keys before RoPE
(``qk_layernorm``) and a head width set apart from hidden / heads (``kv_channels``)."""
from .llama import llama_like

FAMILY = llama_like(
    "qwen3", "Qwen3ForCausalLM", summary="Qwen3 dense", switches={"qk_layernorm": True},
    presets={
        "qwen3-8b": dict(num_layers=36, hidden_size=4096, ffn_hidden_size=12288,
                         num_attention_heads=32, num_query_groups=8, kv_channels=128,
                         vocab_size=151936, max_position_embeddings=40960, rotary_base=1e6,
                         norm_eps=1e-6),
    })
