"""HF -> Megatron conversion streams: the process's own (anonymous) memory stays below the
largest tensor, however many layers the model has (benchmarks/convert_memory.py measures it)."""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("safetensors")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ratio(layers: int) -> float:
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "convert_memory.py"), "--layers",
           str(layers), "--hidden", "512", "--ffn", "1408", "--vocab", "16000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r"conversion itself (\d+) MiB = ([\d.]+) x the largest tensor", proc.stdout)
    assert match, proc.stdout
    return float(match.group(2))


@pytest.mark.timeout(600)
def test_conversion_memory_does_not_grow_with_the_model():
    small, large = _ratio(4), _ratio(16)  # 4x the layers
    assert small < 1.5 and large < 1.5, (small, large)
