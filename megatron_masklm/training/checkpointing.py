"""Distributed checkpoints of a mask-training run: save atomically, resume exactly, start dense.

Layout (Megatron-LM's, ``megatron_masklm.checkpoints``)::

    <run dir>/latest_checkpointed_iteration.txt    the pointer, switched last
    <run dir>/model_shape.json                     the model's shape (no shape flags on resume)
    <run dir>/iter_0000100/                         a megatron.core dist checkpoint
        masklm_checkpoint.json                     iteration, N:M, scheduler, run config

A save writes ``iter_N.partial`` first, renames it when every rank has finished, and only then
switches the pointer: a crash at any point leaves the previous checkpoint loadable.
"""
import contextlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from ..architecture import ModelShape
from ..cli_errors import os_error_inside
from ..checkpoints import META_FILE, MODEL_SHAPE_FILE, POINTER_FILE, iteration_dir
from ..mcore import compat, safe_load
from ..mcore.model import load_model_tensors, without_te_extra_state
from .config import RunConfig

FORMAT = "megatron_masklm/1"
CKPT_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}
"""The distributed optimizer's canonical (per-parameter) layout: reshards across TP, PP and DP."""


@dataclass
class TrainState:
    """Where training stands: what a resumed run continues from."""

    iteration: int = 0
    consumed_train_samples: int = 0
    mask_reference: Optional[Dict[str, torch.Tensor]] = field(default=None, repr=False)
    """This rank's argmax mask choices at the last validation: what ``mask_change_fraction``
    is measured against. Saved per (PP, TP) rank, so it resumes at the same split."""


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rng_object() -> ShardedObject:
    """This rank's RNG states, one object per (PP, TP, DP) rank."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {  # tensors and plain values only: it loads through torch's weights-only unpickler
        "random": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    ranks = _topology()
    return ShardedObject("rng_state", state, tuple(size for size, _ in ranks),
                         tuple(rank for _, rank in ranks), replica_id=0)


def _topology():
    return (
        (parallel_state.get_pipeline_model_parallel_world_size(),
         parallel_state.get_pipeline_model_parallel_rank()),
        (parallel_state.get_tensor_model_parallel_world_size(),
         parallel_state.get_tensor_model_parallel_rank()),
        (parallel_state.get_data_parallel_world_size(),
         parallel_state.get_data_parallel_rank()),
    )


def _mask_reference_object(choices: Optional[Dict[str, torch.Tensor]]) -> ShardedObject:
    """One object per (PP, TP) rank; the data-parallel replicas hold the same choices."""
    (pp, pp_rank), (tp, tp_rank), (_, dp_rank) = _topology()
    return ShardedObject("mask_reference", choices, (pp, tp), (pp_rank, tp_rank),
                         replica_id=dp_rank)


def _restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(state["random"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else keys  # an ndarray in older checkpoints
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss,
                         cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def start_writer_helpers() -> None:
    """Start megatron's checkpoint-writer helper (the spawned Manager process behind its results
    queue) now rather than at the first save, so that, started inside
    :meth:`.signals.ExitSignalHandler.ignored`, it ignores the exit signals a job step's
    processes all receive."""
    compat.start_checkpoint_writer_helper()


def _write_shards(state: Dict[str, Any], directory: str) -> None:
    """All ranks write their shards (a seam for crash tests)."""
    dist_checkpointing.save(state, directory)


def save_checkpoint(run_dir: str, train_state: TrainState, *, model, optimizer, scheduler,
                    run_config: RunConfig,
                    before_commit: Callable[[], None] = lambda: None) -> str:
    """Save model (weights and logits), optimizer, scheduler, RNG and config; return the dir.

    On any failure (a full disk, Ctrl-C, a signal) every rank removes ``iter_N.partial`` and
    re-raises: the pointer keeps naming the previous checkpoint and nothing partial is left.
    ``before_commit`` runs on every rank once all shards are written, before the metadata,
    renames and pointer switch: the one point where a save may still be abandoned (a second
    exit signal's seam)."""
    final = iteration_dir(run_dir, train_state.iteration)
    partial = final + ".partial"
    def prepare():
        os.makedirs(run_dir, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by a crash during an earlier save
        os.makedirs(partial)

    def finish():
        _write_meta(partial, run_dir, train_state, scheduler=scheduler, run_config=run_config)
        _commit(partial, final, run_dir, train_state.iteration)

    try:
        _on_rank_0(prepare)
        _write_partial(partial, train_state, model=model, optimizer=optimizer)
        dist.barrier()
        before_commit()
        _on_rank_0(finish)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        # torch's CheckpointException (its writers' errors) is a BaseException, not Ctrl-C
        writer_error = isinstance(error, Exception) or hasattr(error, "failures")
        disk = None if isinstance(error, OSError) or not writer_error else os_error_inside(error)
        if disk is not None:  # name the disk error, not its wrapper
            raise OSError(disk.errno, disk.strerror, disk.filename or partial) from error
        raise
    return final


def _on_rank_0(work: Callable[[], None]) -> None:
    """``work`` on rank 0, then its error (if any) raised on every rank: none waits for it."""
    outcome = [None]
    if dist.get_rank() == 0:
        try:
            work()
        except BaseException as error:  # Ctrl-C too: the other ranks must not wait for it
            outcome = [error]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise outcome[0]


def _write_partial(partial: str, train_state: TrainState, *, model, optimizer) -> None:
    model_state = model.sharded_state_dict(metadata=dict(CKPT_METADATA))
    state = {
        "model": model_state,
        "optimizer": optimizer.sharded_state_dict(model_state, metadata=dict(CKPT_METADATA)),
        "rng_state": _rng_object(),
    }
    if train_state.mask_reference is not None:
        state["mask_reference"] = _mask_reference_object(train_state.mask_reference)
    _write_shards(state, partial)


def _write_meta(partial: str, run_dir: str, train_state: TrainState, *, scheduler,
                run_config: RunConfig) -> None:
    meta = {
        "format": FORMAT,
        "iteration": train_state.iteration,
        "consumed_train_samples": train_state.consumed_train_samples,
        "pattern": run_config.mask.pattern,
        "topology": [size for size, _ in _topology()],
        "mask_reference": train_state.mask_reference is not None,
        "scheduler": scheduler.state_dict(),
        "run_config": run_config.to_dict(),
    }
    _atomic_write(os.path.join(partial, META_FILE), json.dumps(meta, indent=1))
    _atomic_write(os.path.join(run_dir, MODEL_SHAPE_FILE),
                  json.dumps(_shape_dict(run_config.model), indent=1))


def _commit(partial: str, final: str, run_dir: str, iteration: int) -> None:
    """Rename the finished save into place, then switch the pointer to it (rank 0)."""
    if os.path.exists(final):  # re-saving an iteration (e.g. after a resume)
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync_dir(run_dir)
    _atomic_write(os.path.join(run_dir, POINTER_FILE), str(iteration))
    _fsync_dir(run_dir)


def _shape_dict(shape: ModelShape) -> Dict[str, Any]:
    return asdict(shape)


def read_checkpoint_meta(directory: str) -> Dict[str, Any]:
    """The masklm metadata of a checkpoint directory; clear errors for anything else."""
    path = os.path.join(directory, META_FILE)
    if not os.path.isdir(directory):
        raise ValueError(f"checkpoint directory {directory!r} does not exist (the pointer file "
                         "names a checkpoint that is gone)")
    if not os.path.exists(path):
        raise ValueError(
            f"{directory!r} is not a megatron_masklm checkpoint (no {META_FILE}); to learn masks "
            "for a dense Megatron checkpoint pass it as --pretrained-checkpoint instead of --load")
    try:
        with open(path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path!r}: {error}") from error
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} has format {meta.get('format')!r}; this release reads {FORMAT!r}")
    return meta


def _check_compatible(meta: Dict[str, Any], run_config: RunConfig, directory: str) -> None:
    if meta["pattern"] != run_config.mask.pattern:
        raise ValueError(
            f"checkpoint {directory!r} holds {meta['pattern']} mask logits but this run asks for "
            f"--pattern {run_config.mask.pattern}: resume with --pattern {meta['pattern']}, or "
            "start a new run directory from --pretrained-checkpoint")
    saved_frozen = bool(meta["run_config"].get("mask", {}).get("frozen", False))
    if saved_frozen != run_config.mask.frozen:
        what = "weight recovery under a fixed mask" if saved_frozen else "mask learning"
        raise ValueError(f"checkpoint {directory!r} is a {what} run: resume it "
                         f"{'with' if saved_frozen else 'without'} --fixed-mask")
    saved_shape = meta["run_config"]["model"]
    current = _shape_dict(run_config.model)
    diff = {k: (saved_shape.get(k), v) for k, v in current.items() if saved_shape.get(k) != v}
    if diff:
        raise ValueError(f"checkpoint {directory!r} was saved for another model shape: "
                         + ", ".join(f"{k} saved {a} vs now {b}" for k, (a, b) in diff.items()))


def load_checkpoint(directory: str, *, model, optimizer, scheduler, run_config: RunConfig,
                    trust: bool = False) -> TrainState:
    """Resume from a checkpoint this package saved, at any TP/PP size (RNG only at the same one).

    No code from the files runs unless ``trust`` (``mcore.safe_load``)."""
    meta = read_checkpoint_meta(directory)
    _check_compatible(meta, run_config, directory)
    model_state = without_te_extra_state(model.sharded_state_dict(metadata=dict(CKPT_METADATA)))
    safe_load.check_tensors_present(model_state, directory, what="checkpoint", trust=trust)
    compat.materialize_optimizer_state(optimizer)
    state = {"model": model_state, "optimizer": optimizer.sharded_state_dict(
        model_state, is_loading=True, metadata=dict(CKPT_METADATA))}
    same_topology = meta["topology"] == [size for size, _ in _topology()]
    if same_topology:
        state["rng_state"] = _rng_object()
    same_split = meta["topology"][:2] == [size for size, _ in _topology()][:2]
    if meta.get("mask_reference") and same_split:
        state["mask_reference"] = _mask_reference_object(None)
    loaded = safe_load.load(state, directory, trust=trust)
    load_model_tensors(model, loaded["model"])
    compat.load_optimizer_state_dict(optimizer, loaded["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    if same_topology:
        _restore_rng(loaded["rng_state"])
    return TrainState(iteration=meta["iteration"],
                      consumed_train_samples=meta["consumed_train_samples"],
                      mask_reference=loaded.get("mask_reference"))
