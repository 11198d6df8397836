"""GPT-2 style: LayerNorm, GeLU, learned absolute positions, biases on every linear. Built and
trained; it has no Hugging Face layout (no conversion, no HF-named mask files)."""
from .base import Family

FAMILY = Family(
    name="gpt", summary="GPT-2 style (no HF conversion)",
    switches=dict(normalization="LayerNorm", gated_linear_unit=False, activation="gelu",
                  add_bias_linear=True, add_qkv_bias=False, qk_layernorm=False,
                  position_embedding_type="learned_absolute",
                  layernorm_zero_centered_gamma=False, post_sublayer_norms=False,
                  scale_embeddings=False))
