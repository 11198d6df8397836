"""Both validation curves of the 30-step side-by-side (LM loss only vs with distillation) on one
PNG, from the two committed logs: python benchmarks/smollm2_cpu/distill_vs_lm/plot.py"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from run import plot  # noqa: E402


def records(name):
    with open(os.path.join(HERE, name)) as handle:
        return [json.loads(line) for line in handle]


if __name__ == "__main__":
    curves = {"MaskLLM, LM loss only": records("lm_only.jsonl"),
              "MaskLLM, LM loss + distillation 1.0": records("distilled.jsonl")}
    plot(curves, [], os.path.join(HERE, "val_ppl.png"),
         "SmolLM2-135M 2:4, full recipe's first 30 steps (122,880 tokens each)")
