"""MaskConfig: the one source of truth for what a masked layer does."""
import math
from dataclasses import dataclass
from typing import Tuple

from .candidates import validate_nm


@dataclass(kw_only=True)
class MaskConfig:
    """Settings of learnable N:M masks (SPEC sections 2-3); defaults are the paper's recipe."""

    n: int = 2
    """Weights kept in each group of ``m``."""
    m: int = 4
    """Group size, along the input (reduction) dimension of the weight."""
    temperature: Tuple[float, float] = (4.0, 0.05)
    """Gumbel-softmax temperature tau, linear from the first value to the second over training."""
    logit_scale: Tuple[float, float] = (100.0, 500.0)
    """Logit scale kappa applied before adding the Gumbel noise, linear over training."""
    reg_weight: Tuple[float, float] = (1e-5, 0.0)
    """Sparse-weight regulariser lambda (the loss gets -lambda * sum ||W * M~||^2), linear."""
    prior_strength: float = 3.0
    """alpha: how far a one-shot prior mask shifts the initial logits (0 = no prior)."""
    init_std: float = 0.01
    """Std of the Normal(0, std) initial logits."""
    hard: bool = False
    """Straight-through: the forward uses the sampled one-hot mask, the backward the soft one."""
    gumbel_noise: bool = True
    """Draw Gumbel noise in training mode; False gives the deterministic softmax (tests, debug)."""
    train_weights: bool = False
    """Also train the weights (and everything unmasked) jointly with the logits."""
    frozen: bool = False
    """The mask is given and fixed (weight recovery): the logits do not train, every forward
    uses their argmax mask (no noise, no regulariser), and the weights train (train_weights)."""

    def __post_init__(self):
        validate_nm(self.n, self.m)
        if self.frozen:
            self.train_weights = True
        for name in ("temperature", "logit_scale", "reg_weight"):
            value = getattr(self, name)
            try:
                start, end = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a (start, end) pair of numbers, got {value!r}") from None
            if not (math.isfinite(start) and math.isfinite(end)):
                raise ValueError(f"{name} must be finite, got {value!r}")
            setattr(self, name, (start, end))
        if min(self.temperature) <= 0:
            raise ValueError(f"temperature must stay > 0, got {self.temperature}")
        if min(self.logit_scale) <= 0:
            raise ValueError(f"logit_scale must stay > 0, got {self.logit_scale}")
        if min(self.reg_weight) < 0:
            raise ValueError(f"reg_weight must be >= 0, got {self.reg_weight}")
        if not (math.isfinite(self.prior_strength) and math.isfinite(self.init_std)) or \
                self.prior_strength < 0 or self.init_std < 0:
            raise ValueError(
                f"prior_strength ({self.prior_strength}) and init_std ({self.init_std}) must be >= 0"
            )

    @property
    def pattern(self) -> str:
        return f"{self.n}:{self.m}"
