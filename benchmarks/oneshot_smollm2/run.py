"""One-shot 2:4 pruning of SmolLM2-135M: this project's tools/prune_oneshot.py side by side with
llm-compressor, EVAL perplexity of every result under ../shared/BENCHMARK.md's protocol.

    python benchmarks/oneshot_smollm2/run.py [--workdir /tmp/oneshot_bench] \
        [--llmc-python /tmp/llmc_venv/bin/python] [--methods magnitude,wanda,sparsegpt]

Needs the assets of assets.py (built here if missing) and, for the comparison, a throwaway venv
with llm-compressor (not a project dependency):

    python3.11 -m venv /tmp/llmc_venv
    /tmp/llmc_venv/bin/pip install torch==2.13.0          # first: the CPU wheel
    /tmp/llmc_venv/bin/pip install llmcompressor==0.14.0.1

Each pruning run and each perplexity evaluation is its own process, one after the other, with
2 torch threads, so the timings are measured side by side on the same machine state. Prune time
is the pruning call itself (llm-compressor: ``oneshot``; ours: calibration passes, statistics and
solves, as the tool reports it); our whole command (HF -> Megatron conversion, load, writing the
outputs) is reported too. Outputs: WORKDIR/results.json and WORKDIR/results.md.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import REPO, benchmark_env, run_json  # noqa: E402

REFERENCE_PPL = {  # ../shared/BENCHMARK.md
    ("dense", ""): 14.70, ("magnitude", ""): 2074, ("wanda", ""): 130.9,
    ("sparsegpt", "updated"): 55.67, ("sparsegpt", "mask only"): 84.41}


def _ppl(model_dir: str, assets: dict, env, workdir: str, name: str, limit) -> float:
    cmd = [sys.executable, os.path.join(HERE, "ppl.py"), "--model", model_dir,
           "--eval-tokens", assets["eval_tokens"]]
    if limit:
        cmd += ["--limit", str(limit)]
    result = run_json(cmd, os.path.join(workdir, f"ppl_{name}.log"), env)
    print(f"    EVAL PPL {name}: {result['ppl']:.2f} ({result['wall_s']} s)", flush=True)
    return result["ppl"]


def _exact_2of4(model_dir: str) -> bool:
    """At most 2 nonzeros in every group of 4 inputs of all 210 linears."""
    from megatron_masklm.hf import verify_nm_path

    report = verify_nm_path(model_dir, pattern="2:4")
    return report.ok and len(report.params) == 210


def _check_calibration(assets: dict) -> None:
    """The tool tokenizes train.txt itself: its windows must be assets.py's (transformers')."""
    import torch

    from megatron_masklm.data.calibration import text_windows
    from megatron_masklm.data.tokenizers import build_tokenizer

    tokenizer = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=assets["hf_dir"])
    ours = text_windows(assets["train_txt"], tokenizer, seq_length=512, num_samples=128)
    if not torch.equal(ours, torch.load(assets["calib_tokens"])):
        raise SystemExit("the tool's calibration windows differ from calib_tokens.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/oneshot_bench")
    parser.add_argument("--llmc-python", default="/tmp/llmc_venv/bin/python",
                        help="python of a venv with llm-compressor; '' skips the comparison")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first K EVAL windows only")
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)
    methods = args.methods.split(",")
    env = benchmark_env(threads=2)
    sys.path.insert(0, HERE)
    from assets import prepare

    assets = prepare(workdir)
    _check_calibration(assets)
    rows = []
    print("[dense]", flush=True)
    rows.append({"method": "dense", "variant": "", "implementation": "transformers",
                 "ppl": _ppl(assets["hf_dir"], assets, env, workdir, "dense", args.eval_limit)})
    for method in methods:
        out = os.path.join(workdir, f"ours_{method}")
        cmd = [sys.executable, os.path.join(REPO, "tools", "prune_oneshot.py"),
               "--hf-checkpoint", assets["hf_dir"], "--method", method,
               "--calib-text", assets["train_txt"], "--calib-samples", "128", "--seq-length", "512",
               "--output-mask", os.path.join(out, "prior.npz"),
               "--hf-masks", os.path.join(out, "hf_masks.npz"), "--save-hf", os.path.join(out, "hf"),
               "--overwrite", "--no-progress"]
        if method == "sparsegpt":
            cmd.append("--update-weights")
        os.makedirs(out, exist_ok=True)
        print(f"[ours {method}]", flush=True)
        result = run_json(cmd, os.path.join(workdir, f"ours_{method}.log"), env)
        print(f"    prune {result['prune_seconds']} s, command {result['wall_s']} s", flush=True)
        variant = "updated" if method == "sparsegpt" else ""
        rows.append({"method": method, "variant": variant, "implementation": "megatron_masklm",
                     "prune_s": result["prune_seconds"], "command_s": result["wall_s"],
                     "exact_2of4": _exact_2of4(os.path.join(out, "hf")),
                     "ppl": _ppl(os.path.join(out, "hf"), assets, env, workdir, f"ours_{method}",
                                 args.eval_limit)})
        if method == "sparsegpt":  # the prior MaskLLM starts from: its mask, original weights
            masked = os.path.join(out, "hf_mask_only")
            subprocess.run([sys.executable, os.path.join(REPO, "tools", "apply_masks.py"),
                            "--hf-dir", assets["hf_dir"], "--masks", os.path.join(out, "hf_masks.npz"),
                            "--output", masked, "--overwrite"], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL)
            rows.append({"method": method, "variant": "mask only", "implementation": "megatron_masklm",
                         "exact_2of4": _exact_2of4(masked),
                         "ppl": _ppl(masked, assets, env, workdir, "ours_sparsegpt_mask_only",
                                     args.eval_limit)})
        if args.llmc_python and method in ("wanda", "sparsegpt"):
            out = os.path.join(workdir, f"llmc_{method}")
            print(f"[llm-compressor {method}]", flush=True)
            result = run_json([args.llmc_python, os.path.join(HERE, "llmcompressor_prune.py"),
                                "--model", assets["hf_dir"], "--calib-tokens", assets["calib_tokens"],
                                "--method", method, "--output", out],
                               os.path.join(workdir, f"llmc_{method}.log"), env)
            print(f"    prune {result['seconds']:.1f} s, command {result['wall_s']} s", flush=True)
            rows.append({"method": method, "variant": variant, "implementation": "llm-compressor",
                         "prune_s": round(result["seconds"], 2), "command_s": result["wall_s"],
                         "exact_2of4": _exact_2of4(out),
                         "ppl": _ppl(out, assets, env, workdir, f"llmc_{method}", args.eval_limit)})
    for row in rows:
        row["reference_ppl"] = REFERENCE_PPL.get((row["method"], row["variant"]))
    ratios = {}
    for method in methods:
        ours = next((r for r in rows if r["method"] == method and r.get("prune_s")
                     and r["implementation"] == "megatron_masklm"), None)
        theirs = next((r for r in rows if r["method"] == method
                       and r["implementation"] == "llm-compressor"), None)
        if ours and theirs:
            ratios[method] = {"llmc_over_ours_prune": round(theirs["prune_s"] / ours["prune_s"], 2),
                              "llmc_over_ours_command": round(theirs["command_s"] / ours["command_s"], 2)}
    table = ["| method (2:4, 210 linears) | implementation | EVAL PPL | BENCHMARK.md | exact 2:4 | "
             "prune s | whole command s | training tokens |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["method"] + (f" ({r['variant']})" if r["variant"] else "")
        table.append(f"| {name} | {r['implementation']} | {r['ppl']:.2f} | "
                     f"{r['reference_ppl'] if r['reference_ppl'] is not None else '-'} | "
                     f"{r.get('exact_2of4', '-')} | {r.get('prune_s', '-')} | "
                     f"{r.get('command_s', '-')} | 0 |")
    table += ["", "Speed, llm-compressor time / ours (> 1: ours faster), same run: " +
              json.dumps(ratios)]
    text = "\n".join(table)
    print(text)
    meta = {"eval_windows": args.eval_limit or assets["eval_windows"], "calib_windows": 128,
            "threads": 2, "cpu_count": os.cpu_count()}
    with open(os.path.join(workdir, "results.json"), "w") as handle:
        json.dump({"rows": rows, "ratios": ratios, "meta": meta}, handle, indent=1)
    with open(os.path.join(workdir, "results.md"), "w") as handle:
        handle.write(text + "\n")


if __name__ == "__main__":
    main()
