"""Export the learned N:M masks (argmax of the logits) of a Megatron checkpoint, any TP/PP, under
Hugging Face parameter names.

    python tools/export_masks.py --load-dir RUN_DIR --output masks.npz [--format npz|compact]

npz: SPEC section 5's released format (<hf name>.mask = np.packbits of the keep-mask);
compact: one candidate index per group, ceil(log2 C(M,N)) bits
(megatron_masklm/masking/files/compact.py).
"""
import argparse
import sys

from megatron_masklm.cli_errors import refuse_overlap, run_cli
from megatron_masklm.safe_pickle import TRUST_HELP


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load-dir", required=True, help="run directory or dist checkpoint")
    parser.add_argument("--output", required=True, help="mask file to write")
    parser.add_argument("--format", choices=["npz", "compact"], default="npz")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help=TRUST_HELP)
    return parser


def main(argv=None) -> int:
    """Run the CLI; exit status 1 with a one-line error for bad input, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        refuse_overlap(inputs={"--load-dir": args.load_dir}, outputs={"--output": args.output})
        from megatron_masklm.convert.masks import export_masks

        masks = export_masks(args.load_dir, args.output, fmt=args.format,
                             overwrite=args.overwrite, trust=args.trust_checkpoint)
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        print(f"wrote {args.output}: {len(masks)} masked weights, {kept / total:.2%} kept")
        return 0

    return run_cli(body, output=args.output)


if __name__ == "__main__":
    sys.exit(main())
