"""One-shot N:M pruning (magnitude, Wanda, SparseGPT) on plain tensors, calibration statistics
and the run settings; importing the package imports no megatron. Two modules build on these
and are imported by name: ``oneshot.model``, the layer-by-layer, tensor-parallel driver over a
Megatron GPTModel (``prune_model``, ``apply_global_masks``: it imports megatron.core), and
``oneshot.checkpoint`` (the job behind tools/prune_oneshot.py), which prunes a whole checkpoint,
importing megatron only when it runs."""
from .config import METHODS, PruneConfig
from .pruning import magnitude_mask, nm_keep_mask, sparsegpt, wanda_mask
from .statistics import InputStatistics

__all__ = ["METHODS", "InputStatistics", "PruneConfig", "magnitude_mask", "nm_keep_mask", "sparsegpt", "wanda_mask"]
