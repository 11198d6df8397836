"""Perplexity of a Megatron checkpoint (any TP) or a HF directory; see megatron_masklm/evaluation/perplexity.py.

    torchrun --nproc-per-node 2 tools/eval_ppl.py --load runs/smollm2 --text eval.txt
    python tools/eval_ppl.py --hf-dir hf/smollm2 --masks masks.npz --text eval.txt --output ppl.json
"""
import sys

from megatron_masklm.evaluation.perplexity import main

if __name__ == "__main__":
    sys.exit(main())
