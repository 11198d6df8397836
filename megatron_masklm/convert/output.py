"""What every converter shares: an output directory that appears whole or not at all, and a
single-process Megatron world to build models in."""
import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_output_dir(output: str, *, overwrite: bool = False):
    """Yield a temporary sibling of ``output``; rename it to ``output`` only on success."""
    output = os.path.abspath(output)
    if os.path.exists(output) and not overwrite:
        raise ValueError(f"{output!r} exists: pick a new output directory or pass --overwrite")
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(output) + ".tmp-", dir=parent)
    try:
        yield tmp
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def megatron_world_of_one():
    """megatron_masklm.mcore with TP = PP = 1 in this process (set up and torn down if needed).

    Yields ``(mcore, dist_checkpointing)``; conversions read and write checkpoints at TP=1,
    which Megatron's dist checkpoints reshard to any other size.
    """
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from .. import mcore

    owned = not dist.is_initialized()
    if not owned and dist.get_world_size() != 1:
        raise RuntimeError("converters run in a single process (world size 1), not under torchrun")
    mcore.initialize_distributed(tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    try:
        yield mcore, dist_checkpointing
    finally:
        if owned:
            mcore.destroy_distributed()
