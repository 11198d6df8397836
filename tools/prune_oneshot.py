"""One-shot N:M pruning (magnitude, Wanda, SparseGPT) of a Megatron checkpoint at any TP, or of
a HF checkpoint; writes the masks as a prior that training's --prior-mask reads.

    torchrun --nproc-per-node 2 tools/prune_oneshot.py --load CKPT --method sparsegpt \
        --calib-text train.txt --output-mask prior.npz
    python tools/prune_oneshot.py --hf-checkpoint HF_DIR --method wanda --calib-text train.txt \
        --output-mask prior.npz --hf-masks hf_masks.npz

``--help`` lists every option; see megatron_masklm/oneshot/checkpoint.py.
"""
import sys

from megatron_masklm.oneshot.checkpoint import main

if __name__ == "__main__":  # required: the dist-checkpoint writer re-imports __main__
    sys.exit(main())
