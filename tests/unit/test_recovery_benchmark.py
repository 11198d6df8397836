"""benchmarks/smollm2_cpu/recovery.py without its hours of CPU: every mask gets the same
recovery (tokens, steps, teacher), the OBS step gets the learned mask, and each row is scored on
every evaluation set (the pipeline's steps are stubs; the commands are checked as built)."""
import json
import os

import pytest

from script_modules import benchmark


@pytest.fixture()
def recovery():
    return benchmark("smollm2_cpu.recovery")


def test_every_mask_gets_the_same_recovery_and_every_row_every_set(recovery, tmp_path, monkeypatch):
    bench = recovery.bench
    commands, evaluated = {}, []

    def run(self, name, cmd):
        commands[name] = [str(c) for c in cmd]
        if name.startswith("recover_"):  # what training leaves behind: its log
            run_dir = cmd[cmd.index("--save") + 1]
            os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
            with open(os.path.join(run_dir, "logs", "train_log.jsonl"), "w") as handle:
                for it in (1, 2):
                    handle.write(json.dumps({"kind": "train", "iteration": it, "tokens": it * 1024,
                                             "step_time_s": 2.0}) + "\n")
        return {"total_seconds": 1.0, "wall_s": 3.0}

    def evaluate(self, name, *, assets, hf_dir=None, masks=None, load=None, eval_set="wiki"):
        evaluated.append((name, eval_set, hf_dir, masks, load))
        return {"ppl": 10.0 + len(evaluated), "windows": 210, "exact_nm": True}

    monkeypatch.setattr(bench.Pipeline, "run", run)
    monkeypatch.setattr(bench.Pipeline, "evaluate", evaluate)
    monkeypatch.setattr(bench.Pipeline, "assets", lambda self: {"hf_dir": "HF", "eval_txt": "E",
                                                                "train_txt": "T"})
    monkeypatch.setattr(bench.Pipeline, "convert_and_tokenize", lambda self, a: None)
    monkeypatch.setattr(bench.Pipeline, "tokenize_corpora", lambda self: {})
    monkeypatch.setattr(bench, "plot", lambda *args, **kwargs: None)
    learned = tmp_path / "learned.idx.npz"
    recovery.main(["--workdir", str(tmp_path / "w"), "--learned", str(learned),
                   "--train-iters", "7"])

    work = tmp_path / "w"
    obs = commands["prune_learned_obs"]
    assert obs[obs.index("--fixed-mask") + 1] == str(learned)
    assert obs[obs.index("--calib-data") + 1:obs.index("--calib-data") + 7] == [
        str(w) for w in recovery.Recovery(recovery.argparse.Namespace(
            workdir=str(work), learned=str(learned), threads=2, train_iters=7)).pipe.train_data()]
    runs = {name[len("recover_"):]: cmd for name, cmd in commands.items()
            if name.startswith("recover_")}
    assert sorted(runs) == ["learned", "learned_obs", "sparsegpt"]

    def value(cmd, flag):
        return cmd[cmd.index(flag) + 1]

    dense = str(work / "megatron")
    starts = {name: value(cmd, "--pretrained-checkpoint") for name, cmd in runs.items()}
    assert starts == {"sparsegpt": str(work / "oneshot" / "sparsegpt" / "updated"),
                      "learned": dense, "learned_obs": str(work / "oneshot" / "learned_obs")}
    assert value(runs["sparsegpt"], "--fixed-mask") == str(work / "oneshot" / "sparsegpt" / "prior.npz")
    assert value(runs["learned"], "--fixed-mask") == value(runs["learned_obs"], "--fixed-mask") == str(learned)
    recipe = set()
    for cmd in runs.values():  # the same budget, data, teacher and recipe for every mask
        assert value(cmd, "--teacher-checkpoint") == dense
        data = cmd[cmd.index("--data-path") + 1:cmd.index("--split")]
        recipe.add((tuple(data), value(cmd, "--train-iters"), value(cmd, "--lr"),
                    value(cmd, "--distill-weight"), value(cmd, "--global-batch-size")))
    assert recipe == {(tuple(data), "7", "0.0001", "1.0", "2")}
    names = {name for name, *_ in evaluated}
    assert names == {"dense", "sparsegpt_updated", "learned_original", "learned_obs",
                     "recovered_sparsegpt", "recovered_learned", "recovered_learned_obs"}
    assert len(evaluated) == 7 * 3  # every row on every set
    summary = json.load(open(work / "recovery" / "results.json"))
    assert len(summary["methods"]) == 21
    recovered = [m for m in summary["methods"] if m["method"].endswith("trained recovery")]
    assert {m["train_tokens"] for m in recovered} == {2048}
    assert {tuple(sorted(m)) for m in summary["methods"]} == {
        ("eval_ppl", "eval_set", "exact_nm", "method", "train_tokens", "wall_s")}
