"""Draw a run's JSONL metrics log (see :mod:`.monitor`) as one PNG; imports neither torch nor megatron.

Panels: LM loss, validation PPL of the hard mask vs training tokens (with optional reference
lines, e.g. one-shot baselines), temperature and logit scale, learning rate, and the fraction of
mask groups that changed between validations.
"""
import json
import math
import os
import tempfile
from typing import Any, Dict, List, Sequence, Tuple

LOG_FILE = "train_log.jsonl"  # monitor.LOG_FILE; not imported from there, which imports torch


def resolve_log_path(path: str) -> str:
    """The JSONL log for ``path``: the file itself, or <dir>/logs/train_log.jsonl, <dir>/train_log.jsonl."""
    if os.path.isdir(path):
        for candidate in (os.path.join(path, "logs", LOG_FILE), os.path.join(path, LOG_FILE)):
            if os.path.isfile(candidate):
                return candidate
        raise ValueError(f"{path!r} is a directory without logs/{LOG_FILE} or {LOG_FILE}: pass "
                         "a run directory (the --save or --log-dir of a run) or the log file")
    if not os.path.isfile(path):
        raise ValueError(f"log file {path!r} does not exist")
    return path


def read_log(path: str) -> List[Dict[str, Any]]:
    """The records of a JSONL log; a resumed run's repeated iterations keep their last record."""
    latest: Dict[Tuple[str, int], Dict[str, Any]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: malformed line, not JSON ({error})") from None
            if not isinstance(record, dict) or "kind" not in record or "iteration" not in record:
                raise ValueError(f"{path}:{number}: malformed line, expected a JSON object with "
                                 "'kind' and 'iteration'")
            latest[(str(record["kind"]), int(record["iteration"]))] = record
    if not latest:
        raise ValueError(f"log file {path!r} is empty: no records yet (has the run logged its "
                         "first --log-interval?)")
    return sorted(latest.values(), key=lambda r: (r["iteration"], r["kind"]))


def _series(records: Sequence[Dict[str, Any]], kind: str, x: str, y: str):
    """(xs, ys) of the records of ``kind`` that have finite values for both keys."""
    points = [(r[x], r[y]) for r in records if r["kind"] == kind and x in r and y in r
              and isinstance(r[y], (int, float)) and math.isfinite(r[y])]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training_log(records: Sequence[Dict[str, Any]], out_path: str, *,
                      hlines: Sequence[Tuple[str, float]] = (), title: str = "") -> str:
    """Draw ``records`` into a PNG at ``out_path`` (written atomically); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(12, 11))
    ax_loss, ax_ppl, ax_sched, ax_lr, ax_change, ax_spare = axes.flat

    xs, ys = _series(records, "train", "iteration", "lm_loss")
    ax_loss.plot(xs, ys, color="tab:blue")
    ax_loss.set(title="LM loss (training, sampled soft masks)", xlabel="iteration", ylabel="loss")

    xs, ys = _series(records, "eval", "tokens", "val_ppl")
    ax_ppl.plot(xs, ys, marker="o", color="tab:green", label="learned mask (argmax)")
    for i, (name, value) in enumerate(hlines):
        ax_ppl.axhline(value, linestyle="--", color=f"C{(i + 3) % 10}", label=f"{name} ({value:g})")
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax_ppl.set_yscale("log")
    ax_ppl.set(title="validation PPL (hard mask)", xlabel="training tokens", ylabel="PPL")
    if ys or hlines:
        ax_ppl.legend(fontsize="small")

    xs, ys = _series(records, "train", "iteration", "temperature")
    ax_sched.plot(xs, ys, color="tab:red")
    ax_sched.set(title="Gumbel-softmax schedules", xlabel="iteration")
    ax_sched.set_ylabel("temperature tau", color="tab:red")
    twin = ax_sched.twinx()
    xs, ys = _series(records, "train", "iteration", "logit_scale")
    twin.plot(xs, ys, color="tab:purple")
    twin.set_ylabel("logit scale kappa", color="tab:purple")

    xs, ys = _series(records, "train", "iteration", "lr")
    ax_lr.plot(xs, ys, color="tab:orange")
    ax_lr.set(title="learning rate (mask logits)", xlabel="iteration", ylabel="lr")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    xs, ys = _series(records, "eval", "iteration", "mask_change_fraction")
    ax_change.plot(xs, [100 * y for y in ys], marker="o", color="tab:brown")
    ax_change.set(title="mask groups changed since the previous validation",
                  xlabel="iteration", ylabel="% of groups")

    ax_spare.axis("off")
    for ax in (ax_loss, ax_ppl, ax_sched, ax_lr, ax_change):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".plot-", suffix=".png.tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, out_path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path
