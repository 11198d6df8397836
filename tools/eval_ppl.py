"""Perplexity of a Megatron checkpoint (any TP) or a HF directory; the windows, the protocol and
the library call (``evaluate`` of an ``EvalJob``) are megatron_masklm/evaluation/perplexity.py's.

    torchrun --nproc-per-node 2 tools/eval_ppl.py --load runs/smollm2 --text eval.txt
    python tools/eval_ppl.py --hf-dir hf/smollm2 --masks masks.npz --text eval.txt --output ppl.json
"""
import argparse
import json
import os
import sys
from typing import Optional, Sequence

from megatron_masklm.cli_errors import run_cli
from megatron_masklm.evaluation.perplexity import EvalJob, evaluate
from megatron_masklm.safe_pickle import TRUST_HELP


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags, one per :class:`EvalJob` field (same names and defaults)."""
    parser = argparse.ArgumentParser(
        description="Perplexity of a Megatron checkpoint (any TP, hard masks) or a HF directory "
                    "(optionally masked) on a text file or an indexed dataset.",
        epilog="Defaults are ../shared/BENCHMARK.md's protocol: non-overlapping 512-token "
               "windows, no BOS, incomplete last window dropped.")
    model = parser.add_argument_group("model (one of)")
    model.add_argument("--load", help="Megatron checkpoint: a training run, a converted or pruned "
                                      "checkpoint, or a dist checkpoint directory")
    model.add_argument("--trust-checkpoint", action="store_true", help=f"with --load: {TRUST_HELP}")
    model.add_argument("--hf-dir", help="HF causal LM directory (one process)")
    model.add_argument("--masks", help="with --hf-dir: mask file under HF names (npz or compact) "
                                       "applied to the weights first")
    model.add_argument("--pattern", help="N:M of --masks (default: the file's, else 2:4)")
    data = parser.add_argument_group("data (one of)")
    data.add_argument("--text", help="UTF-8 text file, tokenized whole without special tokens")
    data.add_argument("--data-path", help="indexed dataset prefix (tools/preprocess_data.py), its "
                                          "documents concatenated in order")
    parser.add_argument("--tokenizer-type",
                        choices=("HuggingFaceTokenizer", "SentencePieceTokenizer", "NullTokenizer"),
                        help="default: the checkpoint's tokenizer/ (Megatron) or the HF directory's; "
                             "NullTokenizer reads whitespace-separated ids (tests)")
    parser.add_argument("--tokenizer-model", help="tokenizer file or directory")
    parser.add_argument("--seq-length", type=int, default=512, help="tokens per window, BOS included")
    parser.add_argument("--stride", type=int, help="tokens between window starts (default: "
                                                   "non-overlapping windows)")
    parser.add_argument("--bos", action="store_true", help="start every window with the BOS token")
    parser.add_argument("--keep-last", action="store_true",
                        help="also score the tail the full windows miss (with a last window of "
                             "the final --seq-length tokens)")
    parser.add_argument("--max-windows", type=int, help="score only the first K windows")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="compute dtype (default: float32 for HF, the checkpoint's for Megatron)")
    parser.add_argument("--output", help="also write the JSON result here")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def parse_job(argv: Optional[Sequence[str]] = None) -> EvalJob:
    """The command line as an :class:`EvalJob`."""
    return EvalJob(**vars(build_parser().parse_args(argv)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse and run; exit status 1 with a one-line error for bad input, 130 on Ctrl-C."""
    args = parse_job(argv)
    return run_cli(lambda: _run(args), output=args.output)


def _run(args: EvalJob) -> int:
    result = evaluate(args)
    if int(os.environ.get("RANK", "0")) == 0:
        if args.output:
            from megatron_masklm.fileio import atomic_write_text

            atomic_write_text(args.output, json.dumps(result, indent=1) + "\n")
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
