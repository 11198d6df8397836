"""The run-directory lock: one holder, named when refused; a dead holder's lock is taken over."""
import json
import os
import socket
import subprocess
import sys

import psutil
import pytest

from megatron_masklm.training.run_lock import LOCK_FILE, RunDirLock


def _write_holder(run_dir, **holder):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, LOCK_FILE), "w") as handle:
        json.dump(holder, handle)


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
    run_dir = str(tmp_path / "run")
    lock = RunDirLock(run_dir)
    lock.acquire()
    holder = json.load(open(os.path.join(run_dir, LOCK_FILE)))
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    lock.release()
    assert not os.path.exists(os.path.join(run_dir, LOCK_FILE))


def test_a_live_holder_is_refused_with_its_pid_and_host(tmp_path):
    run_dir = str(tmp_path / "run")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        _write_holder(run_dir, host=socket.gethostname(), pid=child.pid,
                      started=psutil.Process(child.pid).create_time())
        with pytest.raises(ValueError, match=rf"in use by pid {child.pid} on host "
                                             rf"{socket.gethostname()}.*delete .*{LOCK_FILE}"):
            RunDirLock(run_dir).acquire()
    finally:
        child.communicate(b"")
    # the same pid number, now free: the lock is stale and taken over
    lock = RunDirLock(run_dir)
    lock.acquire()
    assert json.load(open(os.path.join(run_dir, LOCK_FILE)))["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_does_not_hold_the_lock(tmp_path, capsys):
    """The pid is alive (this process) but started at another time: not the holder."""
    run_dir = str(tmp_path / "run")
    _write_holder(run_dir, host=socket.gethostname(), pid=os.getpid(),
                  started=psutil.Process().create_time() - 3600)
    lock = RunDirLock(run_dir)
    lock.acquire()
    assert "removing the stale lock" in capsys.readouterr().err
    lock.release()


def test_a_holder_on_another_host_is_never_taken_over(tmp_path):
    run_dir = str(tmp_path / "run")
    _write_holder(run_dir, host="some-other-node", pid=1, started=0.0)
    with pytest.raises(ValueError, match="pid 1 on host some-other-node"):
        RunDirLock(run_dir).acquire()
    assert os.path.exists(os.path.join(run_dir, LOCK_FILE))


def test_release_leaves_a_lock_it_does_not_hold(tmp_path):
    run_dir = str(tmp_path / "run")
    lock = RunDirLock(run_dir)
    lock.acquire()
    _write_holder(run_dir, host="some-other-node", pid=1, started=0.0)  # taken by hand
    lock.release()
    assert os.path.exists(os.path.join(run_dir, LOCK_FILE))


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lock(tmp_path, monkeypatch, capsys):
    """A node failure kills the job hard on node A; Slurm requeues it onto node B. The lock the
    first run left names another host, but the same job id with another restart count."""
    run_dir = str(tmp_path / "run")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _write_holder(run_dir, host="node-a", pid=1, started=0.0,
                  slurm={"job": "4242", "restart": "0"})
    lock = RunDirLock(run_dir)
    lock.acquire()
    assert "an earlier run of this Slurm job (4242, restart 0)" in capsys.readouterr().err
    holder = lock.holder()
    assert holder["pid"] == os.getpid() and holder["slurm"] == {"job": "4242", "restart": "1"}
    lock.release()


@pytest.mark.parametrize("slurm", [{"job": "4242", "restart": "1"},  # two steps of one run
                                   {"job": "777", "restart": "0"}])  # another job
def test_the_same_run_or_another_job_on_another_host_is_refused(tmp_path, monkeypatch, slurm):
    run_dir = str(tmp_path / "run")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    _write_holder(run_dir, host="node-a", pid=1, started=0.0, slurm=slurm)
    with pytest.raises(ValueError, match="pid 1 on host node-a"):
        RunDirLock(run_dir).acquire()


def test_an_earlier_run_of_this_job_still_alive_on_this_host_is_refused(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    me = psutil.Process()
    _write_holder(run_dir, host=socket.gethostname(), pid=me.pid, started=me.create_time(),
                  slurm={"job": "4242", "restart": "0"})  # a live process: still writing
    with pytest.raises(ValueError, match=f"pid {me.pid} on host"):
        RunDirLock(run_dir).acquire()
