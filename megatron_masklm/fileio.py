"""Writes that appear whole or not at all: a text file, a mask .npz, and an output directory."""
import contextlib
import os
import shutil
import tempfile
from typing import Callable, Dict

import numpy as np


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_savez(path: str, entries: Dict[str, np.ndarray]) -> None:
    """np.savez_compressed to a temporary sibling, then rename; the file follows the umask."""
    _atomic_write(path, ".npz.tmp", lambda handle: np.savez_compressed(handle, **entries))


def atomic_write_text(path: str, text: str) -> None:
    """Write UTF-8 ``text`` to a temporary sibling, then rename; the file follows the umask."""
    _atomic_write(path, ".tmp", lambda handle: handle.write(text.encode("utf-8")))


def _atomic_write(path: str, suffix: str, write: Callable) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; outputs are shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_output_dir(output: str, *, overwrite: bool = False):
    """Yield a temporary sibling of ``output``; it becomes ``output`` only on success, with the
    permissions a plain ``mkdir`` would give it (the umask's). An existing ``output`` (with
    ``overwrite``) is kept until the new one is in place.
    """
    output = os.path.abspath(output)
    if os.path.lexists(output) and not overwrite:
        raise ValueError(f"{output!r} exists: pick a new output directory or pass --overwrite")
    parent, base = os.path.split(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; outputs are shared
    try:
        yield tmp
        _move_into_place(tmp, output)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: str, output: str) -> None:
    if not os.path.lexists(output):
        os.replace(tmp, output)
        return
    parent, base = os.path.split(output)
    old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
    os.replace(output, os.path.join(old, base))  # keep it until the new one is in place
    try:
        os.replace(tmp, output)
    except BaseException:
        os.replace(os.path.join(old, base), output)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
