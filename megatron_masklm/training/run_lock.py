"""One job per run directory, and no rank outliving its launcher.

``RunDirLock`` is a lock file (``<run dir>/masklm.lock``, created with ``O_EXCL``) that names its
holder: host, pid and the process's start time. A second job that saves to the same directory
is refused with the holder's name. A lock whose holder is gone (same host, and no process with
that pid and start time) is stale and taken over, with a warning; on another host the holder
cannot be checked, so the lock is only ever removed by hand, as the message says, with one
exception: a lock written by an earlier run of the same Slurm job (same ``SLURM_JOB_ID``, another
``SLURM_RESTART_COUNT``) is taken over wherever it was written, since Slurm runs one incarnation
of a job at a time: a job requeued after a node failure must not be refused by the lock its own
killed first run left on that node.

``exit_with_launcher`` starts a thread that ends the process when its parent (torchrun's agent)
is gone: killing only the launcher otherwise leaves ranks running that keep writing checkpoints.
"""
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import psutil

LOCK_FILE = "masklm.lock"


def _slurm_run() -> Optional[dict]:
    """This process's Slurm job and restart count (None outside Slurm)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    return {"job": job, "restart": os.environ.get("SLURM_RESTART_COUNT", "0")}


def _this_process() -> dict:
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": psutil.Process().create_time()}
    slurm = _slurm_run()
    return {**me, "slurm": slurm} if slurm else me


def _earlier_run_of_this_job(holder: dict) -> bool:
    """Whether ``holder`` is an earlier incarnation of this Slurm job (so it is gone; on this
    host that is checked too, as a process that outlived its job would still write)."""
    mine, theirs = _slurm_run(), holder.get("slurm")
    earlier = bool(mine and isinstance(theirs, dict) and theirs.get("job") == mine["job"]
                   and str(theirs.get("restart")) != mine["restart"])
    return earlier and (holder.get("host") != socket.gethostname() or not _alive(holder))


def _alive(holder: dict) -> bool:
    """Whether the process ``holder`` names still runs (``True`` when it cannot be told)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        process = psutil.Process(int(holder["pid"]))
        return abs(process.create_time() - float(holder["started"])) < 1.0  # not a reused pid
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False


class RunDirLock:
    """The lock of one run directory (see module)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.held = False

    def holder(self) -> Optional[dict]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # torn or foreign content: a holder we cannot name

    def acquire(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        me = _this_process()
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released in between
                if holder and _earlier_run_of_this_job(holder):
                    print(f"warning: taking over the lock {self.path!r} of pid "
                          f"{holder.get('pid')} on {holder.get('host')}: an earlier run of this "
                          f"Slurm job ({holder['slurm']['job']}, restart "
                          f"{holder['slurm'].get('restart')}), gone since Slurm requeued it",
                          file=sys.stderr, flush=True)
                    os.remove(self.path)
                    continue
                if holder and not _alive(holder):
                    print(f"warning: removing the stale lock {self.path!r} of pid "
                          f"{holder.get('pid')} on {holder.get('host')} (that process is gone)",
                          file=sys.stderr, flush=True)
                    os.remove(self.path)
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S",
                                      time.localtime(float(holder.get("started", 0))))
                raise ValueError(
                    f"run directory {self.run_dir!r} is in use by pid {holder.get('pid', '?')} on "
                    f"host {holder.get('host', '?')} (running since {since}): two jobs must not "
                    f"write one run directory. Pass another --save, or, if that job is gone, "
                    f"delete {self.path!r}")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise ValueError(f"could not take the lock {self.path!r}: another job keeps taking it")

    def release(self) -> None:
        if self.held and (self.holder() or {}).get("pid") == os.getpid():
            os.remove(self.path)
        self.held = False


@contextmanager
def holding_run_dir(run_dir: Optional[str]) -> Iterator[None]:
    """Rank 0 holds ``run_dir``'s lock inside (nothing when ``run_dir`` is None); every rank
    raises the same ValueError when it is taken or cannot be written, so none is left waiting
    at a collective."""
    import torch.distributed as dist

    if not run_dir:
        yield
        return
    lock = RunDirLock(run_dir)
    created = not os.path.exists(run_dir)
    outcome = [None]
    if dist.get_rank() == 0:
        try:
            lock.acquire()
        except ValueError as error:
            outcome = [str(error)]
        except OSError as error:  # a read-only or forbidden --save: every rank says so
            from ..cli_errors import describe_os_error

            outcome = [f"cannot write --save {run_dir!r}: {describe_os_error(error)}"]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise ValueError(outcome[0])
    try:
        yield
    finally:
        lock.release()
        if created and dist.get_rank() == 0 and os.path.isdir(run_dir) and not os.listdir(run_dir):
            os.rmdir(run_dir)  # a run that failed before writing anything leaves nothing


def exit_with_launcher(*, poll_seconds: float = 1.0) -> Optional[threading.Thread]:
    """Under torchrun, end this process (exit status 1) once its parent process is gone."""
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return None
    parent = os.getppid()

    def watch():
        while True:
            if os.getppid() != parent:  # re-parented: the launcher died
                print(f"error: the launcher (pid {parent}) is gone; rank exits",
                      file=sys.stderr, flush=True)
                os._exit(1)
            time.sleep(poll_seconds)

    thread = threading.Thread(target=watch, name="exit-with-launcher", daemon=True)
    thread.start()
    return thread
