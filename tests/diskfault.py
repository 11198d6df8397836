"""Real small filesystems for tests of disk faults: a tmpfs that fills up, and a read-only one.

    from diskfault import read_only_disk, small_disk  # noqa: F401  (pytest fixtures)

    def test_full_disk(small_disk):          # a 200 KiB tmpfs at tmp_path / "small"
        ...
    def test_read_only(read_only_disk):      # an empty read-only tmpfs at tmp_path / "ro"
        ...

Mounting needs root (CI runs as root); elsewhere the tests skip, saying so. Each mount is
unmounted when its test ends. :func:`mounted_tmpfs` is the context manager behind both.
"""
import contextlib
import os
import subprocess
from typing import Callable, Iterator, Optional

import pytest

SMALL_SIZE = "200k"


@contextlib.contextmanager
def mounted_tmpfs(directory, *, size: str = SMALL_SIZE, read_only: bool = False,
                  populate: Optional[Callable[[str], None]] = None) -> Iterator[str]:
    """Mount a tmpfs of ``size`` at ``directory`` (created), filled by ``populate(directory)``
    first and then remounted read-only when ``read_only``; unmounted on exit. Skips the test
    when mounting is not permitted."""
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    _mount_or_skip(["-t", "tmpfs", "-o", f"size={size}", "tmpfs", directory], directory)
    try:
        if populate is not None:
            populate(directory)
        if read_only:
            _mount_or_skip(["-o", "remount,ro", directory], directory)
        yield directory
    finally:
        if subprocess.run(["umount", directory], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", directory], capture_output=True)  # still open: detach


def _mount_or_skip(arguments, directory: str) -> None:
    try:
        proc = subprocess.run(["mount", *arguments], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small filesystem for the disk-fault tests")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {directory} (needs root, as in CI): "
                    f"{proc.stderr.strip()[:200]}")


@pytest.fixture
def small_disk(tmp_path) -> Iterator[str]:
    """A 200 KiB tmpfs at ``tmp_path / "small"``: big enough to start writing a tiny model's
    outputs, too small to finish."""
    with mounted_tmpfs(tmp_path / "small") as directory:
        yield directory


@pytest.fixture
def read_only_disk(tmp_path) -> Iterator[str]:
    """An empty read-only tmpfs at ``tmp_path / "ro"`` (root writes there too: a mode bit would
    not stop it)."""
    with mounted_tmpfs(tmp_path / "ro", read_only=True) as directory:
        yield directory
