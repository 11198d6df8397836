"""Process-group and model-parallel set-up that works under torchrun on GPUs and on CPU."""
import contextlib
import datetime
import hashlib
import os
import random
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from . import compat
from .cpu_backend import (cpu_backend_enabled, disable_cpu_backend, enable_cpu_backend,
                          leave_cuda_to_cpu_mode)

MASK_NOISE_RNG = "masklm-gumbel-rng"
"""Name of the RNG-tracker state the masked layers draw their Gumbel noise from."""


def initialize_distributed(
    *,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    seed: int = 1234,
    init_method: Optional[str] = None,
    timeout_minutes: int = 30,
    cuda_to_cpu_mode: bool = False,
) -> None:
    """torch.distributed (NCCL on GPU, gloo on CPU), Megatron's parallel state and its RNGs.

    Reads RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; a plain ``python`` run is a
    world of one. Without CUDA it installs the CPU backend first.
    """
    on_cpu = enable_cpu_backend(cuda_to_cpu_mode=cuda_to_cpu_mode)
    if not dist.is_initialized():
        rank = int(os.environ.get("RANK", "0"))
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        store = None
        if init_method is None and world_size == 1 and "MASTER_ADDR" not in os.environ:
            store = dist.HashStore()  # a plain `python` run: a world of one, no port needed
        if not on_cpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(
            backend="gloo" if on_cpu else "nccl",
            init_method=init_method,
            store=store,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    world_size = dist.get_world_size()
    model_parallel = tensor_model_parallel_size * pipeline_model_parallel_size
    if world_size % model_parallel != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by TP {tensor_model_parallel_size} x "
            f"PP {pipeline_model_parallel_size}: launch a multiple of {model_parallel} ranks"
        )
    if parallel_state.model_parallel_is_initialized():  # re-split the same world (tests, tools)
        parallel_state.destroy_model_parallel()
    compat.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    set_random_seeds(seed)


def set_random_seeds(seed: int) -> None:
    """Seed Python, NumPy, torch and Megatron's model-parallel RNGs (per pipeline stage, as
    Megatron-LM does), then the Gumbel-noise RNG; building a model after this is reproducible."""
    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed % 2**32)
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)
    seed_mask_noise(seed, iteration=0)


def destroy_distributed() -> None:
    """Undo :func:`initialize_distributed` (tests re-initialise within one process)."""
    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    leave_cuda_to_cpu_mode()


@contextlib.contextmanager
def tensor_parallel_world(*, single_process: bool = False):
    """Every process one tensor-parallel rank (TP = world size, PP = 1), for the tools that
    read, prune and evaluate checkpoints. torch.distributed is set up here (from torchrun's
    WORLD_SIZE, or a world of one) unless the caller already did, and then torn down here too,
    with the CPU backend's patches if they were installed here.
    ``single_process``: refuse to run under a launcher with more than one process. Yields the
    world size."""
    owned = not dist.is_initialized()
    world = int(os.environ.get("WORLD_SIZE", "1")) if owned else dist.get_world_size()
    if single_process and world != 1:
        raise RuntimeError(f"this tool runs in a single process (world size 1, here {world}), "
                           "not under torchrun")
    patched_before = cpu_backend_enabled()
    initialize_distributed(tensor_model_parallel_size=world, pipeline_model_parallel_size=1)
    try:
        yield world
    finally:
        if owned:
            destroy_distributed()
            if not patched_before:  # a tool called from code leaves torch.cuda as it found it
                disable_cpu_backend()


def mask_noise_seed(seed: int, *, iteration: int, tp_rank: int, pp_rank: int, dp_rank: int) -> int:
    """A 63-bit seed that differs for every (seed, iteration, TP, PP, DP rank)."""
    text = f"masklm:{seed}:{iteration}:{tp_rank}:{pp_rank}:{dp_rank}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def seed_mask_noise(seed: int, *, iteration: int) -> None:
    """(Re)seed the Gumbel-noise RNG so noise is reproducible from (seed, iteration) and differs
    across tensor-, pipeline- and data-parallel ranks (every replica samples its own masks).

    Call it after :func:`initialize_distributed`, at the start of every iteration.
    """
    rng_seed = mask_noise_seed(
        seed,
        iteration=iteration,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(with_context_parallel=True),
    )
    tracker = tensor_parallel.get_cuda_rng_tracker()
    if MASK_NOISE_RNG not in tracker.get_states():
        tracker.add(MASK_NOISE_RNG, rng_seed)
    else:
        with tracker.fork(MASK_NOISE_RNG):
            torch.cuda.manual_seed(rng_seed)


def shard_global_tensor(tensor: torch.Tensor, *, axis: int, stride: int, world: int,
                        rank: int) -> torch.Tensor:
    """Rank ``rank``'s slice of an unsharded tensor split over ``world`` ranks along ``axis``;
    with ``stride`` 2 (a GLU fc1, [gate; up]) each rank holds its part of every half."""
    pieces = tensor.chunk(world * stride, dim=axis)
    return torch.cat(pieces[rank::world], dim=axis)


def gather_global_tensor(local: torch.Tensor, *, axis: int, stride: int, group) -> torch.Tensor:
    """Inverse of :func:`shard_global_tensor`: every rank of ``group`` gets the whole tensor."""
    world = group.size() if group is not None else 1
    if world == 1:
        return local.clone()
    shards = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(shards, local.contiguous(), group=group)
    parts = [shard.chunk(stride, dim=axis) for shard in shards]
    return torch.cat([parts[r][s] for s in range(stride) for r in range(world)], dim=axis)
