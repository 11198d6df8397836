"""Convert a Hugging Face checkpoint (directory or .gguf file) to a Megatron-Core dist checkpoint.

Families: LLaMA-2/3/3.1, SmolLM2, Mistral, Qwen2/2.5, Qwen3. The checkpoint is written as a
dist checkpoint with model_shape.json and the tokenizer alongside.

    python tools/convert_hf_to_megatron.py --load-dir HF_DIR_OR_GGUF --save-dir OUT \
        --target-tensor-parallel-size 2 [--target-pipeline-parallel-size 1] [--dtype bfloat16]
"""
import argparse
import sys

from megatron_masklm.cli_errors import refuse_overlap, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load-dir", required=True, help="HF checkpoint directory or .gguf file")
    parser.add_argument("--save-dir", required=True, help="output directory (must not exist)")
    parser.add_argument("--target-tensor-parallel-size", type=int, default=1)
    parser.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="weight dtype (default: the checkpoint's torch_dtype)")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                        help="pad the vocabulary to a multiple of this x TP (Megatron-LM's default)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --save-dir")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None) -> int:
    """Run the CLI; exit status 1 with a one-line error for bad input, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        refuse_overlap(inputs={"--load-dir": args.load_dir}, outputs={"--save-dir": args.save_dir})
        from megatron_masklm.convert import convert_hf_to_megatron

        out = convert_hf_to_megatron(
            args.load_dir, args.save_dir,
            tensor_model_parallel_size=args.target_tensor_parallel_size,
            pipeline_model_parallel_size=args.target_pipeline_parallel_size, dtype=args.dtype,
            make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
            overwrite=args.overwrite, progress=not args.no_progress)
        print(f"wrote {out}")
        return 0

    return run_cli(body, output=args.save_dir)


if __name__ == "__main__":  # required: the dist-checkpoint writer re-imports __main__
    sys.exit(main())
