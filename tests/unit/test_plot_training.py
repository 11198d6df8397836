"""tools/plot_training.py: a synthetic log becomes a readable PNG; bad inputs exit 1 with the file."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "plot_training.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(iters=20, eval_every=5):
    records = []
    for it in range(1, iters + 1):
        records.append({
            "kind": "train", "iteration": it, "train_iters": iters, "lm_loss": 3.0 - 0.05 * it,
            "reg_term": 1e-3, "temperature": 4.0 - 0.2 * it, "logit_scale": 100.0 + 20 * it,
            "lr": 5e-4 * 0.5 * (1 + math.cos(math.pi * it / iters)), "grad_norm": 0.1,
            "tokens_per_s": 1e4, "step_time_s": 0.1, "peak_memory_bytes": 2**30,
            "tokens": it * 1024, "consumed_samples": it * 8})
        if it % eval_every == 0:
            records.append({"kind": "eval", "iteration": it, "tokens": it * 1024,
                            "val_loss": 2.5 - 0.02 * it, "val_ppl": math.exp(2.5 - 0.02 * it),
                            "mask_change_fraction": 0.5 / it, "exact_nm": True})
    return records


def _write(path: Path, records, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "".join(extra_lines))
    return path


def _tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_a_run_directory_becomes_a_png(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    _write((tmp_path / "logs").mkdir() or tmp_path / "logs" / "train_log.jsonl", _records())
    out = tmp_path / "curves.png"
    proc = _tool(tmp_path, "-o", out, "--hline", "SparseGPT=10.42", "--hline", "Wanda=11.29")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == PNG_MAGIC
    pixels = image.imread(str(out))
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # something was drawn
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_default_output_is_next_to_the_log_and_resumed_iterations_keep_the_last(tmp_path):
    pytest.importorskip("matplotlib")
    from megatron_masklm.training.plot import read_log

    records = _records(iters=10)
    resumed = [dict(r, lm_loss=9.0) for r in records if r["kind"] == "train" and r["iteration"] > 6]
    log = _write(tmp_path / "train_log.jsonl", records + resumed, extra_lines=["\n"])
    proc = _tool(log)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "train_log.png").read_bytes()[:8] == PNG_MAGIC
    kept = read_log(str(log))
    train = [r for r in kept if r["kind"] == "train"]
    assert [r["iteration"] for r in train] == list(range(1, 11))
    assert [r["lm_loss"] for r in train if r["iteration"] > 6] == [9.0] * 4


def test_missing_file(tmp_path):
    proc = _tool(tmp_path / "nope.jsonl")
    assert proc.returncode == 1
    assert "nope.jsonl" in proc.stderr and "does not exist" in proc.stderr


def test_directory_without_a_log(tmp_path):
    proc = _tool(tmp_path)
    assert proc.returncode == 1 and str(tmp_path) in proc.stderr and "train_log.jsonl" in proc.stderr


def test_empty_log(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text("\n")
    proc = _tool(log)
    assert proc.returncode == 1
    assert "train_log.jsonl" in proc.stderr and "empty" in proc.stderr


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '{"kind": "train"}'])
def test_malformed_line_is_named_by_number(tmp_path, bad):
    log = _write(tmp_path / "train_log.jsonl", _records(iters=3), extra_lines=[bad + "\n"])
    proc = _tool(log)
    assert proc.returncode == 1
    assert f"{log}:4: malformed line" in proc.stderr  # 3 good records, then the bad line


def test_hline_must_be_name_equals_value(tmp_path):
    log = _write(tmp_path / "train_log.jsonl", _records(iters=3))
    proc = _tool(log, "--hline", "SparseGPT")
    assert proc.returncode == 2 and "NAME=VALUE" in proc.stderr


def test_without_matplotlib_it_says_how_to_install_it(tmp_path):
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    log = _write(tmp_path / "train_log.jsonl", _records(iters=3))
    proc = subprocess.run([sys.executable, str(TOOL), str(log)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(tmp_path / "site"), *sys.path])})
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: tools/plot_training.py needs matplotlib "
                                   "(pip install -e .[plot])")
