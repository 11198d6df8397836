"""What a one-shot pruning run uses: the method and its settings (no megatron import)."""
from dataclasses import dataclass

from ..masking import validate_nm

METHODS = ("magnitude", "wanda", "sparsegpt")
DEFAULT_BLOCKSIZE = 128


@dataclass(kw_only=True)
class PruneConfig:
    """What to prune with and how."""

    method: str
    """"magnitude" (no data), "wanda" or "sparsegpt"."""
    n: int = 2
    """Weights kept per group."""
    m: int = 4
    """Group size (consecutive inputs)."""
    percdamp: float = 0.01
    """SparseGPT: damping added to the Hessian diagonal, as a fraction of its mean."""
    blocksize: int = DEFAULT_BLOCKSIZE
    """SparseGPT: columns per lazy-update block (a multiple of M)."""
    micro_batch_size: int = 8
    """Calibration windows per layer forward."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {METHODS}")
        self.n, self.m = validate_nm(self.n, self.m)
        if not 0 <= self.percdamp:
            raise ValueError(f"percdamp {self.percdamp} must be >= 0 (SparseGPT uses 0.01)")
        if self.blocksize <= 0:
            raise ValueError(f"blocksize {self.blocksize} must be positive (SparseGPT uses 128)")
        if self.method == "sparsegpt" and self.blocksize % self.m:
            fit = max(self.m, self.blocksize // self.m * self.m)
            if self.blocksize == DEFAULT_BLOCKSIZE:  # the user chose the pattern, not the block
                raise ValueError(
                    f"pattern {self.n}:{self.m}: SparseGPT prunes in lazy-update blocks of "
                    f"{self.blocksize} columns, which M={self.m} does not divide; pass --blocksize "
                    f"{fit} (a multiple of {self.m}), or use a pattern whose M divides "
                    f"{self.blocksize} (2:4, 4:8)")
            raise ValueError(f"blocksize {self.blocksize} is not a multiple of M={self.m} (pattern "
                             f"{self.n}:{self.m}): pass --blocksize {fit}")
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size {self.micro_batch_size} must be >= 1")

    @property
    def needs_data(self) -> bool:
        return self.method != "magnitude"
