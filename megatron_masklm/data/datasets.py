"""GPT train/valid/test datasets over indexed-dataset blends, built by megatron.core.datasets.

``data_path`` follows Megatron-LM's ``--data-path``: ``prefix ...`` or ``w1 prefix1 w2 prefix2
...``. ``split`` ("969,30,1") divides each prefix's *documents*, in file order, into three
consecutive ranges with those relative sizes (Megatron rounds ``share * num_documents`` at each
boundary); each split then draws its ``num_samples`` sequences of ``seq_length + 1`` tokens from
its own range, shuffled and repeated over as many epochs as needed. A weighted blend draws from
each prefix in proportion to its weight; an unweighted blend of several prefixes draws in
proportion to their sizes and holds at most one epoch (ask for more and you get a ValueError).

Index caches: ``cache_dir`` if given, else Megatron writes the GPT indices to
``{prefix}/cache/GPTDataset_indices/`` (a directory named like the prefix, next to its .bin),
so the data directory must be writable. With torch.distributed initialised the build is
collective: call it on every rank; rank 0 writes the caches, the others wait and read them.
"""
import copy
import dataclasses
import math
import numbers
import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset

SPLIT_NAMES = ("train", "valid", "test")
_PREPROCESS_HINT = "build it with tools/preprocess_data.py"


def parse_data_path(data_path: Sequence[str]) -> Tuple[List[str], Optional[List[float]]]:
    """Split Megatron-LM ``--data-path`` words into prefixes and weights (None when unweighted)."""
    words = [str(word) for word in (data_path or [])]
    if not words:
        raise ValueError(f"data_path is empty; pass 'prefix ...' or 'w1 prefix1 w2 prefix2 ...' "
                         f"({_PREPROCESS_HINT})")
    if _as_float(words[0]) is None:
        prefixes, weights = words, None
    else:
        if len(words) % 2:
            raise ValueError(f"weighted data_path needs weight/prefix pairs, got {len(words)} "
                             f"words: {words}; write 'w1 prefix1 w2 prefix2 ...'")
        prefixes, weights = words[1::2], [_weight(word, words) for word in words[0::2]]
    for prefix in prefixes:
        _check_prefix(prefix)
    return prefixes, weights


def _as_float(word: str) -> Optional[float]:
    try:
        return float(word)
    except ValueError:
        return None


def _weight(word: str, words: List[str]) -> float:
    value = _as_float(word)
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"blend weight {word!r} in {words} is not a positive number; weights "
                         "and prefixes must alternate: 'w1 prefix1 w2 prefix2 ...'")
    return value


def _check_prefix(prefix: str) -> None:
    for ext in (".bin", ".idx"):
        if prefix.endswith(ext):
            raise ValueError(f"data prefix {prefix!r} ends in {ext}; pass it without the "
                             "extension (the path shared by the .bin and .idx files)")
        if not os.path.isfile(prefix + ext):
            raise ValueError(f"data prefix {prefix!r} has no {prefix + ext} file; check the path "
                             f"or {_PREPROCESS_HINT}")
    if os.path.getsize(prefix + ".bin") == 0:  # Megatron cannot mmap it, and says so 3 times
        raise ValueError(f"data prefix {prefix!r} holds no tokens ({prefix}.bin is empty): "
                         f"{_PREPROCESS_HINT} from a non-empty input, or drop it from data_path")


def build_gpt_datasets(*, data_path: Optional[Sequence[str]], split: str, seq_length: int,
                       seed: int, tokenizer, num_samples: Tuple[int, int, int],
                       cache_dir: Optional[str] = None, mock: bool = False):
    """(train, valid, test) GPT datasets of at least ``num_samples`` each; None where 0 asked."""
    sizes = _check_request(data_path, seq_length, num_samples, mock)
    blend = None if mock else parse_data_path(data_path)
    config = _gpt_config(random_seed=seed, sequence_length=seq_length, blend=blend,
                         split=_check_split(split), tokenizer=tokenizer, path_to_cache=cache_dir,
                         reset_position_ids=False, reset_attention_mask=False,
                         eod_mask_loss=False)
    _drop_unrequested_splits(config, sizes)
    if blend is not None:
        _check_splits_have_tokens(*blend, config.split_matrix, sizes, split)
    datasets = _Builder(MockGPTDataset if mock else GPTDataset, sizes, lambda: True,
                        config).build()
    _check_lengths(datasets, sizes, split, blend)
    return tuple(datasets)


def _check_request(data_path, seq_length: int, num_samples, mock: bool) -> List[int]:
    if mock == (data_path is not None):
        raise ValueError(f"pass either data_path (got {data_path!r}) or mock=True (got {mock}), "
                         "exactly one")
    if not isinstance(seq_length, int) or seq_length < 1:
        raise ValueError(f"seq_length must be a positive int, got {seq_length!r}")
    sizes = list(num_samples)
    if len(sizes) != 3 or any(not isinstance(n, numbers.Integral) or n < 0 for n in sizes):
        raise ValueError(f"num_samples must be 3 non-negative ints (train, valid, test), got "
                         f"{num_samples!r}")
    return [int(n) for n in sizes]


def _check_split(split: str) -> str:
    parts = [part.strip() for part in str(split).split(",")]
    if not 1 <= len(parts) <= 3 or not all(re.fullmatch(r"\d+\.?\d*|\.\d+", p) for p in parts) \
            or sum(float(part) for part in parts) <= 0:
        raise ValueError(f"split {split!r} must be 1-3 comma-separated non-negative numbers "
                         "with a positive sum, e.g. '969,30,1'")
    return str(split)


def _gpt_config(**kwargs) -> GPTDatasetConfig:
    """GPTDatasetConfig from the kwargs this megatron-core release accepts.

    Version-sensitive: the config's fields move between releases (0.19 added
    inter_document_masking; 0.16 and 0.19 both derive ``mock`` and ``split_matrix`` and reject
    them as arguments); every field passed here exists in 0.16.1 through 0.19.2.
    """
    fields = {field.name for field in dataclasses.fields(GPTDatasetConfig) if field.init}
    missing = sorted(set(kwargs) - fields)
    if missing:  # pragma: no cover - guards future releases
        raise RuntimeError(f"this megatron-core's GPTDatasetConfig has no {missing}")
    return GPTDatasetConfig(**kwargs)


def _drop_unrequested_splits(config: GPTDatasetConfig, sizes: List[int]) -> None:
    """Unset the split_matrix entry of every split asked for 0 samples.

    Megatron builds a full epoch for a size-0 split, and loops forever on one with no tokens;
    dropping only the entry keeps the document ranges of the other splits unchanged.
    """
    config.split_matrix = [None if size == 0 else bounds
                           for bounds, size in zip(config.split_matrix, sizes)]


def _check_splits_have_tokens(prefixes: List[str], weights: Optional[List[float]],
                              split_matrix, sizes: List[int], split: str) -> None:
    """Raise where Megatron would loop forever: a requested split whose range has no tokens."""
    tokens = [_split_tokens(prefix, split_matrix) for prefix in prefixes]
    for index, name in enumerate(SPLIT_NAMES):
        if sizes[index] == 0 or split_matrix[index] is None:
            continue
        per_prefix = [counts[index] for counts in tokens]
        each = len(prefixes) == 1 or weights is not None
        empty = [p for p, n in zip(prefixes, per_prefix) if n == 0]
        if (each and empty) or sum(per_prefix) == 0:
            raise ValueError(f"split {split!r} leaves the {name} split of {empty[0]!r} with no "
                             f"documents, but {sizes[index]} {name} samples were asked for; use "
                             f"more data, a larger {name} share, or 0 {name} samples")


def _split_tokens(prefix: str, split_matrix) -> List[int]:
    """Tokens per split range of one prefix, with Megatron's rounding of the boundaries."""
    dataset = IndexedDataset(prefix)  # keep it alive: its lengths are a view of its mmap
    lengths = numpy.array(dataset.sequence_lengths)
    counts = []
    for bounds in split_matrix:
        if bounds is None:
            counts.append(0)
            continue
        begin, end = (int(round(bound * len(lengths))) for bound in bounds)
        counts.append(int(numpy.sum(lengths[begin:end], dtype=numpy.int64)))
    return counts


def _check_lengths(datasets, sizes: List[int], split: str, blend) -> None:
    for dataset, size, name in zip(datasets, sizes, SPLIT_NAMES):
        if size == 0:
            continue
        if dataset is None:
            raise ValueError(f"split {split!r} gives the {name} split no share, but {size} "
                             f"{name} samples were asked for; give it a share or ask for 0")
        if len(dataset) < size:
            raise ValueError(f"the {name} split has {len(dataset)} samples, fewer than the "
                             f"{size} asked for: an unweighted blend of several prefixes holds "
                             f"one epoch; give weights ('1 {blend[0][0]} 1 ...') to repeat data")


class _Builder(BlendedMegatronDatasetBuilder):
    """Megatron's builder, minus a crash when torch.distributed is not initialised.

    Version-sensitive: megatron-core 0.16.1-0.19.2 BlendedDataset calls
    torch.distributed.get_rank() whenever path_to_cache is set. Without torch.distributed its
    indices (cheap) are built in memory instead; the per-prefix GPT indices are still cached.
    """

    @staticmethod
    def build_generic_dataset(cls, is_built_on_rank, synchronize_ranks, *args):
        if cls is BlendedDataset and not torch.distributed.is_initialized():
            config = copy.copy(args[-1])
            config.path_to_cache = None
            args = (*args[:-1], config)
        return BlendedMegatronDatasetBuilder.build_generic_dataset(
            cls, is_built_on_rank, synchronize_ranks, *args)
