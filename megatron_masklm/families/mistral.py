"""Mistral: the LLaMA layout under Mistral's HF names; a sliding window is refused (Megatron-Core's
GPT model attends to the whole context), and a written config.json says it has none."""
from .llama import llama_like

FAMILY = llama_like(
    "mistral", "MistralForCausalLM", summary="Mistral 7B (no sliding window)",
    extra_config={"sliding_window": None},
    presets={
        "mistral-7b": dict(num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                           num_attention_heads=32, num_query_groups=8, vocab_size=32768,
                           max_position_embeddings=32768, rotary_base=1e6),
    })
