"""CPU step time of the training CLI on the tiny config at TP=1 (1 process) and TP=2 (2 gloo
ranks), alternating runs, medians after warm-up. Run from the repository root:

    python benchmarks/train_step_time.py [--rounds 2 --iters 30]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run_once(tp: int, iters: int, log_dir: str) -> list:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(tp), "-m", "megatron_masklm.train", "--config", "examples/configs/tiny_cpu.yaml",
           "--tensor-model-parallel-size", str(tp), "--train-iters", str(iters),
           "--log-interval", "1", "--eval-iters", "0", "--log-dir", log_dir]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // tp), "PYTHONWARNINGS": "ignore"}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(log_dir, "train_log.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return [r["step_time_s"] for r in records if r["kind"] == "train" and r["iteration"] > 5]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args()
    times = {1: [], 2: []}
    for _ in range(args.rounds):
        for tp in times:
            with tempfile.TemporaryDirectory() as log_dir:
                times[tp] += run_once(tp, args.iters, log_dir)
    print(f"tiny config (2 layers, hidden 64, 8 x 64 tokens per step), {args.rounds} alternating "
          f"rounds x {args.iters} iterations, medians after 5 warm-up iterations")
    for tp, values in times.items():
        print(f"TP={tp}: step {statistics.median(values) * 1000:.1f} ms")
    print(f"TP=2 / TP=1 step-time ratio: {statistics.median(times[2]) / statistics.median(times[1]):.2f}")


if __name__ == "__main__":
    main()
