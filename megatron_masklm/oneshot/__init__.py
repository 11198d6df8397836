"""One-shot N:M pruning (magnitude, Wanda, SparseGPT) on plain tensors and calibration
statistics; no megatron import. The model-level, tensor-parallel driver builds on these."""
from .pruning import magnitude_mask, nm_keep_mask, sparsegpt, wanda_mask
from .statistics import InputStatistics

__all__ = ["InputStatistics", "magnitude_mask", "nm_keep_mask", "sparsegpt", "wanda_mask"]
