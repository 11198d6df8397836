"""The tools on crafted and damaged Megatron checkpoints, as a careful user would try them: no
command from a checkpoint's files runs, and every bad input is one clear error, exit status 1,
no traceback and no output left behind. Each tool runs in this process (its ``main``)."""
import contextlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "dist"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
from crafted import craft_metadata  # noqa: E402
from training_utils import cli_flags, make_token_dataset, tiny_options  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "1",
       "PYTHONWARNINGS": "ignore"}


def _main(tool: str):
    if tool == "train":
        from megatron_masklm.train import main
    elif tool == "eval_ppl":
        from eval_ppl import main
    elif tool == "prune_oneshot":
        from prune_oneshot import main
    elif tool == "export_masks":
        from export_masks import main
    else:
        from convert_megatron_to_hf import main
    return main


def run_tool(tool: str, *argv):
    """(exit status, stderr) of a tool's main in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = _main(tool)([str(a) for a in argv])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-iteration tiny run (mask logits, optimizer, RNG state), its data and eval text."""
    root = tmp_path_factory.mktemp("safety")
    prefix = make_token_dataset(str(root))
    options = tiny_options(prefix, train_iters=2, log_interval=1, eval_iters=0)
    run_dir = str(root / "run")
    code, err = run_tool("train", *cli_flags(options), "--save", run_dir)
    assert code == 0, err
    (root / "eval.txt").write_text(" ".join(str((3 * i + 1) % 63) for i in range(200)))
    return {"root": root, "run": run_dir, "options": options, "text": str(root / "eval.txt")}


def _copy(trained, tmp_path):
    run = str(tmp_path / "copy")
    shutil.copytree(trained["run"], run)
    return run, os.path.join(run, "iter_0000002")


def _commands(trained, run, out):
    options = {k: v for k, v in trained["options"].items() if k != "train_iters"}
    return {
        "export_masks": ("export_masks", "--load-dir", run, "--output", out),
        "convert_megatron_to_hf": ("convert_megatron_to_hf", "--load-dir", run, "--save-dir", out),
        "eval_ppl --load": ("eval_ppl", "--load", run, "--text", trained["text"],
                            "--tokenizer-type", "NullTokenizer", "--seq-length", 16,
                            "--output", out),
        "prune_oneshot --load": ("prune_oneshot", "--load", run, "--method", "magnitude",
                                 "--output-mask", out, "--no-progress"),
        "train --pretrained-checkpoint": ("train", *cli_flags(options), "--train-iters", 3,
                                          "--pretrained-checkpoint", run, "--save", out),
        "train --load (resume)": ("train", *cli_flags(options), "--train-iters", 3, "--load", run,
                                  "--save", run),
    }


TOOLS = ["export_masks", "convert_megatron_to_hf", "eval_ppl --load", "prune_oneshot --load",
         "train --pretrained-checkpoint", "train --load (resume)"]


def _assert_clean_error(code, err, pattern):
    assert code == 1, err
    assert err.startswith("error:") and re.search(pattern, err), err
    assert "Traceback" not in err, err


@pytest.mark.parametrize("tool", TOOLS)
def test_a_crafted_metadata_is_refused_and_runs_nothing(trained, tmp_path, tool):
    run, iteration = _copy(trained, tmp_path)
    marker, out = str(tmp_path / "command_ran"), str(tmp_path / "out")
    craft_metadata(iteration, marker)
    code, err = run_tool(*_commands(trained, run, out)[tool])
    _assert_clean_error(code, err, r"builtins\.eval.*--trust-checkpoint")
    assert not os.path.exists(marker) and not os.path.exists(out)
    # the file really runs its command when unpickled the stock way
    with open(os.path.join(iteration, ".metadata"), "rb") as handle:
        pickle.load(handle)
    assert os.path.exists(marker)


def test_trust_checkpoint_opens_a_file_the_user_vouches_for(trained, tmp_path):
    run, iteration = _copy(trained, tmp_path)
    marker, out = str(tmp_path / "command_ran"), str(tmp_path / "masks.npz")
    craft_metadata(iteration, marker)
    code, err = run_tool("export_masks", "--load-dir", run, "--output", out, "--trust-checkpoint")
    assert code == 0, err
    assert os.path.exists(marker) and os.path.exists(out)


@pytest.mark.parametrize("tool", ["export_masks", "eval_ppl --load", "train --load (resume)"])
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_shard_is_named(trained, tmp_path, tool, damage):
    run, iteration = _copy(trained, tmp_path)
    shard = sorted(name for name in os.listdir(iteration) if name.endswith(".distcp"))[0]
    path = os.path.join(iteration, shard)
    if damage == "missing":
        os.remove(path)
        pattern = rf"incomplete: its shard '{shard}' is missing"
    else:
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            handle.truncate(size // 2)
        pattern = rf"incomplete: its shard '{shard}' has {size // 2} bytes but the metadata needs"
    out = str(tmp_path / "out")
    code, err = run_tool(*_commands(trained, run, out)[tool])
    _assert_clean_error(code, err, pattern)
    assert not os.path.exists(out)


def test_export_masks_refuses_to_overwrite(trained, tmp_path):
    out = tmp_path / "masks.npz"
    assert run_tool("export_masks", "--load-dir", trained["run"], "--output", out)[0] == 0
    before = out.read_bytes()
    code, err = run_tool("export_masks", "--load-dir", trained["run"], "--output", out)
    _assert_clean_error(code, err, r"already exists: pass --overwrite")
    assert out.read_bytes() == before
    assert run_tool("export_masks", "--load-dir", trained["run"], "--output", out,
                    "--overwrite")[0] == 0


def test_eval_of_a_truncated_safetensors_file_is_named(trained, tmp_path):
    pytest.importorskip("transformers")
    hf = tmp_path / "hf"
    assert run_tool("convert_megatron_to_hf", "--load-dir", trained["run"], "--save-dir", hf)[0] == 0
    weights = sorted(hf.glob("*.safetensors"))[0]
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    code, err = run_tool("eval_ppl", "--hf-dir", hf, "--text", trained["text"],
                         "--tokenizer-type", "NullTokenizer", "--seq-length", 16)
    _assert_clean_error(code, err, r"cannot read .*hf.*truncated, corrupt")


def test_train_with_a_tp_size_that_does_not_divide_the_world(trained, tmp_path):
    code, err = run_tool("train", *cli_flags(trained["options"]), "--tensor-model-parallel-size", 2,
                         "--save", tmp_path / "run")
    _assert_clean_error(code, err, r"world size 1 is not divisible by TP 2")


def test_a_second_job_on_a_locked_run_directory_is_refused(trained, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "masklm.lock").write_text(json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "started": psutil.Process().create_time()}))
    code, err = run_tool("train", *cli_flags(trained["options"]), "--save", run)
    _assert_clean_error(code, err, rf"in use by pid {os.getpid()} on host")
    assert sorted(os.listdir(run)) == ["masklm.lock"]


@pytest.mark.timeout(300)
def test_ranks_exit_when_only_the_launcher_is_killed(trained, tmp_path):
    """SIGKILL to torchrun alone (not its process group): its 2 ranks must not keep running."""
    options = dict(trained["options"], train_iters=100000, log_interval=1)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "megatron_masklm.train", *cli_flags(options), "--save", str(run_dir)]
    with open(tmp_path / "launcher.log", "w") as log:
        launcher = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    ranks = []
    try:
        train_log = run_dir / "logs" / "train_log.jsonl"
        deadline = time.monotonic() + 200
        while not (train_log.exists() and train_log.read_text().strip()):  # a step was taken
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no training step within 200 s"
            time.sleep(0.5)
        ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True)
                 if "megatron_masklm.train" in " ".join(p.cmdline())]
        assert len(ranks) == 2
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        gone, alive = psutil.wait_procs(ranks, timeout=60)
        assert not alive, f"ranks still running 60 s after the launcher died: {alive}"
    finally:
        for process in ranks:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
