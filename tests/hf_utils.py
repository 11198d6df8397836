"""Tiny Hugging Face LLaMA checkpoints for tests (needs transformers)."""
import torch
import transformers


def tiny_llama(directory, *, tied=False, rope_scaling=None, seed=0, **overrides):
    """A random LLaMA (GQA 4/2, SwiGLU) saved by transformers itself."""
    config = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=tied, rms_norm_eps=1e-5, rope_theta=5000.0,
                  rope_scaling=rope_scaling)
    config.update(overrides)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    model.save_pretrained(directory)
    (directory / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    return model
