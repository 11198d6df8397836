"""Peak memory of HF -> Megatron conversion vs the model and its largest tensor.

Builds a random LLaMA-shaped HF checkpoint (default: 12 layers, hidden 1024, FFN 2816, vocab
32000, fp32, about 0.75 GB), converts it in a fresh process and samples that process's
anonymous resident memory (RssAnon: what the process itself allocated; the memory-mapped
scratch and checkpoint files are page cache the kernel can drop) every 5 ms.

    python benchmarks/convert_memory.py [--layers 12 --hidden 1024 --ffn 2816 --vocab 32000]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time


def _rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as work:
        hf = os.path.join(work, "hf")
        os.makedirs(hf)
        h, f, v = args.hidden, args.ffn, args.vocab
        state = {"model.embed_tokens.weight": torch.randn(v, h), "model.norm.weight": torch.ones(h),
                 "lm_head.weight": torch.randn(v, h)}
        for i in range(args.layers):
            p = f"model.layers.{i}."
            state.update({p + "input_layernorm.weight": torch.ones(h),
                          p + "post_attention_layernorm.weight": torch.ones(h),
                          p + "self_attn.q_proj.weight": torch.randn(h, h),
                          p + "self_attn.k_proj.weight": torch.randn(h // 4, h),
                          p + "self_attn.v_proj.weight": torch.randn(h // 4, h),
                          p + "self_attn.o_proj.weight": torch.randn(h, h),
                          p + "mlp.gate_proj.weight": torch.randn(f, h),
                          p + "mlp.up_proj.weight": torch.randn(f, h),
                          p + "mlp.down_proj.weight": torch.randn(h, f)})
        save_file(state, os.path.join(hf, "model.safetensors"), metadata={"format": "pt"})
        import json
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
                   "intermediate_size": f, "num_hidden_layers": args.layers,
                   "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": v,
                   "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "float32"},
                  open(os.path.join(hf, "config.json"), "w"))
        total = sum(t.numel() * 4 for t in state.values())
        largest = max(t.numel() * 4 for t in state.values())
        del state
        script = ("import sys; from megatron_masklm.convert import convert_hf_to_megatron\n"
                  "if __name__ == '__main__':\n"
                  f"    convert_hf_to_megatron({hf!r}, {os.path.join(work, 'mg')!r}, progress=False)\n")
        path = os.path.join(work, "run.py")
        open(path, "w").write(script)
        base = os.path.join(work, "imports.py")  # the same process without the conversion
        open(base, "w").write(script.replace(", progress=False)", ")").replace(
            "    convert_hf_to_megatron(", "    print(").replace(
            "from megatron_masklm.convert import convert_hf_to_megatron",
            "import megatron_masklm.convert, megatron.core, megatron_masklm.mcore, safetensors"))
        imports = max(_sample(base))
        peak, elapsed = _measure(path)
        print(f"model {total / 2**20:.0f} MiB fp32, largest tensor {largest / 2**20:.0f} MiB; "
              f"conversion {elapsed:.1f} s")
        print(f"peak anonymous RSS {peak / 2**20:.0f} MiB, of which imports {imports / 2**20:.0f} MiB; "
              f"conversion itself {(peak - imports) / 2**20:.0f} MiB = "
              f"{(peak - imports) / largest:.2f} x the largest tensor, "
              f"{(peak - imports) / total:.2f} x the model")


def _measure(path):
    start = time.perf_counter()
    samples = _sample(path)
    return max(samples), time.perf_counter() - start


def _sample(path):
    proc = subprocess.Popen([sys.executable, path], env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            stdout=subprocess.DEVNULL)
    samples = []

    def sample():
        while proc.poll() is None:
            try:
                samples.append(_rss_anon(proc.pid))
            except OSError:
                break
            time.sleep(0.005)

    thread = threading.Thread(target=sample)
    thread.start()
    proc.wait()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{path} failed with exit code {proc.returncode}")
    return samples or [0]


if __name__ == "__main__":
    main()
