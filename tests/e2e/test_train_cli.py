"""The training CLI as users run it: torchrun at TP=2, a crash in the middle of a save, errors."""
import json
import os
import signal
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "dist"))
from training_utils import cli_flags, make_token_dataset, tiny_options  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "1",
       "PYTHONWARNINGS": "ignore"}


def _losses(run_dir):
    path = os.path.join(run_dir, "logs", "train_log.jsonl")
    return {r["iteration"]: r["lm_loss"] for r in map(json.loads, open(path)) if r["kind"] == "train"}


@pytest.mark.timeout(300)
def test_torchrun_tp2_from_a_yaml_config(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    options = tiny_options(prefix, tensor_model_parallel_size=2, train_iters=6, log_interval=2,
                           eval_interval=3)
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in options.items()))
    run_dir = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "megatron_masklm.train", "--config", str(yaml_path), "--save", run_dir]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "validation at iteration 6" in proc.stdout
    assert sorted(_losses(run_dir)) == [2, 4, 6]
    assert open(os.path.join(run_dir, "latest_checkpointed_iteration.txt")).read() == "6"
    meta = json.load(open(os.path.join(run_dir, "iter_0000006", "masklm_checkpoint.json")))
    assert meta["pattern"] == "2:4" and meta["run_config"]["parallel"]["tensor_model_parallel_size"] == 2


@pytest.mark.timeout(400)
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_resumable(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    options = tiny_options(prefix, train_iters=6, log_interval=1, eval_iters=0, save_interval=2)
    crashed, reference = str(tmp_path / "crashed"), str(tmp_path / "reference")

    script = os.path.join(HERE, "crash_during_save.py")
    log = tmp_path / "crash.log"
    with open(log, "w") as out:  # no pipes: the checkpoint writer's helper process outlives us
        proc = subprocess.Popen([sys.executable, script, "4", *cli_flags(options),
                                 "--save", crashed],
                                env=ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=240)
        finally:
            try:  # a killed node takes its helper processes with it; do the same here
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert open(os.path.join(crashed, "latest_checkpointed_iteration.txt")).read() == "2"
    assert os.path.isdir(os.path.join(crashed, "iter_0000004.partial"))  # the torn save
    assert not os.path.exists(os.path.join(crashed, "iter_0000004"))

    resume = [sys.executable, "-m", "megatron_masklm.train", *cli_flags(options),
              "--load", crashed, "--save", crashed]
    proc = subprocess.run(resume, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert open(os.path.join(crashed, "latest_checkpointed_iteration.txt")).read() == "6"
    assert not os.path.exists(os.path.join(crashed, "iter_0000004.partial"))

    full = [sys.executable, "-m", "megatron_masklm.train", *cli_flags(options), "--save", reference]
    proc = subprocess.run(full, env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _losses(reference)
    got = _losses(crashed)  # iterations 1-4 from the crashed run, 3-6 again from the resume
    assert got == {k: expected[k] for k in got} and sorted(got) == [1, 2, 3, 4, 5, 6]
