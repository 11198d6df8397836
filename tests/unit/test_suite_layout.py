"""The README's test command (plain `pytest`, what .ci/run calls) collects every tier: pytest
leaves out directories named like build outputs by default, "dist" among them."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_run_collects_every_tier():
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    tiers = {line.split("/")[1] for line in collected if line.startswith("tests/")}
    on_disk = {path.name for path in (ROOT / "tests").iterdir()
               if path.is_dir() and any(path.glob("test_*.py"))}
    assert tiers == on_disk == {"unit", "dist", "e2e", "gpu", "slurm"}
