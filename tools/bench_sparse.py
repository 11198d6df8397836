"""Dense vs 2:4 semi-structured sparse time on one CUDA GPU (bf16): LLaMA-2 7B/13B linear GEMMs
at prefill and decode sizes, and optionally a 2:4 HF model; the measurements are
benchmarks/sparse_speed.py's.

    python tools/bench_sparse.py                                   # GEMMs, 7b and 13b shapes
    python tools/bench_sparse.py --hf-dir hf/llama2-7b-2of4 --json # plus the exported model

Without a CUDA GPU of compute capability >= 8.0 it exits 2 with a message saying so. Bad input
is one line and exit status 1, Ctrl-C 130 (megatron_masklm/cli_errors.py's run_cli, in main).
"""
import argparse
import dataclasses
import json
import os
import sys
from typing import List, Optional, Sequence

from megatron_masklm.cli_errors import run_cli

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:  # the benchmark is the checkout's, not the package's
    sys.path.insert(0, BENCHMARKS)
import sparse_speed  # noqa: E402
from sparse_speed import (SparseBench, SparseBenchError, format_gemm_table,  # noqa: E402
                          format_model_table)


def _sizes(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be >= 1")
    return values


def _models(text: str) -> List[str]:
    values = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in sparse_speed.LLAMA2]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown model(s) {bad}: choose from "
                                         f"{sorted(sparse_speed.LLAMA2)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags: :class:`SparseBench`'s fields, and the outputs."""
    parser = argparse.ArgumentParser(
        description="Dense vs 2:4 semi-structured sparse GEMM and model time (bf16, one CUDA GPU "
                    "with compute capability >= 8.0); prints dense time / sparse time.",
        epilog="Decode sizes are padded with zero rows to the kernel's token multiple (8 for "
               "bf16); see benchmarks/sparse_speed.py.")
    parser.add_argument("--models", type=_models, default=list(sparse_speed.LLAMA2),
                        help="LLaMA-2 shapes for the GEMMs (default: 7b,13b)")
    parser.add_argument("--prefill", type=_sizes, default=list(sparse_speed.PREFILL_TOKENS),
                        help="prefill token counts (default: 512,1024,2048,4096,8192)")
    parser.add_argument("--decode", type=_sizes, default=list(sparse_speed.DECODE_TOKENS),
                        help="decode token counts / batch sizes (default: 1,2,4,8,16,32)")
    parser.add_argument("--no-gemm", action="store_true", help="skip the GEMMs (model only)")
    parser.add_argument("--hf-dir", help="a HF LLaMA directory with 2:4 decoder linears: also "
                                         "time the model dense vs semi-structured")
    parser.add_argument("--context", type=int, default=128,
                        help="KV-cache length before the timed decode step (default 128)")
    parser.add_argument("--backend", choices=sparse_speed.BACKENDS, default="auto",
                        help="auto: cuSPARSELt when torch has it, else CUTLASS")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first (default 10)")
    parser.add_argument("--repeats", type=int, default=50, help="timed GEMM calls (default 50)")
    parser.add_argument("--model-repeats", type=int, default=10,
                        help="timed model calls (default 10; 3 warm-ups)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--output", help="also write the JSON result to this file")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line, checked (a usage error exits 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_gemm and not args.hf_dir:
        parser.error("--no-gemm leaves nothing to measure without --hf-dir")
    for name in ("warmup", "repeats", "model_repeats", "context"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is too small")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI: exit status 2 without a capable GPU, 1 with a one-line error for bad input
    (``cli_errors.run_cli``), 130 on Ctrl-C."""
    args = parse_args(argv)
    return run_cli(lambda: _run(args), output=args.output)


def _run(args: argparse.Namespace) -> int:
    from megatron_masklm.fileio import atomic_write_text, check_writable

    if args.output:
        check_writable(args.output)  # before the benchmark, not after it
    bench = SparseBench(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SparseBench)})
    try:
        result = sparse_speed.run(bench)
    except SparseBenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.output:
        atomic_write_text(args.output, json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
        return 0
    print(result["device"])
    if "gemm" in result:
        print(format_gemm_table(result["gemm"], backend=result["backend"]))
        worst = max(r["max_rel_err"] for r in result["gemm"])
        print(f"sparse vs dense output, largest |error| / max |output|: {worst:.2g}")
    if "model" in result:
        print(format_model_table(result["model"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
