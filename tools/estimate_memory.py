"""Estimate the GPU memory of MaskLLM mask training per GPU: frozen weights, mask logits,
gradient buffers, optimizer states and saved mask tensors (exact), activations (an estimate).

    python tools/estimate_memory.py --model llama2-7b --tensor-model-parallel-size 8 \
        --data-parallel-size 8 --bf16 --sequence-parallel
    python tools/estimate_memory.py --config examples/configs/llama2_13b.yaml \
        --data-parallel-size 8 --json

``--help`` lists every option; the formulas and worked examples are in megatron_masklm/training/memory.py.
"""
import sys

from megatron_masklm.cli_errors import run_cli
from megatron_masklm.training.memory import main

if __name__ == "__main__":
    sys.exit(run_cli(main))  # an unreadable --config, Ctrl-C: one line, as every tool
