"""Time tools/prune_oneshot.py on a random model of a given shape (no assets needed: GPU nodes
without network, quick CPU checks).

    python benchmarks/oneshot_speed.py --method sparsegpt            # SmolLM2-135M shape, 128 x 512
    python benchmarks/oneshot_speed.py --layers 2 --windows 8        # a quick CPU smoke run

Builds a dense Megatron checkpoint with random weights (seeded) and random calibration tokens
(NullTokenizer text), runs the tool on it (CUDA when present) and prints one JSON line: the
tool's own pruning time, the whole command's time and the shape. Random weights and tokens do
not give meaningful masks, only the time; real-model numbers come from
benchmarks/oneshot_smollm2/run.py.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_random_checkpoint(directory: str, shape) -> None:
    """A dense Megatron checkpoint laid out as the converter writes one."""
    import torch
    from megatron.core import dist_checkpointing

    from megatron_masklm import mcore
    from megatron_masklm.convert.output import megatron_world_of_one

    with megatron_world_of_one():
        torch.manual_seed(0)
        model = mcore.build_dense_gpt_model(shape, config=mcore.build_transformer_config(
            shape, use_cpu_initialization=True))
        os.makedirs(os.path.join(directory, "release"))
        dist_checkpointing.save(model.sharded_state_dict(), os.path.join(directory, "release"))
    with open(os.path.join(directory, "model_shape.json"), "w") as handle:
        json.dump(asdict(shape), handle)
    with open(os.path.join(directory, "latest_checkpointed_iteration.txt"), "w") as handle:
        handle.write("release")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="sparsegpt", choices=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--windows", type=int, default=128)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    args = parser.parse_args()
    import torch

    from megatron_masklm.mcore import ModelShape

    shape = ModelShape(num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=args.ffn,
                       num_attention_heads=args.heads, num_query_groups=args.groups,
                       vocab_size=args.vocab, max_position_embeddings=args.seq, tied_embeddings=True)
    with tempfile.TemporaryDirectory(prefix="oneshot-speed-") as work:
        checkpoint = os.path.join(work, "ckpt")
        write_random_checkpoint(checkpoint, shape)
        tokens = torch.randint(0, args.vocab - 1, (args.windows * args.seq,),
                               generator=torch.Generator().manual_seed(1))
        with open(os.path.join(work, "calib.txt"), "w") as handle:
            handle.write(" ".join(map(str, tokens.tolist())))
        cmd = [sys.executable, os.path.join(REPO, "tools", "prune_oneshot.py"), "--load", checkpoint,
               "--method", args.method, "--tokenizer-type", "NullTokenizer",
               "--calib-text", os.path.join(work, "calib.txt"), "--calib-samples", str(args.windows),
               "--seq-length", str(args.seq), "--micro-batch-size", str(args.micro_batch_size),
               "--output-mask", os.path.join(work, "prior.npz"), "--no-progress"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"prune_oneshot.py failed (rc {proc.returncode})")
        summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    print(json.dumps({"method": args.method, "prune_seconds": summary["prune_seconds"],
                      "command_seconds": round(wall, 1), "exact_nm": summary["exact_nm"],
                      "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                      "shape": asdict(shape), "windows": args.windows, "seq": args.seq}))


if __name__ == "__main__":  # required: the dist-checkpoint writer re-imports __main__
    main()
