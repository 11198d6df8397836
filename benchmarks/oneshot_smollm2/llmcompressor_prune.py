"""One-shot 2:4 pruning of SmolLM2-135M with llm-compressor (SparseGPT or Wanda), as a reference.

    /tmp/llmc_venv/bin/python benchmarks/oneshot_smollm2/llmcompressor_prune.py \
        --model /tmp/oneshot_bench/hf --calib-tokens /tmp/oneshot_bench/calib_tokens.pt \
        --method {sparsegpt,wanda} --output DIR [--dampening 0.01] [--limit-windows K]

llm-compressor is NOT a dependency of this project: run this script with a throwaway virtual
environment (the reference numbers in BENCHMARK.md used llm-compressor 0.14.0.1):

    python3.11 -m venv /tmp/llmc_venv
    /tmp/llmc_venv/bin/pip install torch==2.13.0       # first: the CPU wheel
    /tmp/llmc_venv/bin/pip install llmcompressor==0.14.0.1

What it does:
  1. loads the fp32 HF checkpoint written by assets.py (CPU, no hub access);
  2. wraps the calibration windows (calib_tokens.pt, LongTensor [n, 512]; the first K with
     --limit-windows) into a pre-tokenized ``datasets.Dataset`` (input_ids, attention_mask),
     which oneshot uses as is (no tokenization, no truncation, no shuffling);
  3. runs ``oneshot`` with SparseGPTModifier / WandaPruningModifier at sparsity 0.5, mask
     structure 2:4, on every q/k/v/o/gate/up/down projection of the decoder (lm_head ignored);
     only this call is timed (time.perf_counter);
  4. copies the pruned weights into a fresh, unpatched copy of the dense model and saves it
     with plain ``save_pretrained`` (dense fp32 safetensors, no compressed format, no
     quantization_config), plus the tokenizer files of --model, so that the project's own
     transformers loads it (ppl.py);
  5. re-reads the saved file and checks that every decoder linear weight is exactly 2:4 along
     the input dimension (at most 2 nonzeros in each group of 4 consecutive inputs).
The last line printed is JSON: {"method", "seconds", "windows", ...}.
"""
import os

# No hub access at all: set before transformers / huggingface_hub / datasets are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

SEQ_LEN = 512
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGETS = [r"re:.*self_attn\.(q|k|v|o)_proj$", r"re:.*mlp\.(gate|up|down)_proj$"]
LINEAR_WEIGHT = re.compile(
    r"^model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(PROJECTIONS) + r")\.weight$")
COPY_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "chat_template.jinja", "generation_config.json", "vocab.json", "merges.txt")


def calibration_dataset(calib_tokens: torch.Tensor):
    """A pre-tokenized datasets.Dataset: oneshot skips tokenization when input_ids exists."""
    from datasets import Dataset

    ids = calib_tokens.tolist()
    return Dataset.from_dict({"input_ids": ids,
                              "attention_mask": [[1] * len(row) for row in ids]})


def make_recipe(method: str, dampening: float):
    common = dict(sparsity=0.5, mask_structure="2:4", targets=TARGETS, ignore=["lm_head"])
    if method == "sparsegpt":
        from llmcompressor.modifiers.pruning import SparseGPTModifier

        return SparseGPTModifier(dampening_frac=dampening, **common)
    from llmcompressor.modifiers.pruning import WandaPruningModifier

    return WandaPruningModifier(**common)


def save_plain(pruned, model_dir: str, output: str) -> None:
    """Save the pruned weights as a plain HF checkpoint (no compression) + tokenizer files."""
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in pruned.state_dict().items()}
    result = fresh.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]
    unexpected = [k for k in result.unexpected_keys if k != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"pruned state dict mismatch: missing {missing}, unexpected {unexpected}")
    if getattr(fresh.config, "quantization_config", None) is not None:
        del fresh.config.quantization_config
    os.makedirs(output, exist_ok=True)
    fresh.save_pretrained(output, safe_serialization=True)
    for name in COPY_FILES:
        src = os.path.join(model_dir, name)
        if os.path.exists(src):
            shutil.copyfile(src, os.path.join(output, name))


def check_2of4(output: str) -> dict:
    """Re-read the saved safetensors: every decoder linear must have <= 2 nonzeros per group of 4
    consecutive inputs. Returns counts; raises if any layer fails or a layer is missing."""
    from safetensors import safe_open

    files = sorted(f for f in os.listdir(output) if f.endswith(".safetensors"))
    checked, failed, zeros, total = 0, [], 0, 0
    for name in files:
        with safe_open(os.path.join(output, name), framework="pt") as handle:
            for key in handle.keys():
                if not LINEAR_WEIGHT.match(key):
                    continue
                weight = handle.get_tensor(key)
                assert weight.dtype == torch.float32, (key, weight.dtype)
                groups = weight.reshape(weight.shape[0], -1, 4)
                if int((groups != 0).sum(-1).max()) > 2:
                    failed.append(key)
                zeros += int((weight == 0).sum())
                total += weight.numel()
                checked += 1
    return {"linears_checked": checked, "linears_2of4": checked - len(failed),
            "failed": failed, "sparsity": zeros / max(total, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="fp32 HF directory (assets.py: WORKDIR/hf)")
    parser.add_argument("--calib-tokens", required=True,
                        help="LongTensor [n, 512] (calib_tokens.pt)")
    parser.add_argument("--method", required=True, choices=["sparsegpt", "wanda"])
    parser.add_argument("--output", required=True, help="directory for the pruned HF model")
    parser.add_argument("--dampening", type=float, default=0.01, help="SparseGPT dampening_frac")
    parser.add_argument("--limit-windows", type=int, default=None,
                        help="use only the first K calibration windows (smoke tests)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    import llmcompressor
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    calib = torch.load(args.calib_tokens)
    if args.limit_windows is not None:
        calib = calib[:args.limit_windows]
    assert calib.dim() == 2 and calib.shape[1] == SEQ_LEN, calib.shape
    windows = int(calib.shape[0])

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    dataset = calibration_dataset(calib)
    recipe = make_recipe(args.method, args.dampening)

    start = time.perf_counter()
    oneshot(model=model, tokenizer=args.model, dataset=dataset, recipe=recipe,
            num_calibration_samples=windows, max_seq_length=SEQ_LEN,
            shuffle_calibration_samples=False, batch_size=1, output_dir=None)
    seconds = time.perf_counter() - start

    save_plain(model, args.model, args.output)
    check = check_2of4(args.output)
    print(f"[check] {check['linears_2of4']}/{check['linears_checked']} decoder linears exactly "
          f"2:4 along the input dim; zero fraction {check['sparsity']:.4f}", flush=True)
    if check["failed"] or check["linears_checked"] != 210:
        raise SystemExit(f"2:4 check failed: {check}")
    print(json.dumps({"method": args.method, "seconds": round(seconds, 2), "windows": windows,
                      "dampening": args.dampening if args.method == "sparsegpt" else None,
                      "linears_2of4": check["linears_2of4"], "sparsity": check["sparsity"],
                      "llmcompressor": llmcompressor.__version__, "output": args.output}))


if __name__ == "__main__":
    main()
