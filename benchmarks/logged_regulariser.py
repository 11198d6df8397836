"""Side by side: the logged regulariser term (lambda * sum ||W * M~||^2, computed at every
--log-interval) through soft_mask's autograd softmax vs expected_mask's in-place one, over the
210 masked linears of SmolLM2-135M's shapes (Megatron-fused qkv and gate/up), interleaved.

    python benchmarks/logged_regulariser.py [--repeats 3 --threads 2]
"""
import argparse
import statistics
import time

import torch

from megatron_masklm.masking import expected_mask, nm_candidates, soft_mask

SMOLLM2_LINEARS = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # per layer, 30 layers


def term(fn, layers, candidates):
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
    seconds = {"soft_mask": [], "expected_mask": []}
    values = {}
    for _ in range(args.repeats):
        for name, fn in (("soft_mask", soft_mask), ("expected_mask", expected_mask)):
            elapsed, values[name] = term(fn, layers, candidates)
            seconds[name].append(elapsed)
    slow, fast = (statistics.median(seconds[k]) for k in ("soft_mask", "expected_mask"))
    print(f"soft_mask {slow:.2f} s, expected_mask {fast:.2f} s (median of {args.repeats}): "
          f"{slow / fast:.2f}x; terms {values['soft_mask']:.6g} vs {values['expected_mask']:.6g}")


if __name__ == "__main__":
    main()
