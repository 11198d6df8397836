"""A single-process Megatron world for the converters to build models in."""
import contextlib


@contextlib.contextmanager
def megatron_world_of_one():
    """megatron_masklm.mcore with TP = PP = 1 in this process (set up and torn down if needed).

    Yields ``(mcore, dist_checkpointing)``; conversions read and write checkpoints at TP=1,
    which Megatron's dist checkpoints reshard to any other size.
    """
    from megatron.core import dist_checkpointing

    from .. import mcore
    from ..mcore.parallel import tensor_parallel_world

    with tensor_parallel_world(single_process=True):
        yield mcore, dist_checkpointing
