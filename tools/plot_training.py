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
    args = build_parser().parse_args(argv)
    from megatron_masklm.training.plot import plot_training_log, read_log, resolve_log_path

    try:
        path = resolve_log_path(args.log)
        records = read_log(path)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: tools/plot_training.py needs matplotlib (pip install -e .[plot])",
              file=sys.stderr)
        return 1
    output = args.output or os.path.splitext(path)[0] + ".png"
    title = path if args.title is None else args.title
    plot_training_log(records, output, hlines=args.hline, title=title)
    print(f"wrote {output} ({len(records)} records from {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
