"""The distillation loss at Gemma 3 270M's output size, before and after the chunked KL, side by
side: the output layer (hidden 640 -> 262,144 tokens, bf16) for the student and the teacher,
the KL, and the backward to the hidden states, on 2 x 512 tokens.

    python benchmarks/distill_kl_gemma.py --before COMMIT [--repeats 5] [--tokens 1024]

``--before`` names the commit whose ``megatron_masklm/training/distillation.py`` is the "before"
(read with ``git show``; e.g. 64e836d, the last one that kept two [tokens x V] fp32
log-softmaxes for the backward). Times: interleaved repeats in one process, medians after one
warm-up each. Peak memory: each variant once in a fresh subprocess (ru_maxrss of that process,
minus its RSS before the step), so one variant's allocations do not hide the other's.
"""
import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN, VOCAB = 640, 262_144  # Gemma 3 270M


def load_variant(name: str, before: str):
    """``vocab_parallel_kl`` of this checkout ("after") or of commit ``before``."""
    if name == "after":
        from megatron_masklm.training.distillation import vocab_parallel_kl

        return vocab_parallel_kl
    source = subprocess.run(["git", "show", f"{before}:megatron_masklm/training/distillation.py"],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "distillation_before.py")
    with open(path, "w") as handle:
        handle.write(source)
    spec = importlib.util.spec_from_file_location("distillation_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.vocab_parallel_kl


def make_inputs(tokens: int, dtype: torch.dtype):
    torch.manual_seed(0)
    hidden = torch.randn(tokens, HIDDEN).to(dtype)
    weight = torch.randn(VOCAB, HIDDEN) * HIDDEN ** -0.5
    teacher_weight = (weight + 0.02 * torch.randn(VOCAB, HIDDEN)).to(dtype)
    return hidden, weight.to(dtype), teacher_weight


def step(kl_fn, hidden, weight, teacher_weight):
    """Teacher logits (no grad), student logits, KL, backward to the hidden states: the part of
    a distilled frozen-weight step that scales with the vocabulary."""
    with torch.no_grad():
        teacher = torch.nn.functional.linear(hidden, teacher_weight)
    student_in = hidden.detach().requires_grad_()
    logits = torch.nn.functional.linear(student_in, weight)
    loss = kl_fn(logits, teacher, temperature=1.0, vocab_size=VOCAB).mean()
    loss.backward()
    return loss.item(), student_in.grad


def peak_child(variant: str, before: str, tokens: int, dtype: torch.dtype) -> dict:
    """One step of ``variant`` in this process (called as a subprocess): its RSS growth."""
    kl_fn = load_variant(variant, before)
    inputs = make_inputs(tokens, dtype)
    base = _rss_kib()
    loss, _ = step(kl_fn, *inputs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "loss": loss, "peak_growth_mib": (peak - base) / 1024}


def _rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="commit of the 'before' distillation.py")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--peak-child", choices=("before", "after"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.peak_child:
        print(json.dumps(peak_child(args.peak_child, args.before, args.tokens, dtype)))
        return

    variants = {name: load_variant(name, args.before) for name in ("before", "after")}
    inputs = make_inputs(args.tokens, dtype)
    results = {name: step(fn, *inputs) for name, fn in variants.items()}  # warm-up, and outputs
    (loss_b, grad_b), (loss_a, grad_a) = results["before"], results["after"]
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            step(fn, *inputs)
            times[name].append(time.perf_counter() - start)
    peaks = {}
    for name in variants:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--before", args.before,
                              "--tokens", str(args.tokens), "--threads", str(args.threads),
                              "--dtype", args.dtype, "--peak-child", name], cwd=REPO, check=True, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": REPO})
        peaks[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_mib"]
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.tokens} tokens x {VOCAB:,} vocabulary, hidden {HIDDEN}, {args.dtype} logits, "
          f"{args.threads} threads; {args.repeats} interleaved repeats after a warm-up")
    for name in variants:
        print(f"{name:6s}: median {median[name]:.2f} s (all: "
              f"{', '.join(f'{t:.2f}' for t in times[name])}), peak RSS growth {peaks[name]:,.0f} MiB")
    print(f"after / before: time {median['after'] / median['before']:.2f}x, "
          f"peak memory {peaks['after'] / peaks['before']:.2f}x; loss {loss_a:.6f} vs {loss_b:.6f}, "
          f"max |grad difference| {(grad_a.float() - grad_b.float()).abs().max().item():.3g}")
    print(json.dumps({"median_s": median, "times_s": times, "peak_growth_mib": peaks,
                      "tokens": args.tokens, "threads": args.threads, "before": args.before,
                      "dtype": args.dtype}))


if __name__ == "__main__":
    main()
