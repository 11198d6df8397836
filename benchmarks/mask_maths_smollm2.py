"""The mask maths a training step pays per micro-batch, whatever its tokens, over the 210 masked
linears of SmolLM2-135M's shapes (Megatron-fused qkv and gate/up, 106 M weights, 159 M logits):

* Gumbel noise, the masked-weight forward (W * M~) and its backward to the logits;
* the logged regulariser term (lambda * sum ||W * M~||^2, computed at every --log-interval)
  through soft_mask's autograd softmax vs expected_mask's in-place one, interleaved.

    python benchmarks/mask_maths_smollm2.py [--repeats 3 --threads 2]
"""
import argparse
import statistics
import time

import torch

from megatron_masklm.masking import (expected_mask, gumbel_noise, masked_weight, nm_candidates,
                                     soft_mask)

SMOLLM2_LINEARS = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # per layer, 30 layers


def micro_batch_mask_maths(layers, candidates):
    """Seconds of (noise, forward, backward) over every layer, as one micro-batch pays them."""
    noise_s = forward_s = backward_s = 0.0
    for weight, logits in layers:
        logits.requires_grad_(True)
        started = time.perf_counter()
        noise = gumbel_noise(logits.shape)
        drawn = time.perf_counter()
        masked = masked_weight(weight, logits, candidates, temperature=2.0, logit_scale=200.0,
                               noise_RGC=noise, reg_weight=1e-5)
        formed = time.perf_counter()
        masked.backward(torch.full_like(masked, 1e-3))
        done = time.perf_counter()
        logits.grad = None
        logits.requires_grad_(False)
        noise_s, forward_s, backward_s = (noise_s + drawn - started, forward_s + formed - drawn,
                                          backward_s + done - formed)
    return noise_s, forward_s, backward_s


def regulariser_term(fn, layers, candidates):
    started, total = time.perf_counter(), 0.0
    with torch.no_grad():
        for weight, logits in layers:
            mask = fn(logits, candidates, temperature=2.0, logit_scale=200.0)
            total += float((weight * mask.reshape(weight.shape)).pow(2).sum())
    return time.perf_counter() - started, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    candidates = nm_candidates(2, 4)
    layers = [(0.02 * torch.randn(r, i), 0.01 * torch.randn(r, i // 4, len(candidates)))
              for _ in range(30) for r, i in SMOLLM2_LINEARS]
    step, seconds, values = [], {"soft_mask": [], "expected_mask": []}, {}
    for _ in range(args.repeats):
        step.append(micro_batch_mask_maths(layers, candidates))
        for name, fn in (("soft_mask", soft_mask), ("expected_mask", expected_mask)):
            elapsed, values[name] = regulariser_term(fn, layers, candidates)
            seconds[name].append(elapsed)
    noise_s, forward_s, backward_s = (statistics.median(part) for part in zip(*step))
    print(f"per micro-batch (median of {args.repeats}): Gumbel noise {noise_s:.2f} s, masked-weight "
          f"forward {forward_s:.2f} s, backward to the logits {backward_s:.2f} s")
    slow, fast = (statistics.median(seconds[k]) for k in ("soft_mask", "expected_mask"))
    print(f"logged regulariser: soft_mask {slow:.2f} s, expected_mask {fast:.2f} s: "
          f"{slow / fast:.2f}x; terms {values['soft_mask']:.6g} vs {values['expected_mask']:.6g}")


if __name__ == "__main__":
    main()
