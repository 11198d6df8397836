"""tools/gpu_check.sh without a GPU: its syntax, its options, and which steps it runs (python3
replaced by a stub that records its command lines)."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
STEPS = ["tests", "train", "step_time", "throughput", "oneshot", "sparse", "smollm2"]


def _run(tmp_path, *args):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "python3"
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/python3.args"\n')
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=60)
    log = tmp_path / "python3.args"
    return proc, (log.read_text().splitlines() if log.exists() else [])


def test_syntax_and_lint():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "--severity=warning", str(SCRIPT)], check=True)


def test_help_lists_every_step_and_runs_nothing(tmp_path):
    proc, calls = _run(tmp_path, "--help")
    assert proc.returncode == 0 and calls == []
    for name in STEPS:
        assert f"  {name} " in proc.stdout
    assert "Usage: bash tools/gpu_check.sh [--only STEP,...]" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--only", "bogus"], "unknown step 'bogus'"),
    (["--skip=tests,nope"], "unknown step 'nope'"),
    (["--only"], "--only needs a value"),
    (["--assets"], "--assets needs a value"),
    (["--report"], "--report needs a value"),
    (["--frobnicate"], "unknown option --frobnicate"),
    (["out1", "out2"], "one output directory"),
])
def test_bad_arguments_exit_2_before_touching_anything(tmp_path, args, message):
    proc, calls = _run(tmp_path, *args)
    assert proc.returncode == 2 and message in proc.stderr and calls == []


def test_only_runs_the_named_steps(tmp_path):
    out = tmp_path / "out"
    proc, calls = _run(tmp_path, "--only", "sparse", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [c for c in calls if not c.startswith("-c ")]  # the CUDA and megatron checks
    assert len(calls) == 4 and steps == [
        f"tools/bench_sparse.py --warmup 5 --repeats 20 --output {out}/sparse_gemm.json"]
    assert "gpu_check status: 0" in proc.stdout


def test_smollm2_step_needs_packed_assets(tmp_path):
    out, assets = tmp_path / "out", tmp_path / "assets"
    proc, calls = _run(tmp_path, "--only=smollm2", "--assets", str(assets), str(out))
    assert proc.returncode == 1 and "no packed assets under" in proc.stdout
    assert not any("smollm2_gpu" in c for c in calls)
    # when not asked for by name, missing assets only skip the step
    skip_all_else = ",".join(s for s in STEPS if s != "smollm2")
    proc, _ = _run(tmp_path, "--skip", skip_all_else, "--assets", str(assets), str(out))
    assert proc.returncode == 0 and "SmolLM2-135M step skipped" in proc.stdout
    (assets / "b").mkdir(parents=True)
    (assets / "b" / "MANIFEST.json").write_text("{}")
    proc, calls = _run(tmp_path, "--only", "smollm2", "--assets", str(assets), str(out))
    assert proc.returncode == 0
    assert calls[-1] == (f"benchmarks/smollm2_gpu/run.py --assets {assets} "
                         f"--workdir {out}/smollm2")


def test_skip_leaves_out_the_named_steps(tmp_path):
    proc, calls = _run(tmp_path, "--skip", "tests,train,oneshot,smollm2", str(tmp_path / "o"))
    assert proc.returncode == 0
    scripts = [c.split()[0] for c in calls if not c.startswith("-c ")]
    assert scripts == ["benchmarks/step_time.py", "-m", "tools/bench_sparse.py"]


def test_report_copies_logs_and_results_but_no_checkpoints(tmp_path):
    out, report = tmp_path / "out", tmp_path / "report"
    (out / "tiny_run" / "iter_0000010").mkdir(parents=True)
    (out / "tiny_run" / "iter_0000010" / "metadata.json").write_text("{}")
    (out / "smollm2" / "logs").mkdir(parents=True)
    (out / "smollm2" / "megatron").mkdir()
    for name in ("results.md", "results.json", "logs/train.log", "megatron/model_shape.json"):
        (out / "smollm2" / name).write_text(name)
    (out / "sparse_gemm.json").write_text("{}")
    proc, _ = _run(tmp_path, "--only", "sparse", "--report", str(report), str(out))
    assert proc.returncode == 0 and f"gpu_check report: {report}" in proc.stdout
    copied = sorted(str(p.relative_to(report)) for p in report.rglob("*") if p.is_file())
    assert copied == ["smollm2/results.json", "smollm2/results.md", "smollm2/train.log",
                      "sparse.log", "sparse_gemm.json"]
