"""Both LM-loss-only vs distillation comparisons as PNGs, from committed files only:

    python benchmarks/smollm2_cpu/distill_vs_lm/plot.py

* val_ppl.png: the 30-step side-by-side (same recipe, same 122,880 tokens; lm_only.jsonl and
  distilled.jsonl in this folder);
* full_runs.png: the three full runs whose masks are committed, ../full/ (400 steps of 2 x 512,
  hard sampling with tau 4 and kappa 100 held, distillation 1.0, bf16), ../full_soft/ (180
  steps of 8 x 512, the paper's soft sampling, LM loss only, bf16) and ../full_distilled/ (90
  steps of 8 x 512, soft sampling, distillation 1.0, fp32), each mask's EVAL-protocol result as
  a star and the one-shot rows of ../full/results.json as horizontal lines.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, BENCH)
from run import plot  # noqa: E402

FULL_RUNS = (("full",
              "MaskLLM, 400 steps, hard sampling (tau, kappa held) + distillation 1.0 (bf16)"),
             ("full_soft", "MaskLLM, 180 steps, soft sampling, LM loss only (bf16)"),
             ("full_distilled", "MaskLLM, 90 steps, soft sampling + distillation 1.0 (fp32)"))


def records(*parts):
    with open(os.path.join(*parts)) as handle:
        return [json.loads(line) for line in handle]


def full_runs():
    """(curves, rows) of the committed full runs: label -> log records, and the table rows (the
    learned ones labelled as their curves, so that plot() stars them)."""
    curves, rows = {}, []
    for folder, label in FULL_RUNS:
        with open(os.path.join(BENCH, folder, "results.json")) as handle:
            methods = json.load(handle)["methods"]
        learned = next(m for m in methods if m["method"].startswith("MaskLLM (learned"))
        curves[label] = records(BENCH, folder, "train_log.jsonl")
        rows.append({"method": label, "ppl": learned["eval_ppl"], "tokens": learned["train_tokens"]})
        if folder == "full":
            rows += [{"method": m["method"], "ppl": m["eval_ppl"]} for m in methods
                     if m["method"].startswith(("dense", "SparseGPT"))]
    return curves, rows


if __name__ == "__main__":
    curves = {"MaskLLM, LM loss only": records(HERE, "lm_only.jsonl"),
              "MaskLLM, LM loss + distillation 1.0": records(HERE, "distilled.jsonl")}
    plot(curves, [], os.path.join(HERE, "val_ppl.png"),
         "SmolLM2-135M 2:4, full recipe's first 30 steps (122,880 tokens each)")
    curves, rows = full_runs()
    plot(curves, rows, os.path.join(HERE, "full_runs.png"),
         "SmolLM2-135M 2:4, the three committed full runs (EVAL protocol as stars)")
