"""Dense vs 2:4 semi-structured sparse time on one CUDA GPU (bf16): LLaMA-2 7B/13B linear GEMMs
at prefill and decode sizes, and optionally a 2:4 HF model; see megatron_masklm/hf/sparse_bench.py.

    python tools/bench_sparse.py                                   # GEMMs, 7b and 13b shapes
    python tools/bench_sparse.py --hf-dir hf/llama2-7b-2of4 --json # plus the exported model

Without a CUDA GPU of compute capability >= 8.0 it exits 2 with a message saying so. Bad input
is one line and exit status 1, Ctrl-C 130 (megatron_masklm/cli_errors.py's run_cli, in main).
"""
import sys

from megatron_masklm.hf.sparse_bench import main

if __name__ == "__main__":
    sys.exit(main())
