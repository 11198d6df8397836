"""Run a function on 2 gloo ranks from inside pytest, with tracebacks and hard time limits.

The function must live at module level (spawn pickles it by reference). Each rank gets a
fresh interpreter, so Megatron's global parallel state never leaks between tests.

A rank's result crosses to the parent as plain bytes (``pickle.dumps`` in the child, tensors
by value), never through torch.multiprocessing's shared-memory handles: those refer to file
descriptors the child must still hold when the parent unpickles, so a child that finished
and exited first made the parent fail with FileNotFoundError in resource_sharer.
"""
import os
import pickle
import queue
import tempfile
import time
import traceback

import torch.multiprocessing as mp


def _worker(fn, rank, world_size, store_dir, kwargs, results):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1",
                      CUDA_DEVICE_MAX_CONNECTIONS="1")
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    try:
        value = fn(rank=rank, init_method=f"file://{store_dir}/pg_init", **kwargs)
        results.put((rank, "ok", to_bytes(value)))
    except BaseException:  # report everything, including assertion errors, to the parent
        results.put((rank, "error", traceback.format_exc()))
    finally:
        from megatron_masklm.mcore import destroy_distributed

        try:
            destroy_distributed()
        except Exception:
            pass


def to_bytes(value) -> bytes:
    """``value`` pickled by value with the standard pickler (a tensor's storage is copied into
    the bytes), so nothing the parent reads depends on this process being alive."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def run_distributed(fn, *, world_size: int = 2, timeout: float = 240.0, **kwargs):
    """Run ``fn(rank=..., init_method=..., **kwargs)`` on ``world_size`` ranks; return values
    by rank. The first failing rank's traceback is raised and the other ranks are killed."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as store_dir:
        procs = [ctx.Process(target=_worker, args=(fn, rank, world_size, store_dir, kwargs, results),
                             daemon=False) for rank in range(world_size)]
        for proc in procs:
            proc.start()
        values = {}
        try:
            deadline = time.monotonic() + timeout
            while len(values) < world_size:
                try:
                    rank, status, value = results.get(timeout=0.5)
                except queue.Empty:
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"rank process died with exit code {dead[0].exitcode}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"distributed test exceeded {timeout:.0f} s")
                    continue
                if status == "error":
                    raise AssertionError(f"rank {rank} failed:\n{value}")
                values[rank] = pickle.loads(value)
        finally:
            for proc in procs:
                proc.join(timeout=20 if len(values) == world_size else 0.1)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
    return [values[rank] for rank in range(world_size)]
