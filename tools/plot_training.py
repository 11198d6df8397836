"""Draw a training run's metrics log as a PNG.

    python tools/plot_training.py runs/cpu_tiny                     # -> runs/cpu_tiny/logs/train_log.png
    python tools/plot_training.py run/logs/train_log.jsonl -o curves.png \
        --hline SparseGPT=10.42 --hline Wanda=11.29 --hline dense=5.12

Panels: LM loss, validation PPL (hard mask) vs training tokens with the --hline references,
temperature and logit scale, learning rate, mask groups changed per validation. Needs
matplotlib (pip install -e .[plot]).
"""
import argparse
import os
import sys
from typing import List, Optional, Tuple

from megatron_masklm.cli_errors import refuse_overlap, run_cli


def _hline(text: str) -> Tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hline {text!r} must be NAME=VALUE, e.g. SparseGPT=10.42") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log", help="run directory (its logs/train_log.jsonl) or a JSONL log file")
    parser.add_argument("-o", "--output", help="PNG to write (default: the log's path with .png)")
    parser.add_argument("--hline", type=_hline, action="append", default=[], metavar="NAME=VALUE",
                        help="reference line on the validation-PPL panel (repeatable)")
    parser.add_argument("--title", default=None, help="figure title (default: the log's path)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; exit status 1 with a one-line error for bad input, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _plot(args), output=args.output)


def _plot(args) -> int:
    from megatron_masklm.training.plot import plot_training_log, read_log, resolve_log_path

    path = resolve_log_path(args.log)
    output = args.output or os.path.splitext(path)[0] + ".png"
    refuse_overlap(inputs={"log": path}, outputs={"--output": output})
    records = read_log(path)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("tools/plot_training.py needs matplotlib "
                         "(pip install -e .[plot])") from None
    title = path if args.title is None else args.title
    plot_training_log(records, output, hlines=args.hline, title=title)
    print(f"wrote {output} ({len(records)} records from {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
