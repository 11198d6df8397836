"""cli_errors.run_cli: each error a user can cause is one line and an exit status, by hand."""
import errno

import pytest

from megatron_masklm.cli_errors import CheckpointError, refuse_overlap, run_cli


def _run(capsys, error, **kwargs):
    def body():
        raise error

    code = run_cli(body, **kwargs)
    out, err = capsys.readouterr()
    assert out == "" and err.endswith("\n") and err.count("\n") == 1, err
    return code, err.strip()


@pytest.mark.parametrize("error, output, expected", [
    (ValueError("--x 3 is bad:\n  pass --x 2"), None, "error: --x 3 is bad: pass --x 2"),
    (CheckpointError("cannot read 'a.gguf': truncated"), None,
     "error: cannot read 'a.gguf': truncated"),
    (OSError(errno.ENOSPC, "No space left on device"), "/o",
     "error: no space left on device (/o): free space there or write to another disk"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/f"), "/o",
     "error: read-only file system (/ro/f): write the output to a writable directory"),
    (OSError(errno.ENOSPC, "converting needs 2 MiB but 1 MiB is free: pick another disk"), "/o",
     "error: no space left on device (/o): converting needs 2 MiB but 1 MiB is free: pick "
     "another disk"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/in"), None,
     "error: no such file or directory (/in): check the path"),
])
def test_errors_are_one_line_with_the_path_and_the_fix(capsys, error, output, expected):
    assert _run(capsys, error, output=output) == (1, expected)


def test_ctrl_c_is_interrupted_and_130(capsys):
    assert _run(capsys, KeyboardInterrupt()) == (130, "interrupted")


def test_torch_checkpoint_exception_names_the_disk_error_inside(capsys):
    api = pytest.importorskip("torch.distributed.checkpoint.api")
    full = api.CheckpointException("save", {0: (OSError(errno.ENOSPC, "No space left"), [])})
    assert _run(capsys, full, output="/o") == (
        1, "error: no space left on device (/o): free space there or write to another disk")
    other = api.CheckpointException("save", {1: (RuntimeError("boom"), [])})
    code, err = _run(capsys, other)
    assert code == 1 and err.startswith("error: the checkpoint reader/writer failed:")


def test_other_errors_are_not_swallowed():
    def body():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(body)


@pytest.mark.parametrize("out", ["in", "in/sub", "in/file", "."])
def test_refuse_overlap_same_existing_inside_or_around(tmp_path, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "file").write_text("part of the input")
    with pytest.raises(ValueError, match=r"--save-dir '.*' overlaps --load-dir 'in'"):
        refuse_overlap(inputs={"--load-dir": "in"}, outputs={"--save-dir": out})


def test_refuse_overlap_lets_a_new_path_inside_an_input_pass(tmp_path, monkeypatch):
    """A mask file written into its run directory adds to the input, it destroys nothing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    refuse_overlap(inputs={"--load-dir": "run"}, outputs={"--output": "run/masks.npz"})


def test_refuse_overlap_lets_siblings_and_prefixes_pass(tmp_path):
    refuse_overlap(inputs={"--load-dir": str(tmp_path / "run"), "--masks": None},
                   outputs={"--save-dir": str(tmp_path / "run2"), "--other": None})
