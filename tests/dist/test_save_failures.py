"""A save that fails on rank 0 alone (its metadata, rename or pointer: a full disk) fails on every
rank with the same error, and leaves no partial checkpoint: no rank waits for it forever."""
import errno
import os

import pytest

from harness import run_distributed
from training_utils import make_token_dataset, run_config

pytestmark = [pytest.mark.dist, pytest.mark.timeout(300)]


def _save_with_a_full_disk_on_rank_0(*, rank, init_method, prefix, run_dir):
    from megatron_masklm.mcore import compat, initialize_distributed
    from megatron_masklm.training import checkpointing
    from megatron_masklm.training.builders import build_model_and_optimizer
    from megatron_masklm.training.checkpointing import TrainState, save_checkpoint

    initialize_distributed(init_method=init_method, seed=7, cuda_to_cpu_mode=True)
    config = run_config(prefix)
    _, gpt, optimizer, scheduler = build_model_and_optimizer(config)
    compat.materialize_optimizer_state(optimizer)  # Adam's state, as after a first step

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device", run_dir)

    checkpointing._commit = full_disk  # runs on rank 0 only
    try:
        save_checkpoint(run_dir, TrainState(iteration=3), model=gpt, optimizer=optimizer,
                        scheduler=scheduler, run_config=config)
    except OSError as error:
        return error.errno, sorted(os.listdir(run_dir))
    return None


def test_a_rank_0_failure_in_a_save_fails_every_rank(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    run_dir = str(tmp_path / "run")
    results = run_distributed(_save_with_a_full_disk_on_rank_0, prefix=prefix, run_dir=run_dir)
    assert results == [(errno.ENOSPC, ["model_shape.json"])] * 2  # by rank
