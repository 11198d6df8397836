"""Estimate the GPU memory of MaskLLM mask training per GPU: frozen weights, mask logits,
gradient buffers, optimizer states and saved mask tensors (exact), activations (an estimate).

    python tools/estimate_memory.py --model llama2-7b --tensor-model-parallel-size 8 \
        --data-parallel-size 8 --bf16 --sequence-parallel
    python tools/estimate_memory.py --config examples/configs/llama2_13b.yaml \
        --data-parallel-size 8 --json

``--help`` lists every option; the formulas and worked examples are in megatron_masklm/training/memory.py.
"""
import argparse
import json
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from megatron_masklm.architecture import FAMILIES, ModelShape
from megatron_masklm.cli_errors import run_cli
from megatron_masklm.training.memory import (ATTENTION_CHOICES, PRESET_OPTIONS, PRESETS,
                                             RECOMPUTE_CHOICES, Setup, estimate, format_table,
                                             load_yaml, shape_and_setup)


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags: Megatron-LM's names, as the training CLI uses them."""
    parser = argparse.ArgumentParser(
        prog="estimate_memory.py",
        description="Estimate the GPU memory of MaskLLM mask training (per GPU, per pipeline "
                    "stage): frozen weights, mask logits, gradient buffers, optimizer states, "
                    "saved mask tensors (exact) and activations (an estimate).",
        epilog="Precedence: --model preset < --config YAML < flags. Worked examples: LLaMA-2 "
               "7B and 13B at TP 8, DP 8, bf16, micro-batch 1 x 4096, sequence parallel (the "
               "paper's 64 A100-80GB) need about 20.6 and 39.1 GiB per GPU: both fit. The "
               "commands, their full output and every formula: megatron_masklm/training/memory.py.",
        argument_default=argparse.SUPPRESS)
    source = parser.add_argument_group("model")
    source.add_argument("--model", choices=sorted(PRESETS), help="a preset shape")
    source.add_argument("--config", help="training YAML (examples/configs/*.yaml keys)")
    source.add_argument("--model-family", dest="family", choices=FAMILIES)
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                 "num_query_groups", "kv_channels", "max_position_embeddings"):
        source.add_argument("--" + name.replace("_", "-"), dest=name, type=int)
    for name in ("gated_linear_unit", "add_bias_linear", "add_qkv_bias", "qk_layernorm"):
        source.add_argument("--" + name.replace("_", "-"), dest=name,
                            action=argparse.BooleanOptionalAction,
                            help="default: the family's")
    source.add_argument("--vocab-size", dest="vocab_size", type=int,
                        help="the tokenizer's vocabulary (padded as Megatron-LM pads it)")
    source.add_argument("--tied-embeddings", dest="tied_embeddings",
                        action=argparse.BooleanOptionalAction)
    source.add_argument("--make-vocab-size-divisible-by", dest="make_vocab_size_divisible_by",
                        type=int, help="pad the vocabulary to a multiple of this x TP "
                                       "(default 128; 1 leaves --vocab-size as it is)")
    par = parser.add_argument_group("parallelism")
    par.add_argument("--tensor-model-parallel-size", "--tp", dest="tensor_model_parallel_size",
                     type=int, help="default 1")
    par.add_argument("--pipeline-model-parallel-size", "--pp",
                     dest="pipeline_model_parallel_size", type=int, help="default 1")
    par.add_argument("--data-parallel-size", "--dp", dest="data_parallel_size", type=int,
                     help="default 1")
    par.add_argument("--sequence-parallel", dest="sequence_parallel",
                     action=argparse.BooleanOptionalAction, help="needs TP > 1 (default off)")
    par.add_argument("--use-distributed-optimizer", dest="use_distributed_optimizer",
                     action=argparse.BooleanOptionalAction,
                     help="shard Adam state over DP (default on, as training)")
    par.add_argument("--recompute-granularity", dest="recompute_granularity",
                     choices=RECOMPUTE_CHOICES, help="activation recomputation (default none)")
    run = parser.add_argument_group("training")
    run.add_argument("--pattern", help="N:M (default 2:4)")
    run.add_argument("--bf16", dest="bf16", action=argparse.BooleanOptionalAction,
                     help="bf16 weights and activations (default fp32)")
    run.add_argument("--micro-batch-size", dest="micro_batch_size", type=int, help="default 1")
    run.add_argument("--seq-length", dest="seq_length", type=int, help="default 4096")
    run.add_argument("--global-batch-size", dest="global_batch_size", type=int,
                     help="bounds the micro-batches a pipeline stage holds (default: >= PP)")
    run.add_argument("--train-weights", dest="train_weights", action=argparse.BooleanOptionalAction,
                     help="joint training: weights get gradients and Adam state too")
    run.add_argument("--fixed-mask", dest="fixed_mask", action=argparse.BooleanOptionalAction,
                     help="weight recovery under a fixed mask (training's --fixed-mask FILE): "
                          "the weights train, the logits do not")
    run.add_argument("--distill-weight", dest="distill_weight", type=float,
                     help="> 0 with --fixed-mask counts the teacher's frozen copy of the weights")
    run.add_argument("--hard-sampling", dest="hard_sampling",
                     action=argparse.BooleanOptionalAction, help="straight-through hard masks")
    run.add_argument("--attention", dest="attention", choices=ATTENTION_CHOICES,
                     help="flash: Transformer Engine's fused attention (default); local: "
                          "Megatron's unfused local spec (CPU, no TE), which keeps the scores")
    out = parser.add_argument_group("output")
    out.add_argument("--gpu-memory-gib", dest="gpu_memory_gib", type=float,
                     help="memory of one GPU, for the verdict (default 80)")
    out.add_argument("--json", dest="json", action="store_true", help="print JSON instead")
    return parser


def resolve(args: Dict[str, Any]) -> Tuple[ModelShape, Setup]:
    """ModelShape and Setup from parsed flags (preset < YAML < flags)."""
    options: Dict[str, Any] = {}
    if args.get("model"):
        options.update(PRESET_OPTIONS[args["model"]])
    if args.get("config"):
        options.update(load_yaml(args["config"]))
    options.update({key: value for key, value in args.items()
                    if key not in ("model", "config", "json", "gpu_memory_gib")})
    return shape_and_setup(options)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the CLI; exit status 1 with a one-line error for a setting that cannot work."""
    args = vars(build_parser().parse_args(argv))
    try:
        arch, setup = resolve(args)
        result = estimate(arch, setup, gpu_memory_gib=args.get("gpu_memory_gib", 80.0))
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.get("json"):
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))  # an unreadable --config, Ctrl-C: one line, as every tool
