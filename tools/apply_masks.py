"""Write a copy of a HF checkpoint whose masked linear weights are multiplied by N:M masks.

    python tools/apply_masks.py --hf-dir Llama-2-7b-hf --masks masks.npz --output Llama-2-7b-2of4

The mask file (npz-bits or compact, keyed by HF parameter names) must cover every attention /
MLP linear weight unless --allow-missing. Streams one shard at a time; the output appears only
when complete.
"""
import argparse
import sys
from typing import List, Optional

from megatron_masklm.cli_errors import refuse_overlap, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf-dir", required=True, help="input HF checkpoint (safetensors)")
    parser.add_argument("--masks", required=True, help="mask .npz, npz-bits or compact format")
    parser.add_argument("--output", required=True, help="output checkpoint directory")
    parser.add_argument("--pattern", help="N:M every mask must be exactly (default: a compact "
                                          "file's own, else 2:4)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="leave linear weights without a mask dense instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; exit status 1 with a one-line error for bad input, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        refuse_overlap(inputs={"--hf-dir": args.hf_dir, "--masks": args.masks},
                       outputs={"--output": args.output})
        from megatron_masklm.hf import apply_masks_to_hf_dir
        from megatron_masklm.masking import parse_nm

        nm = parse_nm(args.pattern) if args.pattern is not None else None
        names = apply_masks_to_hf_dir(args.hf_dir, args.masks, args.output, nm=nm,
                                      allow_missing=args.allow_missing, overwrite=args.overwrite)
        print(f"wrote {args.output}: {len(names)} masked weights")
        return 0

    return run_cli(body, output=args.output)


if __name__ == "__main__":
    sys.exit(main())
