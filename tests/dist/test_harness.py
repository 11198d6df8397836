"""The 2-rank harness hands results over in a form that outlives the rank that sent them."""
import pickle

import pytest
import torch
import torch.multiprocessing as mp

from harness import run_distributed, to_bytes

pytestmark = pytest.mark.dist


def _send_and_exit(results, as_bytes):
    value = {"tensor": torch.arange(12, dtype=torch.float32).reshape(3, 4), "note": "done"}
    results.put(to_bytes(value) if as_bytes else value)


def _receive_after_sender_exited(as_bytes):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_send_and_exit, args=(results, as_bytes))
    proc.start()
    proc.join(timeout=120)  # the message is small: it sits in the pipe while the child is gone
    assert proc.exitcode == 0
    message = results.get(timeout=30)
    return pickle.loads(message) if as_bytes else message


def test_a_result_is_readable_after_its_sender_exited():
    value = _receive_after_sender_exited(as_bytes=True)
    assert value["note"] == "done"
    assert torch.equal(value["tensor"], torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_a_shared_memory_tensor_is_not_readable_after_its_sender_exited():
    """Why results travel as bytes: torch.multiprocessing sends a CPU tensor as a file-descriptor
    handle that the sender must still serve, so reading it after the sender exited fails (the
    race that made a dist test fail at random under load)."""
    with pytest.raises((FileNotFoundError, ConnectionError, EOFError, OSError)):
        _receive_after_sender_exited(as_bytes=False)


def _rank_tensor(rank, init_method):
    return torch.full((64, 64), float(rank))


def test_run_distributed_returns_tensors_by_rank():
    values = run_distributed(_rank_tensor, timeout=120)
    assert [float(v.mean()) for v in values] == [0.0, 1.0]
