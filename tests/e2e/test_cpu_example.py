"""The CPU demo of docs/training.md, launched as a user would: plain python and torchrun with TP=2."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "cpu_tiny_masked_model.py"


def _run(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_torchrun_tp2_learns_exact_2_4_masks():
    result = _run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  str(EXAMPLE), "--tp", "2", "--steps", "6")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[tp rank 0] 8/8 masked layers exactly 2:4: OK" in result.stdout
    assert "[tp rank 1] 8/8 masked layers exactly 2:4: OK" in result.stdout
    losses = [float(line.split()[3]) for line in result.stdout.splitlines() if line.startswith("step")]
    assert losses[-1] < losses[0]


def test_bad_pattern_fails_with_a_clear_message():
    result = _run(str(EXAMPLE), "--pattern", "4:4", "--steps", "1")
    assert result.returncode != 0
    assert "N=4 with M=4 is not a sparsity pattern" in result.stderr
