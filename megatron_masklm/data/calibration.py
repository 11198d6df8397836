"""Calibration windows for one-shot pruning: the first K full windows of S tokens of a text file
or of an indexed dataset (documents concatenated in order), as SparseGPT and Wanda take them.

For a text file this is exactly ../shared/BENCHMARK.md's protocol: the whole file tokenized
without special tokens, cut into non-overlapping windows, incomplete last window dropped.
"""
import os

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


def text_windows(path: str, tokenizer, *, seq_length: int, num_samples: int) -> torch.Tensor:
    """[num_samples, seq_length] token ids from the text file ``path`` (UTF-8)."""
    if not os.path.isfile(path):
        raise ValueError(f"calibration text {path!r} does not exist")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return _windows(np.asarray(tokenizer.tokenize(text)), seq_length, num_samples,
                    f"calibration text {path!r}")


def indexed_windows(prefix: str, *, seq_length: int, num_samples: int) -> torch.Tensor:
    """[num_samples, seq_length] token ids from a Megatron indexed dataset (``prefix``.bin/.idx),
    its documents concatenated in order (with whatever end-of-document tokens they hold)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for suffix in (".bin", ".idx"):
        if not os.path.isfile(prefix + suffix):
            raise ValueError(f"calibration data {prefix!r} has no {prefix + suffix}: pass the "
                             "prefix tools/preprocess_data.py wrote (without .bin/.idx)")
    dataset = IndexedDataset(prefix)
    wanted, pieces, total = num_samples * seq_length, [], 0
    for index in range(len(dataset)):
        if total >= wanted:
            break
        document = np.asarray(dataset[index])
        pieces.append(document)
        total += len(document)
    ids = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    return _windows(ids, seq_length, num_samples, f"calibration data {prefix!r}")
