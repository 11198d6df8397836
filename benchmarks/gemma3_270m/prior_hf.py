"""The SparseGPT prior (global Megatron names) as an HF-named mask file, to score it on the
dense HF model: python prior_hf.py MEGATRON_CKPT PRIOR.npz OUT.npz HF_VOCAB"""
import json
import os
import sys

from megatron_masklm.architecture import ModelShape
from megatron_masklm.convert.megatron_to_hf import to_hf_tensors
from megatron_masklm.masking import load_masks_npz, save_masks_npz
from megatron_masklm.training.memory import Setup
from megatron_masklm.training.memory_stages import layer_masked_linears


def main(checkpoint, prior, output, hf_vocab):
    shape = ModelShape.from_dict(json.load(open(os.path.join(checkpoint, "model_shape.json"))))
    shapes = {f"decoder.layers.{i}.{linear.name}.weight": (linear.rows, linear.inputs)
              for i in range(shape.num_layers) for linear in layer_masked_linears(shape, Setup())}
    masks = to_hf_tensors(load_masks_npz(prior, shapes), shape, hf_vocab_size=int(hf_vocab),
                          masked_only=True)
    save_masks_npz(output, masks)


if __name__ == "__main__":
    main(*sys.argv[1:5])
