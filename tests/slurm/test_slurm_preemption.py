"""examples/slurm_8x8_a100.sbatch submitted to a real (private, one-node) Slurm, overridden for a
CPU node: 1 node, 2 ranks at TP=2 (GPUS_PER_NODE=2, --gpus-per-node=0), a tiny model. A requeue
mid-run and the time limit's warning signal (SIGUSR1, sent here with scancel) must both end in
a run whose per-iteration losses equal an uninterrupted run's, the reference run without Slurm.
"""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from private_slurm import poll

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "dist"))
from training_utils import make_token_dataset, tiny_options  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "examples" / "slurm_8x8_a100.sbatch"
TRAIN_ITERS, SAVE_INTERVAL = 40, 4
JOB_TIMEOUT_S = 300  # a job took 40-100 s here, its 2 cores shared with other runs (load 6-8)
# a step of 16 micro-batches takes a few tenths of a second: a test that acts on the first
# checkpoint (iteration 4) leaves the run 36 steps and 9 saves, tens of seconds, against a poll
# of 0.2 s plus one scontrol call
OPTIONS = dict(tensor_model_parallel_size=2, train_iters=TRAIN_ITERS, global_batch_size=32,
               log_interval=1, eval_iters=0)
ENV = {"OMP_NUM_THREADS": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "1", "PYTHONWARNINGS": "ignore"}


def _yaml(path: Path, options: dict) -> Path:
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in options.items()))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A token dataset, a run config, a dense checkpoint (a 1-step run: its weights are what
    --pretrained-checkpoint loads) and the reference losses of an uninterrupted torchrun run."""
    base = tmp_path_factory.mktemp("tiny")
    prefix = make_token_dataset(str(base))
    options = {k: v for k, v in tiny_options(prefix, **OPTIONS).items() if k != "data_path"}
    config = _yaml(base / "tiny_tp2.yaml", options)
    env = {**os.environ, **ENV}
    dense = base / "dense"
    subprocess.run([sys.executable, "-m", "megatron_masklm.train", "--config", str(config),
                    "--data-path", prefix, "--tensor-model-parallel-size", "1", "--train-iters",
                    "1", "--seed", "99", "--save", str(dense)],
                   env=env, check=True, capture_output=True, timeout=JOB_TIMEOUT_S)
    reference = base / "reference"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "megatron_masklm.train", "--config", str(config), "--data-path", prefix,
         "--pretrained-checkpoint", str(dense), "--load", str(reference), "--save",
         str(reference), "--save-interval", str(SAVE_INTERVAL), "--exit-signal-handler"],
        env=env, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = {it: losses[0] for it, losses in _losses(reference).items()}
    assert sorted(losses) == list(range(1, TRAIN_ITERS + 1))
    return dict(prefix=prefix, config=config, dense=dense, losses=losses)


def _records(run_dir: Path):
    path = run_dir / "logs" / "train_log.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "train"]


def _losses(run_dir: Path) -> dict:
    """Every logged loss of each iteration (several where a resumed run repeated it)."""
    losses = {}
    for record in _records(run_dir):
        losses.setdefault(record["iteration"], []).append(record["lm_loss"])
    return losses


def _attempts(out: Path):
    """The iterations each run of the script printed, from the job output (--open-mode=append:
    one file for every run of the job, each starting with the script's "job N (restart K)")."""
    attempts = []
    for line in out.read_text().splitlines():
        if re.match(r"job \d+ \(restart \d+\)", line):
            attempts.append([])
        elif re.match(r" iteration +\d+/", line):
            attempts[-1].append(int(line.split()[1].split("/")[0]))
    return attempts


def _checkpoints(run_dir: Path):
    return sorted(int(p.name[len("iter_"):]) for p in run_dir.glob("iter_*")
                  if not p.name.endswith(".partial"))


def _checkpointed(run_dir: Path) -> int:
    try:
        return int((run_dir / "latest_checkpointed_iteration.txt").read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _submit(cluster, tiny, run_dir: Path, out: Path) -> int:
    """sbatch the example as a user would on a CPU partition: overrides on the command line."""
    env = {**cluster.env, **ENV, "PATH": f"{Path(sys.executable).parent}:{cluster.env['PATH']}",
           "DATA_PATH": tiny["prefix"], "PRETRAINED_CKPT": str(tiny["dense"]),
           "RUN_DIR": str(run_dir), "GPUS_PER_NODE": "2", "SAVE_INTERVAL": str(SAVE_INTERVAL),
           # the script's default port (20000 + job id) repeats in every private cluster,
           # whose job ids start at 1: another session's run on this host would share it
           "MASTER_PORT": str(_free_port())}
    return cluster.sbatch("--nodes=1", "--gpus-per-node=0", "--time=20", f"--output={out}",
                          str(SBATCH), str(tiny["config"]), env=env, cwd=str(ROOT))


def _wait_mid_run(cluster, job_id: int, run_dir: Path, out: Path) -> int:
    """Wait for a checkpoint past iteration 0; fail if the run is already over."""
    def checkpointed():
        if cluster.job(job_id)["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING"):
            raise AssertionError(f"job {job_id} ended early: {cluster.job(job_id)}\n"
                                 f"{out.read_text()[-3000:]}")
        return _checkpointed(run_dir)
    saved = poll("a first checkpoint", checkpointed, timeout=JOB_TIMEOUT_S, interval=0.2)
    assert saved < TRAIN_ITERS, "the run finished before the test could act: slow it down"
    return saved


def _assert_clean_and_equal(run_dir: Path, reference: dict) -> None:
    assert _checkpointed(run_dir) == TRAIN_ITERS
    assert not (run_dir / "masklm.lock").exists()
    assert not list(run_dir.glob("*.partial"))
    for iteration, losses in _losses(run_dir).items():  # repeated iterations included
        assert losses == [reference[iteration]] * len(losses), iteration
    assert sorted(_losses(run_dir)) == list(range(1, TRAIN_ITERS + 1))


def _finished(cluster, job_id: int, out: Path) -> dict:
    job = cluster.wait_for_state(job_id, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                 "NODE_FAIL", "OUT_OF_MEMORY", timeout=JOB_TIMEOUT_S)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", \
        f"{job}\n{out.read_text()[-4000:]}"
    return job


def test_requeue_mid_run_resumes_with_the_uninterrupted_losses(slurm_cluster, tiny, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    job_id = _submit(slurm_cluster, tiny, run_dir, out)
    _wait_mid_run(slurm_cluster, job_id, run_dir, out)
    slurm_cluster.run("scontrol", "requeue", str(job_id))

    job = _finished(slurm_cluster, job_id, out)
    assert job["Restarts"] == "1"
    log = out.read_text()
    assert f"job {job_id} (restart 0)" in log and f"job {job_id} (restart 1)" in log
    first, second = _attempts(out)
    assert first[0] == 1 and first[-1] < TRAIN_ITERS, first
    # the second run goes on from the newest checkpoint the first left: the step in flight,
    # saved on Slurm's SIGTERM, or else the last periodic one
    resumed_from = max(c for c in _checkpoints(run_dir) if c <= first[-1])
    assert resumed_from >= SAVE_INTERVAL
    assert second == list(range(resumed_from + 1, TRAIN_ITERS + 1)), (first, second)
    _assert_clean_and_equal(run_dir, tiny["losses"])


def test_warning_signal_saves_the_current_step_and_exits_0(slurm_cluster, tiny, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    job_id = _submit(slurm_cluster, tiny, run_dir, out)
    _wait_mid_run(slurm_cluster, job_id, run_dir, out)
    # what --signal=USR1@300 does at the time limit: SIGUSR1 to the training step
    slurm_cluster.run("scancel", "--signal=USR1", str(job_id))

    job = _finished(slurm_cluster, job_id, out)
    assert job["Restarts"] == "0"
    (logged,) = _attempts(out)
    stopped_at = _checkpointed(run_dir)
    assert stopped_at == logged[-1] < TRAIN_ITERS, (stopped_at, logged)
    assert f"saved checkpoint iter_{stopped_at:07d} after SIGUSR1" in out.read_text()
    assert not (run_dir / "masklm.lock").exists()
    assert not list(run_dir.glob("*.partial"))

    job_id = _submit(slurm_cluster, tiny, run_dir, out)  # the resubmission resumes it
    _finished(slurm_cluster, job_id, out)
    assert _attempts(out) == [logged, list(range(stopped_at + 1, TRAIN_ITERS + 1))]
    _assert_clean_and_equal(run_dir, tiny["losses"])
