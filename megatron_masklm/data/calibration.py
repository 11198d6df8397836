"""Token streams of a text file or an indexed dataset (perplexity evaluation reads them whole),
and one-shot pruning's calibration windows: the first K full windows of S tokens of either
(an indexed dataset's documents concatenated in order), as SparseGPT and Wanda take them. A
weighted blend of indexed datasets (``w1 prefix1 w2 prefix2 ...``, Megatron's ``--data-path``
words) gives each prefix's first windows in proportion to its weight, so the one-shot methods see
the mix that mask training draws from.

For a text file this is exactly ../shared/BENCHMARK.md's protocol: the whole file tokenized
without special tokens, cut into non-overlapping windows, incomplete last window dropped.
"""
import os
from typing import List, Optional, Sequence

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


def blend_counts(weights: Sequence[float], num_samples: int) -> List[int]:
    """``num_samples`` split in proportion to ``weights`` (largest remainder, ties to the first),
    every share at least one window."""
    if num_samples < len(weights):
        raise ValueError(f"{num_samples} calibration windows cannot cover a blend of "
                         f"{len(weights)} datasets: pass at least {len(weights)}")
    total = float(sum(weights))
    exact = [num_samples * w / total for w in weights]
    counts = [max(1, int(x)) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in by_remainder[:num_samples - sum(counts)]:
        counts[i] += 1
    while sum(counts) > num_samples:  # the at-least-one floor overshot: take from the largest
        counts[max(range(len(counts)), key=lambda i: counts[i])] -= 1
    return counts


def blended_windows(data_path: Sequence[str], *, seq_length: int, num_samples: int) -> torch.Tensor:
    """[num_samples, seq_length] token ids from ``data_path``: one indexed-dataset prefix, or
    Megatron's blend words ``w1 prefix1 w2 prefix2 ...``, each prefix's first windows (its
    documents in order) in proportion to its weight, the prefixes' windows one after another."""
    from .datasets import parse_data_path

    prefixes, weights = parse_data_path(list(data_path))
    if weights is None:
        if len(prefixes) != 1:
            raise ValueError(f"--calib-data {' '.join(prefixes)}: several prefixes need weights "
                             "('w1 prefix1 w2 prefix2 ...') to say how many windows each gives")
        weights = [1.0]
    counts = blend_counts(weights, num_samples)
    return torch.cat([indexed_windows(prefix, seq_length=seq_length, num_samples=count)
                      for prefix, count in zip(prefixes, counts)])
