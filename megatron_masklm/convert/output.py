"""A single-process Megatron world for the converters to build models in."""
import contextlib


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
