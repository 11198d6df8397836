"""Issue 30's question on SmolLM2-135M: once a 2:4 mask's kept weights are recovered, is a learned
mask still ahead of SparseGPT's? Every mask gets the same recovery: the same tokens of the TRAIN
mix, seed and steps, distilled from the dense model (train --fixed-mask), and both one-shot
steps are shown too (SparseGPT's OBS update, for its own mask and for the learned one).

    python benchmarks/smollm2_cpu/recovery.py --workdir /tmp/smx \\
        --learned benchmarks/smollm2_cpu/mix/masks.idx.npz --train-iters 120

The workdir is run.py's (``--preset mix``): its assets, converted model, TRAIN mix and the
mix-calibrated SparseGPT (mask and updated weights) are reused, and computed when missing. Each
step is cached in WORKDIR/steps/ like run.py's; recovery runs resume from their checkpoints.

Rows, each scored on Wikipedia EVAL and the two out-of-domain sets:
  SparseGPT (its mask and updated weights)          -> + trained recovery
  the learned mask on the original weights          -> + trained recovery
  the learned mask + SparseGPT's OBS update for it  -> + trained recovery
Writes WORKDIR/recovery/results.json (one row per method and set), results.md and
recovery.png (validation PPL against recovery tokens, one curve per mask).
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench  # noqa: E402  (benchmarks/smollm2_cpu/run.py)

RECOVERY = dict(micro_batch_size=2, global_batch_size=2, seq_length=512, lr=1e-4, min_lr=1e-5,
                eval_interval=25, eval_iters=2, save_interval=50, distill_weight=1.0)
"""The recovery recipe: the mask-training budget's batch (2 x 512 tokens a step), distilled from
the dense model, a fine-tuning learning rate for the weights."""


class Recovery:
    """The recovery steps on top of run.py's pipeline (its paths, cache, tools, evaluations)."""

    def __init__(self, args):
        self.args = args
        self.pipe = bench.Pipeline(argparse.Namespace(
            workdir=args.workdir, preset="mix", model="smollm2", tp=1, threads=args.threads,
            train_iters=None, calib_samples=None, eval_windows=None, lr=None, min_lr=None,
            methods=["sparsegpt"]))
        self.learned = os.path.abspath(args.learned)
        self.out = self.pipe.path("recovery")
        os.makedirs(self.out, exist_ok=True)

    def obs_for_learned(self) -> dict:
        """SparseGPT's OBS update of the kept weights for the learned mask (one shot)."""
        pipe = self.pipe
        target = pipe.path("oneshot", "learned_obs")

        def compute():
            return pipe.run("prune_learned_obs", pipe.tool(
                "prune_oneshot.py", "--load", pipe.megatron, "--method", "sparsegpt",
                "--pattern", bench.PATTERN, "--calib-data", *pipe.train_data(), "--calib-samples",
                pipe.settings["calib_samples"], "--seq-length", 512, "--fixed-mask", self.learned,
                "--save", target, "--overwrite", "--no-progress"))

        return dict(pipe.cached("prune_learned_obs", compute), checkpoint=target)

    def recover(self, name: str, *, start: str, mask: str) -> dict:
        """Train the weights of ``start`` under ``mask`` (fixed), the dense model as teacher."""
        pipe, r = self.pipe, RECOVERY
        run_dir = os.path.join(self.out, name)

        def compute():
            started = time.perf_counter()
            if not os.path.isdir(os.path.join(run_dir, f"iter_{self.args.train_iters:07d}")):
                pipe.run(f"recover_{name}", pipe.tool(
                    "megatron_masklm.train", "--pretrained-checkpoint", start, "--fixed-mask",
                    mask, "--teacher-checkpoint", pipe.megatron, "--pattern", bench.PATTERN,
                    "--data-path", *pipe.train_data(), "--split", "100,0,0",
                    "--valid-data-path", pipe.data["eval"], "--micro-batch-size",
                    r["micro_batch_size"], "--global-batch-size", r["global_batch_size"],
                    "--seq-length", r["seq_length"], "--train-iters", self.args.train_iters,
                    "--lr", r["lr"], "--min-lr", r["min_lr"], "--distill-weight",
                    r["distill_weight"], "--eval-interval", r["eval_interval"], "--eval-iters",
                    r["eval_iters"], "--log-interval", 1, "--save", run_dir, "--load", run_dir,
                    "--save-interval", r["save_interval"], torchrun=True))
            train = [rec for rec in bench.read_log(run_dir) if rec["kind"] == "train"]
            return {"train_seconds": round(sum(rec["step_time_s"] for rec in train), 1),
                    "tokens": train[-1]["tokens"], "iterations": train[-1]["iteration"],
                    "command_wall_s": round(time.perf_counter() - started, 1)}

        return dict(pipe.cached(f"recover_{name}", compute), run_dir=run_dir)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/smollm2_mix")
    parser.add_argument("--learned", required=True,
                        help="the learned mask file (e.g. benchmarks/smollm2_cpu/mix/masks.idx.npz)")
    parser.add_argument("--train-iters", type=int, default=120,
                        help="recovery steps per mask (2 x 512 tokens each)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    rec = Recovery(args)
    pipe = rec.pipe
    assets = pipe.assets()
    pipe.convert_and_tokenize(assets)
    pipe.tokenize_corpora()
    sparsegpt = pipe.oneshot("sparsegpt", assets)
    obs = rec.obs_for_learned()
    sgpt_dir = pipe.path("oneshot", "sparsegpt")
    runs = {  # name: (starting weights, fixed mask)
        "sparsegpt": (os.path.join(sgpt_dir, "updated"), os.path.join(sgpt_dir, "prior.npz")),
        "learned": (pipe.megatron, rec.learned),
        "learned_obs": (obs["checkpoint"], rec.learned),
    }
    trained = {name: rec.recover(name, start=start, mask=mask)
               for name, (start, mask) in runs.items()}
    before = {  # evaluation name, and how it is scored
        "sparsegpt": ("sparsegpt_updated", dict(load=runs["sparsegpt"][0]),
                      "SparseGPT (its mask, updated weights)", sparsegpt["total_seconds"]),
        "learned": ("learned_original", dict(hf_dir=assets["hf_dir"], masks=rec.learned),
                    "learned mask, original weights", None),
        "learned_obs": ("learned_obs", dict(load=obs["checkpoint"]),
                        "learned mask + SparseGPT's OBS update", obs["wall_s"]),
    }
    rows = [{"method": "dense (dequantised Q4_1)", "name": "dense",
             "kwargs": dict(hf_dir=assets["hf_dir"]), "wall_s": None, "train_tokens": 0}]
    for name, (evaluation, kwargs, label, wall) in before.items():
        rows.append({"method": label, "name": evaluation, "kwargs": kwargs, "wall_s": wall,
                     "train_tokens": 0})
        rows.append({"method": f"{label} + trained recovery", "name": f"recovered_{name}",
                     "kwargs": dict(load=trained[name]["run_dir"]),
                     "wall_s": trained[name]["train_seconds"],
                     "train_tokens": trained[name]["tokens"]})
    results = []
    for row in rows:
        for eval_set in pipe.eval_sets:
            result = pipe.evaluate(row["name"], assets=assets, **row["kwargs"],
                                   **bench._on(eval_set))
            results.append({"method": row["method"], "eval_set": eval_set,
                            "eval_ppl": result["ppl"], "exact_nm": result.get("exact_nm"),
                            "wall_s": row["wall_s"], "train_tokens": row["train_tokens"]})
    summary = {"recipe": RECOVERY, "train_iters": args.train_iters, "learned": rec.learned,
               "train_mix": [list(item) for item in bench.MIX], "methods": results}
    with open(os.path.join(rec.out, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    lines = []
    for eval_set in pipe.eval_sets:
        table = [r for r in results if r["eval_set"] == eval_set]
        lines += [f"### {bench.EVAL_SET_NAMES[eval_set]}", "", "| method | PPL | recovery tokens |",
                  "|---|---|---|"]
        lines += [f"| {r['method']} | {r['eval_ppl']:.2f} | {r['train_tokens']:,} |" for r in table]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(rec.out, "results.md"), "w") as handle:
        handle.write(text)
    curves = {f"recovery of: {before[name][2]}": bench.read_log(t["run_dir"])
              for name, t in trained.items()}
    baselines = [{"method": r["method"], "ppl": r["eval_ppl"]} for r in results
                 if r["eval_set"] == bench.WIKI and "recovery" not in r["method"]]
    bench.plot(curves, baselines, os.path.join(rec.out, "recovery.png"),
               "SmolLM2-135M 2:4: recovery under a fixed mask")


if __name__ == "__main__":
    main()
