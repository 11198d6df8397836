"""Tiny Hugging Face checkpoints (LLaMA, Mistral, Qwen2, Qwen3) for tests (needs transformers)."""
import torch
import transformers


FAMILY_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
}
FAMILY_EXTRAS = {
    "mistral": dict(sliding_window=None, head_dim=16),
    "qwen3": dict(head_dim=24),  # set apart from hidden / heads (16), as Qwen3's 128 is
    # Gemma 3: a 5-token window on layer 1, layer 2 global, RoPE bases 100 / 5000, a softmax
    # scale of its own (query_pre_attn_scalar 20, not the head width 24)
    "gemma3": dict(head_dim=24, query_pre_attn_scalar=20, sliding_window=5,
                   layer_types=["sliding_attention", "full_attention"],
                   rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                    "full_attention": {"rope_type": "default", "rope_theta": 5000.0}}),
}


def tiny_llama(directory, *, tied=False, rope_scaling=None, seed=0, **overrides):
    """A random LLaMA (GQA 4/2, SwiGLU) saved by transformers itself."""
    return tiny_model(directory, "llama", tied=tied, rope_scaling=rope_scaling, seed=seed,
                      **overrides)


def tiny_model(directory, family, *, tied=False, rope_scaling=None, seed=0, **overrides):
    """A random model of ``family`` (GQA 4/2, SwiGLU; Qwen2's QKV bias, Qwen3's QK-norm and
    head width) saved by transformers itself. Biases and norms are random too, so a bias or
    norm weight that went to the wrong place shows in the logits."""
    config = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=tied, rms_norm_eps=1e-5, rope_theta=5000.0,
                  rope_scaling=rope_scaling, **FAMILY_EXTRAS.get(family, {}))
    config.update(overrides)
    if family == "gemma3":  # its RoPE is per layer type (rope_parameters above)
        config.pop("rope_theta"), config.pop("rope_scaling")
    config_cls, model_cls = FAMILY_CLASSES[family]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(directory)
    (directory / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    return model


@torch.no_grad()
def reference_nll(model, ids, *, max_length, stride, bos_id=None, drop_last=True):
    """The transformers documentation's sliding-window loop over full windows (labels -100 on
    the context part), summing per-token NLLs instead of averaging; then, unless ``drop_last``,
    the last ``max_length`` tokens score what is left. BOS, when given, goes before each window."""
    length = max_length - (1 if bos_id is not None else 0)
    spans, prev_end = [], 0
    for begin in range(0, len(ids) - length + 1, stride):
        spans.append((begin, begin + length, begin + length - prev_end))
        prev_end = begin + length
    if not drop_last and prev_end < len(ids):
        spans.append((max(0, len(ids) - length), len(ids), len(ids) - prev_end))
    total, count = 0.0, 0
    for begin, end, target_len in spans:
        window = list(ids[begin:end])
        labels = list(window)
        cut = len(window) - target_len
        labels[:cut] = [-100] * cut
        if bos_id is not None:
            window, labels = [bos_id] + window, [-100] + labels
        logits = model(torch.tensor([window])).logits[0].double()
        for position in range(1, len(window)):
            if labels[position] != -100:
                total -= torch.log_softmax(logits[position - 1], -1)[labels[position]].item()
                count += 1
    return total, count
