"""A private one-node Slurm cluster: munged, slurmctld and slurmd started as root from their
Debian packages (``apt-get install slurmctld slurmd munge``; .ci/run does it), with their own
slurm.conf, key, ports, state, spool and log directories under one directory, and stopped (jobs
cancelled, daemons killed, state removed) afterwards. Nothing here touches /etc/slurm or a
system munged. ``why_not`` says why it cannot run here (no root, no binaries).
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue",
            "sinfo", "srun")
START_TIMEOUT_S = 90

SLURM_CONF = """\
ClusterName=masklmtest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
# cred_expire: a requeued job waits cred_expire + 1 s before it may start (default 120 s)
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
# linuxproc signals every descendant of a step, as proctrack/cgroup does on real clusters
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
KillWait=30
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=cpu Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def why_not() -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root to run slurmd and munged (a private one-node cluster)"
    missing = [name for name in PROGRAMS if not shutil.which(name, path=SBIN_PATH)]
    if missing:
        return (f"Slurm/munge not installed ({', '.join(missing)} missing): "
                "apt-get install -y slurmctld slurmd munge (.ci/run does it)")
    return None


def _free_ports(count: int):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def poll(what: str, check, *, timeout: float, interval: float = 0.5):
    """``check()``'s first truthy value within ``timeout`` seconds, else TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class SlurmCluster:
    """The running cluster: its config, the environment that points the clients at it."""

    root: Path
    node: str
    env: Dict[str, str]

    def run(self, *argv: str, check: bool = True, env: Optional[dict] = None,
            cwd: Optional[str] = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), env=env or self.env, cwd=cwd, capture_output=True,
                              text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def sbatch(self, *argv: str, env: dict, cwd: str) -> int:
        """Submit; the job id. ``env`` is the submitting shell's (sbatch exports it)."""
        env = {**env, "SLURM_CONF": self.env["SLURM_CONF"]}
        out = self.run("sbatch", "--parsable", *argv, env=env, cwd=cwd).stdout
        return int(out.strip().split(";")[0])

    def job(self, job_id: int) -> Dict[str, str]:
        """``scontrol show job``'s fields (values without spaces suffice here)."""
        line = self.run("scontrol", "show", "job", "--oneliner", str(job_id)).stdout
        return dict(re.findall(r"(\S+?)=(\S*)", line))

    def wait_for_state(self, job_id: int, *states: str, timeout: float) -> Dict[str, str]:
        def reached():
            job = self.job(job_id)
            return job if job["JobState"] in states else None
        try:
            return poll(f"job {job_id} to reach {states}", reached, timeout=timeout, interval=1.0)
        except TimeoutError as error:
            raise TimeoutError(f"{error}; it is {self.job(job_id)}") from None

    def log_tail(self, chars: int = 3000) -> str:
        logs = sorted((self.root / "log").glob("*"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in logs)


def _start(name: str, argv, root: Path, env: dict) -> subprocess.Popen:
    with open(root / "log" / f"{name}.out", "w") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(procs) -> None:
    for proc in reversed(procs):  # slurmd, slurmctld, then munged
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def cancel_all_jobs(cluster: SlurmCluster) -> None:
    jobs = cluster.run("squeue", "--noheader", "--format=%i", check=False).stdout.split()
    if jobs:
        cluster.run("scancel", *jobs, check=False)
        try:
            poll("the jobs to end", lambda: not cluster.run(
                "squeue", "--noheader", "--format=%i", check=False).stdout.split(), timeout=90)
        except TimeoutError:
            pass  # the daemons are killed next; slurmstepd ends its tasks when the job ends


def start(root: Path) -> Tuple[SlurmCluster, list]:
    """Write the config under ``root`` and start the daemons; the cluster and their processes.
    TimeoutError (the processes stopped again, the logs in the message) if one does not come up."""
    for sub in ("state", "spool", "log", "munge", "munge-key"):
        (root / sub).mkdir()
    (root / "munge-key").chmod(0o700)
    key = root / "munge-key" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    munge_socket = root / "munge" / "munge.sock"
    node = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(node=node, root=root, ctld_port=ctld_port,
                                      slurmd_port=slurmd_port, munge_socket=munge_socket))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(SLURM_CONF=str(conf), PATH=SBIN_PATH)
    cluster = SlurmCluster(root=root, node=node, env=env)

    procs = []
    try:
        procs.append(_start("munged", [
            "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
            f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/log/munged.log",
            f"--seed-file={root}/munge-key/munged.seed"], root, env))
        poll("munged", lambda: cluster.run("munge", "--socket", str(munge_socket), "--no-input",
                                           check=False).returncode == 0,
             timeout=START_TIMEOUT_S)
        procs.append(_start("slurmctld", ["slurmctld", "-D", "-f", str(conf)], root, env))
        poll("slurmctld", lambda: "UP" in cluster.run("scontrol", "ping", check=False).stdout,
             timeout=START_TIMEOUT_S)
        procs.append(_start("slurmd", ["slurmd", "-D", "-f", str(conf), "-N", node], root, env))
        poll(f"node {node} to be idle", lambda: cluster.run(
            "sinfo", "--noheader", "--format=%T", check=False).stdout.strip() == "idle",
             timeout=START_TIMEOUT_S)
    except (TimeoutError, OSError) as error:
        tail = cluster.log_tail()
        stop(procs)
        raise TimeoutError(f"{error}\n{tail}") from None
    return cluster, procs


def shut_down(cluster: SlurmCluster, procs: list) -> None:
    """Cancel every job, stop the daemons, remove the state, spool and key."""
    cancel_all_jobs(cluster)
    stop(procs)
    for sub in ("state", "spool", "munge-key"):
        shutil.rmtree(cluster.root / sub, ignore_errors=True)
