"""One-shot N:M pruning (magnitude, Wanda, SparseGPT) of a Megatron checkpoint at any TP, or of
a HF checkpoint; writes the masks as a prior that training's --prior-mask reads.

    torchrun --nproc-per-node 2 tools/prune_oneshot.py --load CKPT --method sparsegpt \
        --calib-text train.txt --output-mask prior.npz
    python tools/prune_oneshot.py --hf-checkpoint HF_DIR --method wanda --calib-text train.txt \
        --output-mask prior.npz --hf-masks hf_masks.npz
    python tools/prune_oneshot.py --load CKPT --method sparsegpt --calib-text train.txt \
        --fixed-mask learned.idx.npz --save recovered/      # OBS weights for a learned mask

``--help`` lists every option; the job itself (``prune_checkpoint`` of a ``PruneJob``) is
megatron_masklm/oneshot/checkpoint.py's.
"""
import argparse
import json
import os
import sys
import warnings
from typing import Optional, Sequence

from megatron_masklm.cli_errors import run_cli
from megatron_masklm.oneshot.checkpoint import PruneJob, prune_checkpoint
from megatron_masklm.oneshot.config import METHODS
from megatron_masklm.safe_pickle import TRUST_HELP


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags, one per :class:`PruneJob` field (same names and defaults)."""
    parser = argparse.ArgumentParser(
        description="One-shot N:M pruning (magnitude, Wanda, SparseGPT) of a Megatron or HF "
                    "checkpoint; writes the mask as a prior for training.")
    source = parser.add_argument_group("source (one of)")
    source.add_argument("--load", help="Megatron checkpoint: a converted or training run "
                                       "directory, or a dist checkpoint directory")
    source.add_argument("--hf-checkpoint", help="HF directory or .gguf file (one process; it is "
                                                "converted to Megatron at TP=1 in a temp dir)")
    parser.add_argument("--trust-checkpoint", action="store_true", help=f"with --load: {TRUST_HELP}")
    method = parser.add_argument_group("method")
    method.add_argument("--method", required=True, choices=METHODS)
    method.add_argument("--pattern", default="2:4", help="N:M, N kept of every M consecutive inputs")
    method.add_argument("--percdamp", type=float, default=0.01,
                        help="SparseGPT Hessian damping, a fraction of its mean diagonal")
    method.add_argument("--blocksize", type=int, default=128, help="SparseGPT lazy-update block")
    method.add_argument("--update-weights", action="store_true",
                        help="SparseGPT: write its reconstructed weights to --save/--save-hf "
                             "(without it they get the original weights times the mask, "
                             "as for magnitude and Wanda)")
    method.add_argument("--fixed-mask", metavar="FILE",
                        help="SparseGPT: prune by this mask instead of choosing one, and "
                             "reconstruct the kept weights for it (OBS on the calibration "
                             "statistics; implies --update-weights): the one-shot recovery of a "
                             "learned mask. Any mask file of the project (export_masks.py, "
                             "--output-mask, --hf-masks)")
    calib = parser.add_argument_group("calibration (Wanda, SparseGPT)")
    calib.add_argument("--calib-text", help="UTF-8 text file, tokenized whole")
    calib.add_argument("--calib-data", nargs="+", metavar="PREFIX_OR_WEIGHT",
                       help="indexed dataset prefix (tools/preprocess_data.py), or a blend "
                            "'w1 prefix1 w2 prefix2 ...' as training's --data-path: each "
                            "prefix gives its first windows in proportion to its weight")
    calib.add_argument("--calib-samples", type=int, default=128, help="windows to use")
    calib.add_argument("--seq-length", type=int, default=512, help="tokens per window")
    calib.add_argument("--micro-batch-size", type=int, default=8, help="windows per layer pass")
    calib.add_argument("--tokenizer-type", choices=["HuggingFaceTokenizer", "SentencePieceTokenizer",
                                                     "NullTokenizer"],
                       help="default: the tokenizer saved with the checkpoint (NullTokenizer: "
                            "text of integer ids)")
    calib.add_argument("--tokenizer-model", help="tokenizer file or directory")
    out = parser.add_argument_group("outputs")
    out.add_argument("--output-mask",
                     help="mask .npz under global Megatron names (training's --prior-mask); "
                          "required unless --fixed-mask gives the mask")
    out.add_argument("--hf-masks", help="also write the masks under HF names "
                                        "(tools/apply_masks.py reads them)")
    out.add_argument("--save", help="write a Megatron checkpoint with the pruned weights")
    out.add_argument("--save-hf", help="write a HF directory with the pruned weights (TP=1)")
    out.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    out.add_argument("--no-progress", action="store_true")
    return parser


def parse_job(argv: Optional[Sequence[str]] = None) -> PruneJob:
    """The command line as a :class:`PruneJob`."""
    return PruneJob(**vars(build_parser().parse_args(argv)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse and run; exit status 1 with a one-line error for bad input, 130 on Ctrl-C."""
    warnings.filterwarnings("ignore", category=UserWarning, module="megatron")
    args = parse_job(argv)
    return run_cli(lambda: _run(args), output=args.output_mask)


def _run(args: PruneJob) -> int:
    summary = prune_checkpoint(args)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":  # required: the dist-checkpoint writer re-imports __main__
    sys.exit(main())
