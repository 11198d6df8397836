"""Check that a HF checkpoint or a mask file is N:M sparse along the input dimension.

    python tools/verify_nm.py path/to/hf_checkpoint_dir            # or one .safetensors file
    python tools/verify_nm.py masks.npz --pattern 2:4              # npz-bits or compact masks

Weights pass with at most N nonzeros per group of M (already-zero weights count as pruned);
mask files must keep exactly N. Exit status 0 when every parameter passes, 1 otherwise.
"""
import argparse
import sys
from typing import List, Optional

from megatron_masklm.cli_errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="HF checkpoint directory, .safetensors file, or mask .npz")
    parser.add_argument("--pattern", help="N:M to check (default: a compact file's own, else 2:4)")
    parser.add_argument("--hf-dir", help="npz-bits mask files only: take the exact weight shapes "
                                         "from this checkpoint (else the flat bits are checked)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="with --hf-dir: pass although some masked weights of the checkpoint "
                             "have no mask in the file")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the CLI; exit status 1 for a violation or with a one-line error for bad input."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        from megatron_masklm.hf import verify_nm_path

        report = verify_nm_path(args.path, pattern=args.pattern, shapes_from=args.hf_dir,
                                allow_missing=args.allow_missing)
        if not args.quiet:
            for param in report.params:
                print(param.line(exact=report.exact))
        print(report.summary())
        return 0 if report.ok else 1

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
