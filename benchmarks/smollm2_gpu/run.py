"""SmolLM2-135M on one GPU: a short MaskLLM run under ../shared/BENCHMARK.md's protocol, from the
assets that benchmarks/smollm2_gpu/gpu_assets.py packed on the CPU machine (the GPU machine
reaches no network). tools/gpu_check.sh runs it as its last step.

    python benchmarks/smollm2_gpu/run.py --assets .gpu_assets --workdir gpu_check_out/smollm2

 1. join the carried parts (checksums checked); install the carried gguf wheel if gguf is missing;
 2. GGUF -> Megatron checkpoint (fp32, TP 1, tools/convert_hf_to_megatron.py), with the
    tokenizer TRAIN/EVAL were tokenized with;
 3. MaskLLM (python -m megatron_masklm.train, bf16): 2:4 masks learned on TRAIN from the CPU
    run's SparseGPT prior with frozen weights, validating on EVAL samples as it goes;
 4. EVAL perplexity (tools/eval_ppl.py --text eval.txt: 210 non-overlapping 512-token windows)
    of the dense checkpoint and of the learned masks, printed beside the CPU run's SparseGPT
    (mask only and with updated weights) and MaskLLM results carried in the manifest;
 5. unless --skip-sparse-bench: the learned 2:4 model exported to HF (--apply-masks) and timed
    dense vs semi-structured sparse (tools/bench_sparse.py --hf-dir).

Outputs in WORKDIR: results.md, results.json and every tool's log under logs/.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from gpu_assets import GGUF_NAME, AssetError, unpack  # noqa: E402
from benchlib import REPO, benchmark_env, results_table, run_json  # noqa: E402

BENCHMARK_MD = {  # ../shared/BENCHMARK.md's independent references, when the pack has none
    "dense": {"ppl": 14.70}, "sparsegpt_updated": {"ppl": 55.67},
    "sparsegpt_mask_only": {"ppl": 84.41}}
ROW_NAMES = {"sparsegpt_mask_only": "SparseGPT mask, original weights (the prior)",
             "sparsegpt_updated": "SparseGPT, updated weights",
             "maskllm_cpu": "MaskLLM (CPU run of benchmarks/smollm2_cpu)"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", default=os.path.join(REPO, ".gpu_assets"))
    parser.add_argument("--workdir", default=os.path.join(REPO, "gpu_check_out", "smollm2"))
    parser.add_argument("--train-iters", type=int, default=300)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--global-batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--eval-interval", type=int, default=100)
    parser.add_argument("--eval-windows", type=int, help="evaluate on the first K EVAL windows")
    parser.add_argument("--threads", type=int, default=8, help="CPU threads per process")
    parser.add_argument("--skip-sparse-bench", action="store_true")
    args = parser.parse_args(argv)
    if args.train_iters < 1 or args.global_batch_size % args.micro_batch_size:
        parser.error("--train-iters must be >= 1 and --global-batch-size a multiple of "
                     "--micro-batch-size")
    return args


def tool(script: str, *args, torchrun: bool = False):
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    target = ["-m", script] if script.startswith("megatron_masklm.") else [
        os.path.join(REPO, "tools", script)]
    return launcher + target + [str(a) for a in args]


def train_args(args, *, megatron: str, data: str, run_dir: str) -> list:
    """python -m megatron_masklm.train's arguments: 2:4 from the SparseGPT prior, bf16, frozen
    weights, TRAIN for training and EVAL samples for validation."""
    iters = args.train_iters
    return ["--pretrained-checkpoint", megatron, "--prior-mask", os.path.join(data, "prior.npz"),
            "--pattern", "2:4", "--tensor-model-parallel-size", 1, "--bf16",
            "--data-path", os.path.join(data, "data", "train_text_document"), "--split", "100,0,0",
            "--valid-data-path", os.path.join(data, "data", "eval_text_document"),
            "--micro-batch-size", args.micro_batch_size,
            "--global-batch-size", args.global_batch_size, "--seq-length", 512,
            "--train-iters", iters, "--lr", args.lr, "--min-lr", args.min_lr,
            "--eval-interval", min(args.eval_interval, iters), "--eval-iters", 2,
            "--log-interval", 10, "--save", run_dir, "--load", run_dir, "--save-interval", iters]


def eval_args(args, *, load: str, data: str, output: str) -> list:
    """tools/eval_ppl.py's arguments: BENCHMARK.md's protocol on the EVAL text."""
    extra = ["--max-windows", args.eval_windows] if args.eval_windows else []
    return ["--load", load, "--text", os.path.join(data, "eval.txt"), "--seq-length", 512,
            "--micro-batch-size", 16, "--no-progress", *extra, "--output", output]


def install_wheels(assets: str, workdir: str, env: dict) -> None:
    """The carried wheels (gguf), into WORKDIR/site, when this Python lacks gguf."""
    folder = os.path.join(assets, "wheels")
    wheels = sorted(os.path.join(folder, w) for w in os.listdir(folder)) if os.path.isdir(folder) else []
    if importlib.util.find_spec("gguf") is not None or not wheels:
        return
    site = os.path.join(workdir, "site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--no-compile", "--target", site, *wheels], check=True)
    env["PYTHONPATH"] = os.pathsep.join([site, env["PYTHONPATH"]])


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU (the CPU one is benchmarks/smollm2_cpu)",
              file=sys.stderr)
        return 2
    work = os.path.abspath(args.workdir)
    logs, data = os.path.join(work, "logs"), os.path.join(work, "assets")
    os.makedirs(logs, exist_ok=True)
    started = time.perf_counter()
    try:
        manifest = unpack(args.assets, data)
    except AssetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    env = benchmark_env(threads=args.threads)
    install_wheels(data, work, env)

    def run(name, cmd):
        print(f"[{name}]", flush=True)
        return run_json(cmd, os.path.join(logs, f"{name}.log"), env)

    megatron, run_dir = os.path.join(work, "megatron"), os.path.join(work, "maskllm")
    converted = run("convert", tool(
        "convert_hf_to_megatron.py", "--load-dir", os.path.join(data, GGUF_NAME), "--save-dir",
        megatron, "--target-tensor-parallel-size", 1, "--dtype", "float32", "--overwrite",
        "--no-progress"))
    for name in os.listdir(os.path.join(data, "tokenizer")):  # the data's tokenizer, exactly
        with open(os.path.join(data, "tokenizer", name), "rb") as src, \
                open(os.path.join(megatron, "tokenizer", name), "wb") as dst:
            dst.write(src.read())

    iters = args.train_iters
    trained = run("train", tool("megatron_masklm.train", *train_args(
        args, megatron=megatron, data=data, run_dir=run_dir), torchrun=True))
    from megatron_masklm.training.plot import read_log

    records = read_log(os.path.join(run_dir, "logs", "train_log.jsonl"))
    train = [r for r in records if r["kind"] == "train"]
    seconds, previous = 0.0, 0
    for record in train:  # each record averages the iterations since the previous one
        seconds += record["step_time_s"] * (record["iteration"] - previous)
        previous = record["iteration"]

    def evaluate(name, load):
        return run(f"eval_{name}", tool("eval_ppl.py", *eval_args(
            args, load=load, data=data, output=os.path.join(work, f"eval_{name}.json"))))

    dense, learned = evaluate("dense", megatron), evaluate("maskllm", run_dir)
    references = manifest.get("references") or {}
    source = "CPU run (carried)" if references else "BENCHMARK.md"
    references = references or BENCHMARK_MD
    rows = [{"method": "dense (dequantised Q4_1), fp32", "where": "GPU, this run",
             "ppl": dense["ppl"], "exact": None, "wall_s": None, "tokens": 0}]
    for key in ("sparsegpt_mask_only", "sparsegpt_updated", "maskllm_cpu"):
        if key in references:
            rows.append({"method": ROW_NAMES[key], "where": source, "ppl": references[key]["ppl"],
                         "exact": None, "wall_s": None,
                         "tokens": references[key].get("tokens") or 0})
    rows.append({"method": f"MaskLLM, bf16, {iters} iterations (SparseGPT prior)",
                 "where": "GPU, this run", "ppl": learned["ppl"], "exact": learned["exact_nm"],
                 "wall_s": round(seconds, 1), "tokens": train[-1]["tokens"]})
    summary = {"rows": rows, "eval_windows": learned["windows"], "references_from": source,
               "train": {"iterations": train[-1]["iteration"], "tokens": train[-1]["tokens"],
                         "seconds": round(seconds, 1), "tokens_per_s": train[-1]["tokens"] / seconds,
                         "peak_memory_bytes": max(r["peak_memory_bytes"] for r in train),
                         "command_wall_s": trained["wall_s"]},
               "convert_wall_s": converted["wall_s"],
               "settings": vars(args), "pack_id": manifest["pack_id"]}
    lines = [results_table(rows)]
    sgpt = references.get("sparsegpt_updated", {}).get("ppl")
    if sgpt:
        gap = (sgpt - learned["ppl"]) / (sgpt - dense["ppl"])
        summary["gap_closed_vs_sparsegpt"] = gap
        lines.append(f"SparseGPT-to-dense gap closed by the learned mask: {100 * gap:.1f}% "
                     f"(SparseGPT {sgpt:.2f}, MaskLLM {learned['ppl']:.2f}, dense {dense['ppl']:.2f})")
    lines.append(f"EVAL: {learned['windows']} windows x 512 tokens; mask training "
                 f"{summary['train']['tokens']:,} tokens at "
                 f"{summary['train']['tokens_per_s']:,.0f} tokens/s, peak "
                 f"{summary['train']['peak_memory_bytes'] / 2**30:.1f} GiB")
    if not args.skip_sparse_bench:
        summary["sparse_model"] = sparse_bench(run_dir, work, run)
        from sparse_speed import format_model_table  # benchmarks/, on the path for benchlib

        lines.append(format_model_table(summary["sparse_model"]["model"]))
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(work, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    with open(os.path.join(work, "results.md"), "w") as handle:
        handle.write(text + "\n")
    return 0


def sparse_bench(run_dir: str, work: str, run) -> dict:
    """Export the learned 2:4 model to HF and time it dense vs semi-structured."""
    hf = os.path.join(work, "hf_2of4")
    run("export_hf", tool("convert_megatron_to_hf.py", "--load-dir", run_dir, "--save-dir", hf,
                          "--apply-masks", "--dtype", "bfloat16", "--overwrite"))
    output = os.path.join(work, "sparse_model.json")
    run("bench_sparse", tool("bench_sparse.py", "--hf-dir", hf, "--no-gemm", "--prefill",
                             "512,2048,8192", "--decode", "1,8,32", "--output", output, "--json"))
    with open(output) as handle:
        return json.load(handle)


if __name__ == "__main__":
    sys.exit(main())
