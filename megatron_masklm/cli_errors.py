"""One error path for every command-line front end: bad input and a failing disk end in one line.

Every ``tools/*.py`` and ``megatron_masklm.train`` run their body through :func:`run_cli`:

- ``ValueError`` (the library's "your input is wrong" error, whose message already names the value
  and the fix) -> ``error: <message>``, exit 1;
- ``OSError`` (a full disk, a read-only or forbidden path, a missing file) -> one line naming the
  path, what went wrong and the fix, exit 1;
- an unreadable checkpoint (``CheckpointError``, or Megatron's ``CheckpointingException``) ->
  one line naming it, exit 1;
- ``KeyboardInterrupt`` (Ctrl-C) -> ``interrupted``, exit 130, no traceback.

Outputs are written to temporary siblings and renamed only when whole (``fileio``), so each of
these exits leaves nothing partial behind: the ``with``/``finally`` blocks that own the temporary
files run before the exception reaches :func:`run_cli`.
"""
import errno
import os
import re
import sys
from typing import Callable, Optional

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


class CheckpointError(ValueError):
    """A checkpoint or weight file that exists but cannot be read (truncated, corrupt)."""


_OS_FIXES = {
    errno.ENOSPC: ("no space left on device", "free space there or write to another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or write to another disk"),
    errno.EROFS: ("read-only file system", "write the output to a writable directory"),
    errno.EACCES: ("permission denied", "fix the permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "fix the permissions or choose another path"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.EISDIR: ("is a directory", "name a file, not a directory"),
    errno.ENOTDIR: ("not a directory", "check the path"),
}


def describe_os_error(error: OSError, *, path: Optional[str] = None) -> str:
    """One line for an OSError: what failed, on which path, and the fix (the error's own text
    where the library wrote one, which names the fix itself)."""
    where = error.filename or path
    what, fix = _OS_FIXES.get(error.errno, (error.strerror or str(error), "check the path"))
    target = f" ({where})" if where else ""
    own = error.strerror if error.errno is not None else None
    if own and own != os.strerror(error.errno):  # e.g. the converters' free-space check
        fix = own
    return _one_line(f"{what}{target}: {fix}")


def _checkpoint_exception_types() -> tuple:
    """Megatron's checkpoint error class, when megatron.core is already imported (never import
    it here: the tools that do not need it stay light)."""
    module = sys.modules.get("megatron.core.dist_checkpointing.core")
    found = getattr(module, "CheckpointingException", None)
    return (found,) if isinstance(found, type) else ()


def run_cli(body: Callable[[], int], *, output: Optional[str] = None) -> int:
    """Run ``body`` (a CLI's work after parsing) and turn the errors a user can cause into one
    line on stderr and a non-zero exit status (see module). ``output`` names the path an
    ``OSError`` without a file name is reported against (a disk that fills mid-write)."""
    try:
        return body()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as error:
        print(f"error: {_one_line(str(error))}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as error:
        print(f"error: {describe_os_error(error, path=output)}", file=sys.stderr)
        return EXIT_ERROR
    except _checkpoint_exception_types() as error:  # an empty tuple catches nothing
        print(f"error: cannot read the checkpoint: {_first_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    except _torch_checkpoint_exception_types() as error:  # a BaseException: not Ctrl-C, though
        disk = os_error_inside(error)
        text = (describe_os_error(disk, path=output) if disk is not None
                else f"the checkpoint reader/writer failed: {_first_line(error)}")
        print(f"error: {text}", file=sys.stderr)
        return EXIT_ERROR


def _torch_checkpoint_exception_types() -> tuple:
    """torch.distributed.checkpoint's CheckpointException (it wraps its readers' and writers'
    errors, a full disk among them), when torch has loaded it."""
    module = sys.modules.get("torch.distributed.checkpoint.api")
    found = getattr(module, "CheckpointException", None)
    return (found,) if isinstance(found, type) else ()


def os_error_inside(error: BaseException) -> Optional[OSError]:
    """The OSError a wrapped failure stems from (its causes, its per-rank ``failures``, or an
    ``[Errno N] text`` in its message, all that survives a writer process), or None."""
    seen, pending = set(), [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError):
            return current
        failures = getattr(current, "failures", None) or {}
        pending += [current.__cause__, current.__context__,
                    *(f[0] if isinstance(f, tuple) else f for f in failures.values())]
        match = re.search(r"\[Errno (\d+)\] ([^'\n]*)", _text(current))
        if match:
            return OSError(int(match.group(1)), os.strerror(int(match.group(1))))
    return None


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # a wrapper whose __str__ fails on what it wraps
        return type(error).__name__


def _first_line(error: BaseException) -> str:
    text = _text(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def same_or_nested(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` are the same file/directory or one lies inside the other."""
    return _inside(a, b) or _inside(b, a)


def _inside(a: str, b: str) -> bool:
    """Whether ``a`` is ``b`` or lies inside it (symbolic links resolved)."""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def refuse_overlap(*, inputs: dict, outputs: dict) -> None:
    """Raise ValueError, before anything is touched (``--overwrite`` or not), when writing an
    output could destroy an input: the output is the input, contains it, or lies inside it and
    already exists (it would be replaced). A new file or directory inside an input directory (a
    mask file written into its run directory) is allowed. ``inputs``/``outputs``: flag -> path."""
    for out_flag, out_path in outputs.items():
        if not out_path:
            continue
        for in_flag, in_path in inputs.items():
            if not in_path:
                continue
            if _inside(in_path, out_path) or (_inside(out_path, in_path)
                                               and os.path.lexists(out_path)):
                raise ValueError(
                    f"{out_flag} {out_path!r} overlaps {in_flag} {in_path!r}: writing it would "
                    f"destroy the input; choose an output path outside {in_path!r}")
