"""Export the learned N:M masks (argmax of the logits) of a Megatron checkpoint, any TP/PP, under
Hugging Face parameter names.

    python tools/export_masks.py --load-dir RUN_DIR --output masks.npz [--format npz|compact]

npz: SPEC section 5's released format (<hf name>.mask = np.packbits of the keep-mask);
compact: one candidate index per group, ceil(log2 C(M,N)) bits (megatron_masklm/masking/compact.py).
"""
import argparse
import sys

from megatron_masklm.safe_pickle import TRUST_HELP


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load-dir", required=True, help="run directory or dist checkpoint")
    parser.add_argument("--output", required=True, help="mask file to write")
    parser.add_argument("--format", choices=["npz", "compact"], default="npz")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help=TRUST_HELP)
    args = parser.parse_args(argv)
    from megatron_masklm.convert.masks import export_masks

    try:
        masks = export_masks(args.load_dir, args.output, fmt=args.format,
                             overwrite=args.overwrite, trust=args.trust_checkpoint)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    print(f"wrote {args.output}: {len(masks)} masked weights, {kept / total:.2%} kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
