"""HF checkpoint (LLaMA, Mistral, Qwen2, Qwen3) -> Megatron-Core dist checkpoint, one tensor at a time.

The output is a torch_dist checkpoint of the dense GPTModel (local-spec keys, which are also
the Transformer Engine spec's keys), readable at any TP/PP size, laid out as Megatron-LM lays out
converted checkpoints::

    OUT/latest_checkpointed_iteration.txt   "release"
    OUT/release/                            the dist checkpoint
    OUT/model_shape.json                    ModelShape: training needs no shape flags
    OUT/hf_config.json                      the source config (for the way back)
    OUT/tokenizer/                          the source tokenizer files

Each Megatron tensor is built from its HF tensors and written to a memory-mapped scratch file,
so the process holds only the tensors of the parameter being converted; the dist checkpoint
writer then streams the scratch files to disk.
"""
import contextlib
import ctypes
import errno
import math
import os
import shutil
from typing import Optional

import torch
from tqdm import tqdm

from .. import checkpoints as layout
from .hf_config import shape_from_hf_config
from .name_map import param_maps
from ..fileio import atomic_output_dir, check_output_dir
from .output import megatron_world_of_one, write_release_files
from .sources import HFCheckpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert_hf_to_megatron(source: str, output: str, *, tensor_model_parallel_size: int = 1,
                           pipeline_model_parallel_size: int = 1, dtype: Optional[str] = None,
                           make_vocab_size_divisible_by: int = 128, overwrite: bool = False,
                           progress: bool = True) -> str:
    """Convert ``source`` (HF directory or .gguf file) into the Megatron checkpoint ``output``.

    The target TP/PP sizes are checked (query groups, layers, padded vocabulary) so that the
    checkpoint loads at them; it also loads at any other size those checks allow.
    """
    _check_sizes(tensor_model_parallel_size, pipeline_model_parallel_size,
                 make_vocab_size_divisible_by)
    check_output_dir(output, overwrite=overwrite)
    checkpoint = HFCheckpoint(source)
    hf_vocab = checkpoint.config["vocab_size"]
    shape = shape_from_hf_config(
        checkpoint.config, vocab_multiple=make_vocab_size_divisible_by * tensor_model_parallel_size)
    saved = checkpoint.config.get("dtype") or checkpoint.config.get("torch_dtype")  # v5 / v4 key
    torch_dtype = _dtype(dtype or saved or "float32")
    maps = param_maps(shape, hf_vocab_size=hf_vocab)
    _check_names(checkpoint, maps, shape)
    with _freed_tensors_return_to_the_os(), \
            megatron_world_of_one() as (mcore, dist_checkpointing), \
            atomic_output_dir(output, overwrite=overwrite) as tmp:
        mcore.build_transformer_config(  # refuses sizes the shape cannot be split into
            shape, tensor_model_parallel_size=tensor_model_parallel_size,
            pipeline_model_parallel_size=pipeline_model_parallel_size)
        config = mcore.build_transformer_config(
            shape, params_dtype=torch_dtype, use_cpu_initialization=True,
            perform_initialization=False)
        model = mcore.build_dense_gpt_model(shape, config=config)
        params = dict(model.named_parameters())
        model_bytes = sum(p.numel() for p in params.values()) * torch_dtype.itemsize
        # the scratch files and the checkpoint are on disk together while it is written
        _require_free_space(tmp, output, 2 * model_bytes,
                            "converting (the checkpoint plus as much scratch)")
        scratch = os.path.join(tmp, ".scratch")
        os.makedirs(scratch)
        for index, pm in enumerate(tqdm(maps, desc="converting", unit="tensor", disable=not progress)):
            tensor = pm.to_megatron(*(checkpoint.get(name) for name in pm.hf))
            param = params[pm.megatron]
            if tuple(tensor.shape) != tuple(param.shape):
                raise ValueError(f"{', '.join(pm.hf)} give shape {tuple(tensor.shape)} but the config "
                                 f"implies {tuple(param.shape)} for {pm.megatron}: the weights do "
                                 "not match config.json")
            buffer = _file_backed(os.path.join(scratch, f"{index}.bin"), tensor.shape, torch_dtype)
            buffer.copy_(tensor)
            param.data = buffer
            del tensor
        state = _views_as_own_files(model.sharded_state_dict(), scratch)
        # the writer fails obscurely on a full disk; the GLU views' scratch came on top
        _require_free_space(tmp, output, model_bytes, "writing the checkpoint")
        dist_checkpointing.save(state, _mkdir(os.path.join(tmp, layout.RELEASE)))
        del state
        del model, params
        _rmtree(scratch)
        write_release_files(tmp, shape=shape, hf_config=checkpoint.config,
                            save_tokenizer=checkpoint.save_tokenizer)
    return output


def _check_sizes(tp: int, pp: int, vocab_multiple: int) -> None:
    """Sizes below 1 are refused by flag (Megatron's own message names neither)."""
    for flag, value, rule in (
            ("--target-tensor-parallel-size", tp,
             "and divide the attention heads and query groups"),
            ("--target-pipeline-parallel-size", pp, "and divide the layers"),
            ("--make-vocab-size-divisible-by", vocab_multiple, "(128 is Megatron-LM's default)")):
        if value < 1:
            raise ValueError(f"{flag} {value} is out of range: it must be >= 1 {rule} "
                             "(1: no splitting)")


def _views_as_own_files(state, scratch: str):
    """Build Megatron's sharded-tensor factories (the GLU fc1 gate/up halves) now and give every
    piece that is a view into a larger tensor its own memory-mapped file: the checkpoint writer
    copies such views into memory, all at once (measured: every layer's fc1 held together)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    apply_factories(state)
    for index, sharded in enumerate(nested_values(state)):
        data = getattr(sharded, "data", None)
        if not isinstance(sharded, ShardedTensor) or data is None:
            continue
        if data.untyped_storage().nbytes() != data.numel() * data.element_size():
            own = _file_backed(os.path.join(scratch, f"view{index}.bin"), data.shape, data.dtype)
            own.copy_(data)
            sharded.data = own
    return state


def _require_free_space(tmp: str, output: str, needed: int, purpose: str) -> None:
    free = shutil.disk_usage(tmp).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{purpose} needs about {_size(needed)} free next to {output!r} "
                      f"but {_size(free)} is free: free space there or pick a --save-dir on another "
                      "filesystem")


def _file_backed(path: str, shape, dtype: torch.dtype) -> torch.Tensor:
    """A tensor whose memory is the shared mapping of its own file, the file's blocks reserved
    first: on a full disk the reservation fails with ENOSPC, where writing into a sparse mapping
    kills the process with SIGBUS (leaving the temporary output behind). macOS has no
    posix_fallocate: there the file stays sparse, and the check up front is the guard."""
    numel = math.prod(shape)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if numel and hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, numel * dtype.itemsize)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise OSError(error.errno, f"no room for the conversion's scratch files in "
                      f"{os.path.dirname(path)!r} ({os.strerror(error.errno)}): free space there "
                      "or pick a --save-dir on another filesystem") from error
    finally:
        os.close(fd)
    return torch.from_file(path, shared=True, size=numel, dtype=dtype).view(shape)


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


@contextlib.contextmanager
def _freed_tensors_return_to_the_os():
    """Pin glibc's mmap threshold at 1 MiB while converting.

    glibc raises the threshold after large frees, after which freed tensors of up to 32 MiB stay
    in the heap and the process grows with the model (measured: +0.3 x the model); pinned, every
    tensor's memory goes back to the OS when it is freed. Afterwards the thresholds go to where
    glibc's own adjustment tops out (mmap 32 MiB, trim 64 MiB): left pinned, a process that
    goes on computing (tools/prune_oneshot.py --hf-checkpoint) page-faults on every large
    temporary (measured: 40% slower layer passes). No-op off glibc.
    """
    _mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        _mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        _mallopt(_M_TRIM_THRESHOLD, 64 << 20)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


def _mallopt(parameter: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(parameter, value)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def _check_names(checkpoint: HFCheckpoint, maps, shape) -> None:
    wanted = {name for pm in maps for name in pm.hf}
    present = set(checkpoint.names())
    missing = sorted(wanted - present)
    if missing:
        raise ValueError(f"{checkpoint.path!r} is missing {len(missing)} tensors the config needs, "
                         f"e.g. {missing[:3]}: the checkpoint is incomplete")
    extra = sorted(present - wanted - ({"lm_head.weight"} if shape.tied_embeddings else set()))
    if extra:
        raise ValueError(f"{checkpoint.path!r} has tensors a {shape.family} model of this config does "
                         f"not, e.g. {extra[:3]}: the architecture is not supported")


def _dtype(name) -> torch.dtype:
    name = str(name).replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def _mkdir(path: str) -> str:
    os.makedirs(path)
    return path


def _rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
