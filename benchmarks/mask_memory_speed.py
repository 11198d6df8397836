"""Side-by-side: the fused masked-weight function vs the same maths in plain autograd.

Measures, for one weight, the bytes autograd keeps for backward (beyond the weight itself) and
the forward+backward time of forming W * M~ with Gumbel noise, interleaved over repeats so
machine noise hits both alike. Run: python benchmarks/mask_memory_speed.py [--rows R --cols I]
"""
import argparse
import statistics
import time

import torch

from megatron_masklm.masking import gumbel_noise, masked_weight, nm_candidates, soft_mask


def saved_bytes(fn, exclude):
    """Bytes of the tensors autograd saves while running ``fn`` (parameters excluded)."""
    seen = {}

    def pack(tensor):
        if all(tensor.data_ptr() != t.data_ptr() for t in exclude):
            seen[(tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, sum(seen.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--cols", type=int, default=2048)
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    n, m = (int(v) for v in args.pattern.split(":"))
    torch.manual_seed(0)
    candidates = nm_candidates(n, m)
    weight = torch.randn(args.rows, args.cols).to(getattr(torch, args.dtype))
    logits = (torch.randn(args.rows, args.cols // m, candidates.shape[0]) * 0.01).requires_grad_(True)
    noise = gumbel_noise(logits.shape)
    grad = torch.randn_like(weight)
    kwargs = dict(temperature=2.0, logit_scale=100.0)

    def fused():
        return masked_weight(weight, logits, candidates, noise_RGC=noise, reg_weight=1e-5, **kwargs)

    def plain():
        mask = soft_mask(logits, candidates, noise_RGC=noise, **kwargs).reshape(weight.shape)
        out = weight * mask.to(weight.dtype)
        reg = -1e-5 * (weight.float() * mask).pow(2).sum()  # same regulariser, as a loss term
        return out, reg

    variants = {"fused": fused, "plain autograd": plain}
    exclude = (weight, logits, noise, candidates)
    memory, times = {}, {name: [] for name in variants}
    for name, fn in variants.items():
        _, memory[name] = saved_bytes(fn, exclude)
    for _ in range(args.repeats):
        for name, fn in variants.items():
            logits.grad = None
            start = time.perf_counter()
            out = fn()
            if isinstance(out, tuple):
                torch.autograd.backward([out[0], out[1]], [grad, torch.ones(())])
            else:
                out.backward(grad)
            times[name].append(time.perf_counter() - start)
    numel = weight.numel()
    print(f"weight {args.rows}x{args.cols} {args.dtype}, {args.pattern}, {args.repeats} interleaved repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"{'variant':<16}{'saved B/weight':>16}{'fwd+bwd ms (median)':>22}")
    for name in variants:
        print(f"{name:<16}{memory[name] / numel:>16.2f}{1e3 * statistics.median(times[name]):>22.1f}")
    ratio_mem = memory["fused"] / memory["plain autograd"]
    ratio_time = statistics.median(times["fused"]) / statistics.median(times["plain autograd"])
    print(f"fused / plain: saved bytes {ratio_mem:.2f}x, time {ratio_time:.2f}x")


if __name__ == "__main__":
    main()
