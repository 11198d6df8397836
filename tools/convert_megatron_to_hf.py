"""Convert a Megatron-Core checkpoint (any TP/PP; dense, or with mask logits) to a Hugging Face
directory (safetensors + config.json + tokenizer) that AutoModelForCausalLM loads.

    python tools/convert_megatron_to_hf.py --load-dir RUN_OR_CKPT_DIR --save-dir HF_OUT \
        [--apply-masks] [--save-masks] [--dtype bfloat16]
"""
import argparse
import sys

from megatron_masklm.cli_errors import refuse_overlap, run_cli
from megatron_masklm.safe_pickle import TRUST_HELP


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load-dir", required=True,
                        help="run or converted directory (with latest_checkpointed_iteration.txt) "
                             "or one dist checkpoint directory")
    parser.add_argument("--save-dir", required=True, help="output directory (must not exist)")
    parser.add_argument("--apply-masks", action="store_true",
                        help="multiply masked weights by the argmax N:M masks (needs mask logits)")
    parser.add_argument("--save-masks", action="store_true",
                        help="also write the argmax masks into --save-dir as masks.idx.npz "
                             "(compact, HF names; needs mask logits): with --apply-masks, the "
                             "2:4 model and its mask file in one command")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="weight dtype (default: the checkpoint's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --save-dir")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help=TRUST_HELP)
    return parser


def main(argv=None) -> int:
    """Run the CLI; exit status 1 with a one-line error for bad input, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        refuse_overlap(inputs={"--load-dir": args.load_dir}, outputs={"--save-dir": args.save_dir})
        import torch

        from megatron_masklm.convert import convert_megatron_to_hf

        out = convert_megatron_to_hf(args.load_dir, args.save_dir, apply_masks=args.apply_masks,
                                     save_masks=args.save_masks,
                                     dtype=getattr(torch, args.dtype) if args.dtype else None,
                                     overwrite=args.overwrite, trust=args.trust_checkpoint)
        print(f"wrote {out}")
        return 0

    return run_cli(body, output=args.save_dir)


if __name__ == "__main__":  # required: the dist-checkpoint reader may re-import __main__
    sys.exit(main())
