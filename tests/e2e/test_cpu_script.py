"""examples/cpu_tp2_tiny.sh as a user runs it: torchrun at TP=2 on CPU, a checkpoint, a plot."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_cpu_demo_script_trains_saves_and_plots(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "RUN_DIR": str(run_dir), "PYTHON": sys.executable,
           "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(["bash", str(ROOT / "examples" / "cpu_tp2_tiny.sh"),
                           "--train-iters", "6", "--eval-interval", "3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    records = [json.loads(line) for line in (run_dir / "logs" / "train_log.jsonl").open()]
    train = [r["iteration"] for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert train == list(range(1, 7))
    assert [r["iteration"] for r in evals] == [3, 6] and all(r["exact_nm"] for r in evals)
    assert (run_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    assert (run_dir / "iter_0000006").is_dir()

    png = run_dir / "logs" / "train_log.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "skipping the plot" in proc.stdout and not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
