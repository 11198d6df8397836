"""One-shot N:M pruning (magnitude, Wanda, SparseGPT) on plain tensors, calibration statistics
and the run settings; no megatron import. The model-level, tensor-parallel driver
(megatron_masklm.mcore.oneshot) builds on these, and ``oneshot.checkpoint`` (the job behind
tools/prune_oneshot.py) prunes a whole checkpoint, importing megatron only when it runs."""
from .config import METHODS, PruneConfig
from .pruning import magnitude_mask, nm_keep_mask, sparsegpt, wanda_mask
from .statistics import InputStatistics

__all__ = ["METHODS", "InputStatistics", "PruneConfig", "magnitude_mask", "nm_keep_mask", "sparsegpt", "wanda_mask"]
