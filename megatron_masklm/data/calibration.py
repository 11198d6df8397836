"""Token streams of a text file or an indexed dataset (perplexity evaluation reads them whole),
and one-shot pruning's calibration windows: the first K full windows of S tokens of either
(an indexed dataset's documents concatenated in order), as SparseGPT and Wanda take them.

For a text file this is exactly ../shared/BENCHMARK.md's protocol: the whole file tokenized
without special tokens, cut into non-overlapping windows, incomplete last window dropped.
"""
import os
from typing import Optional

import numpy as np
import torch


def _windows(ids: np.ndarray, seq_length: int, num_samples: int, source: str) -> torch.Tensor:
    if seq_length < 2:
        raise ValueError(f"seq_length {seq_length} must be >= 2")
    if num_samples < 1:
        raise ValueError(f"num_samples {num_samples} must be >= 1")
    available = len(ids) // seq_length
    if available < num_samples:
        raise ValueError(f"{source} holds {len(ids)} tokens: {available} full windows of "
                         f"{seq_length}, fewer than the {num_samples} asked for; pass fewer "
                         "calibration samples, a shorter sequence length, or more text")
    window = np.asarray(ids[:num_samples * seq_length], dtype=np.int64)
    return torch.from_numpy(window.reshape(num_samples, seq_length).copy())


def text_token_ids(path: str, tokenizer) -> np.ndarray:
    """The whole UTF-8 text file ``path`` tokenized in one piece, without special tokens."""
    if not os.path.isfile(path):
        raise ValueError(f"text file {path!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return np.asarray(tokenizer.tokenize(text), dtype=np.int64)


def indexed_token_ids(prefix: str, *, limit: Optional[int] = None) -> np.ndarray:
    """The documents of a Megatron indexed dataset (``prefix``.bin/.idx) concatenated in order
    (with whatever end-of-document tokens they hold); only the first ``limit`` tokens, or more,
    when ``limit`` is given."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for suffix in (".bin", ".idx"):
        if not os.path.isfile(prefix + suffix):
            raise ValueError(f"indexed dataset {prefix!r} has no {prefix + suffix}: pass the "
                             "prefix tools/preprocess_data.py wrote (without .bin/.idx)")
    dataset = IndexedDataset(prefix)
    pieces, total = [], 0
    for index in range(len(dataset)):
        if limit is not None and total >= limit:
            break
        document = np.asarray(dataset[index], dtype=np.int64)
        pieces.append(document)
        total += len(document)
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def text_windows(path: str, tokenizer, *, seq_length: int, num_samples: int) -> torch.Tensor:
    """[num_samples, seq_length] token ids from the text file ``path`` (UTF-8)."""
    return _windows(text_token_ids(path, tokenizer), seq_length, num_samples,
                    f"calibration text {path!r}")


def indexed_windows(prefix: str, *, seq_length: int, num_samples: int) -> torch.Tensor:
    """[num_samples, seq_length] token ids from a Megatron indexed dataset (``prefix``.bin/.idx),
    its documents concatenated in order (with whatever end-of-document tokens they hold)."""
    ids = indexed_token_ids(prefix, limit=num_samples * seq_length)
    return _windows(ids, seq_length, num_samples, f"calibration data {prefix!r}")
