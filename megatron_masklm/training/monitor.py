"""Training metrics out: a JSONL log always, TensorBoard when installed, a console line."""
import json
import math
import os
import resource
import sys
from typing import Any, Dict, Optional

import torch

LOG_FILE = "train_log.jsonl"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated accelerator memory, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


class MetricsLogger:
    """Writes one JSON object per record (``kind`` train or eval) on the logging rank only."""

    def __init__(self, *, log_dir: Optional[str], tensorboard_dir: Optional[str], enabled: bool):
        self.enabled = enabled
        self._file = None
        self._tb = None
        if not enabled:
            return
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            self.path = os.path.join(log_dir, LOG_FILE)
            self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("warning: --tensorboard-dir given but tensorboard is not installed "
                      "(pip install tensorboard); logging JSONL only", file=sys.stderr)
            else:
                self._tb = SummaryWriter(log_dir=tensorboard_dir)

    def log(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            step = record["iteration"]
            for key, value in record.items():
                if key not in ("iteration", "kind") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{record['kind']}/{key}", value, step)
            self._tb.flush()
        print(format_record(record), flush=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def format_record(record: Dict[str, Any]) -> str:
    """One console line, Megatron-LM style."""
    if record["kind"] == "eval":
        return (f" validation at iteration {record['iteration']} | loss {record['val_loss']:.4f}"
                f" | PPL {record['val_ppl']:.3f} | mask groups changed "
                f"{record['mask_change_fraction']:.4%} | exact N:M {record['exact_nm']}")
    distill = f" | distill {record['distill_loss']:.5f}" if "distill_loss" in record else ""
    return (f" iteration {record['iteration']:8d}/{record['train_iters']} | lm loss "
            f"{record['lm_loss']:.5f}{distill} | reg {record['reg_term']:.4e} | tau "
            f"{record['temperature']:.4f} | kappa {record['logit_scale']:.1f} | lr "
            f"{record['lr']:.4e} | grad norm {record['grad_norm']:.4f} | tokens/s "
            f"{record['tokens_per_s']:.1f} | step {record['step_time_s'] * 1000:.1f} ms | peak mem "
            f"{record['peak_memory_bytes'] / 2**30:.2f} GiB")


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")
