"""Writes that appear whole or not at all: a text file, a mask .npz, and an output directory.

An OSError met on the way (a full or read-only disk) names the output, not its temporary sibling.
"""
import contextlib
import errno
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Dict

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
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=suffix)
    except OSError as error:
        raise _about(error, path, None) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; outputs are shared
        os.replace(tmp, path)
    except OSError as error:
        _unlink(tmp)
        raise _about(error, path, tmp) from error
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _about(error: OSError, output: str, tmp) -> OSError:
    """``error`` naming ``output`` where it named the temporary ``tmp`` (or a file inside it),
    or, for a disk error, named nothing; else ``error`` itself."""
    name = error.filename
    if tmp is None:  # creating the temporary sibling itself failed
        renamed = output
    elif isinstance(name, str) and (name == tmp or name.startswith(tmp + os.sep)):
        renamed = output + name[len(tmp):]
    elif name is None and error.errno in _DISK_ERRNOS:
        renamed = output
    else:
        return error
    return OSError(error.errno, error.strerror, renamed)


def check_writable(path: str, *, make_parents: bool = False) -> None:
    """Raise the OSError that writing ``path`` with the functions here would meet (a read-only
    or forbidden directory, a missing one), before the work that produces it: a probe file is
    created and removed in the directory that would hold it (with ``make_parents``, as
    :func:`atomic_output_dir` makes them, the nearest existing one above it)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not make_parents and not os.path.isdir(parent):
        raise FileNotFoundError(errno.ENOENT, "its directory does not exist: create it first or "
                                "pick another path", path)
    while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.probe-")
    except OSError as error:
        raise OSError(error.errno, error.strerror, path) from error
    os.close(fd)
    os.unlink(probe)


def save_safetensors(path: str, tensors: Dict[str, Any], *, metadata=None) -> None:
    """safetensors' ``save_file``, with its I/O failures (a full disk) raised as the OSError
    they are (safetensors raises its own error type with the OS error number in the text)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, path, metadata=metadata)
    except SafetensorError as error:
        found = re.search(r"os error (\d+)", str(error))
        if not found:
            raise
        number = int(found.group(1))
        raise OSError(number, os.strerror(number), path) from error


def check_output_dir(output: str, *, overwrite: bool = False) -> None:
    """Refuse, before any work, what :func:`atomic_output_dir` would refuse at the end: an
    existing ``output`` without ``overwrite``, a file in its place, an unwritable directory."""
    if os.path.lexists(output) and not overwrite:
        raise ValueError(f"{output!r} exists: pick a new output directory or pass --overwrite")
    if os.path.lexists(output) and not os.path.isdir(output):
        raise ValueError(f"{output!r} is a file, not a directory: it would be replaced by one; "
                         "remove it yourself or pick another output directory")
    check_writable(output, make_parents=True)


@contextlib.contextmanager
def atomic_output_dir(output: str, *, overwrite: bool = False):
    """Yield a temporary sibling of ``output``; it becomes ``output`` only on success, with the
    permissions a plain ``mkdir`` would give it (the umask's). An existing ``output`` (with
    ``overwrite``) is kept until the new one is in place.
    """
    output = os.path.abspath(output)
    check_output_dir(output, overwrite=overwrite)
    parent, base = os.path.split(output)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
    except OSError as error:
        raise _about(error, output, None) from error
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; outputs are shared
    try:
        yield tmp
        _move_into_place(tmp, output)
    except OSError as error:
        raise _about(error, output, tmp) from error
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
