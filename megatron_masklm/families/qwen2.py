"""Qwen2 / Qwen2.5: the LLaMA layout with a bias on q/k/v only (``add_qkv_bias``); its config.json
has no ``attention_bias`` (the q/k/v biases are always there)."""
from .llama import llama_like

FAMILY = llama_like(
    "qwen2", "Qwen2ForCausalLM", summary="Qwen2, Qwen2.5", switches={"add_qkv_bias": True},
    attention_bias=False,
    presets={
        "qwen2.5-7b": dict(num_layers=28, hidden_size=3584, ffn_hidden_size=18944,
                           num_attention_heads=28, num_query_groups=4, vocab_size=152064,
                           max_position_embeddings=32768, rotary_base=1e6, norm_eps=1e-6),
    })
