"""Helpers for the training tests: a small learnable token dataset and tiny run configs."""
import os

import numpy as np

VOCAB = 64


def make_token_dataset(directory: str, *, documents: int = 64, seed: int = 0) -> str:
    """Documents that follow simple rules (t[i+1] = (a * t[i] + b) mod V with a per-document
    (a, b) from a few choices), written with Megatron's own IndexedDatasetBuilder."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = os.path.join(directory, "rules_text_document")
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for _ in range(documents):
        a, b = [(1, 1), (3, 5), (5, 7)][rng.integers(3)]
        token = int(rng.integers(VOCAB - 1))
        tokens = []
        for _ in range(int(rng.integers(40, 90))):
            tokens.append(token)
            token = (a * token + b) % (VOCAB - 1)  # the last id is the NullTokenizer's EOD
        builder.add_item(torch.tensor(tokens))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


def tiny_options(data_prefix: str, **overrides) -> dict:
    """Options (as the CLI / YAML would give them) of a tiny LLaMA-style run."""
    options = dict(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
        num_query_groups=2, vocab_size=VOCAB, max_position_embeddings=64,
        data_path=[data_prefix], split="90,10,0", tokenizer_type="NullTokenizer",
        seq_length=32, micro_batch_size=2, global_batch_size=8, train_iters=20,
        lr=5e-2, min_lr=5e-3, log_interval=5, eval_interval=10, eval_iters=1, seed=7,
    )
    options.update(overrides)
    return options


def run_config(data_prefix: str, **overrides):
    from megatron_masklm.training.arguments import run_config_from_options

    return run_config_from_options(tiny_options(data_prefix, **overrides))


def cli_flags(options: dict) -> list:
    """``options`` as the train CLI's flags (``--no-x`` for a False boolean)."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags
