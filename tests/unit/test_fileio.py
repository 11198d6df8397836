"""The atomic writers: whole or nothing, and permissions as plain open()/mkdir() would give."""
import os

import numpy as np
import pytest

from megatron_masklm.fileio import atomic_output_dir, atomic_savez, atomic_write_text


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return os.stat(path).st_mode & 0o777


def test_outputs_follow_the_umask_like_mkdir_and_open(tmp_path, umask_022):
    os.mkdir(tmp_path / "plain")
    (tmp_path / "plain.txt").write_text("x")
    with atomic_output_dir(str(tmp_path / "out")) as tmp:
        open(os.path.join(tmp, "f"), "w").close()
    atomic_write_text(str(tmp_path / "t.txt"), "x")
    atomic_savez(str(tmp_path / "m.npz"), {"a": np.zeros(3)})
    assert _mode(tmp_path / "out") == _mode(tmp_path / "plain") == 0o755
    files = [tmp_path / "t.txt", tmp_path / "m.npz", tmp_path / "plain.txt"]
    assert [_mode(f) for f in files] == [0o644] * 3


def test_a_failed_output_dir_leaves_nothing_and_keeps_the_old_one(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("kept")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(str(out), overwrite=True) as tmp:
            open(os.path.join(tmp, "new"), "w").close()
            raise RuntimeError("writer failed")
    assert sorted(os.listdir(tmp_path)) == ["out"] and (out / "old").read_text() == "kept"
    with atomic_output_dir(str(out), overwrite=True) as tmp:
        open(os.path.join(tmp, "new"), "w").close()
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["new"]
