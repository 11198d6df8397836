"""Tokenizers, indexed-dataset building and GPT dataset blends on megatron.core.datasets.

``tokenizers`` imports no megatron; ``indexed`` and ``datasets`` do (about 4 s on first import).
"""
from megatron_masklm.data.datasets import build_gpt_datasets, parse_data_path
from megatron_masklm.data.indexed import build_indexed_dataset
from megatron_masklm.data.tokenizers import (
    HuggingFaceTokenizer,
    NullTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
)

__all__ = [
    "build_gpt_datasets",
    "build_indexed_dataset",
    "build_tokenizer",
    "parse_data_path",
    "HuggingFaceTokenizer",
    "NullTokenizer",
    "SentencePieceTokenizer",
]
