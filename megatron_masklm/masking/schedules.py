"""Linear schedules of temperature, logit scale and regulariser weight over training."""
from dataclasses import dataclass

from .config import MaskConfig


def linear_schedule(start: float, end: float, progress: float) -> float:
    """Value at ``progress`` in [0, 1] (clamped) of a line from ``start`` to ``end``."""
    progress = min(max(progress, 0.0), 1.0)
    return start + (end - start) * progress


@dataclass(frozen=True)
class MaskState:
    """What the masked layers use for one step: plain floats, so setting them never syncs."""

    temperature: float
    logit_scale: float
    reg_weight: float


def mask_state_at(config: MaskConfig, completed_steps: int, train_steps: int) -> MaskState:
    """The schedules at p = completed_steps / train_steps (SPEC section 2)."""
    if train_steps <= 0:
        raise ValueError(f"train_steps must be > 0, got {train_steps}")
    if completed_steps < 0:
        raise ValueError(f"completed_steps must be >= 0, got {completed_steps}")
    p = completed_steps / train_steps
    return MaskState(
        temperature=linear_schedule(*config.temperature, p),
        logit_scale=linear_schedule(*config.logit_scale, p),
        reg_weight=linear_schedule(*config.reg_weight, p),
    )
