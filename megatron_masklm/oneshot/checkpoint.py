"""One-shot N:M pruning of a Megatron checkpoint (any TP) or a HF checkpoint: the prior that
mask training starts from, and the one-shot baselines it is compared with.

    torchrun --nproc-per-node TP tools/prune_oneshot.py --load CKPT --method sparsegpt \\
        --calib-text train.txt --output-mask prior.npz

(from code: ``prune_checkpoint(PruneJob(load=..., method="sparsegpt", ...))``).

The checkpoint's weights are read, never written: the result is a mask file (global Megatron
names, unsharded shapes: what ``--prior-mask`` of training reads), optionally the same masks
under HF names, and optionally new checkpoints holding the pruned weights (with SparseGPT's
weight update only when ``--update-weights`` is given). Every rank is one tensor-parallel rank.
"""
import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from .. import checkpoints as layout
from .config import PruneConfig

PRUNING_RECORD = "oneshot_pruning.json"
"""What a pruned checkpoint written here was made with (method, N:M, calibration, update)."""


@dataclass(kw_only=True)
class PruneJob:
    """What :func:`prune_checkpoint` does; tools/prune_oneshot.py's flags are these fields (same
    names and defaults)."""

    load: Optional[str] = None
    """Megatron checkpoint (a converted or training run directory, or a dist checkpoint)."""
    hf_checkpoint: Optional[str] = None
    """Or: a HF directory or .gguf file (one process; converted to a scratch checkpoint)."""
    trust_checkpoint: bool = False
    method: str
    pattern: str = "2:4"
    percdamp: float = 0.01
    blocksize: int = 128
    update_weights: bool = False
    fixed_mask: Optional[str] = None
    """A mask file (any of the project's formats, Megatron or HF names) to prune by instead of
    choosing a mask: SparseGPT's OBS update of the kept weights for that mask (implies
    ``update_weights``)."""
    calib_text: Optional[str] = None
    calib_data: Optional[List[str]] = None
    calib_samples: int = 128
    seq_length: int = 512
    micro_batch_size: int = 8
    tokenizer_type: Optional[str] = None
    tokenizer_model: Optional[str] = None
    output_mask: Optional[str] = None
    """The masks under global Megatron names; required unless ``fixed_mask`` gives them."""
    hf_masks: Optional[str] = None
    save: Optional[str] = None
    save_hf: Optional[str] = None
    overwrite: bool = False
    no_progress: bool = False


def _check_args(args) -> None:
    if bool(args.load) == bool(args.hf_checkpoint):
        raise ValueError("pass exactly one of --load (Megatron) and --hf-checkpoint (HF)")
    if args.fixed_mask:
        if args.method != "sparsegpt":
            raise ValueError(f"--fixed-mask reconstructs the weights for a given mask with "
                             f"SparseGPT's update: pass --method sparsegpt, not {args.method}")
        if not os.path.isfile(args.fixed_mask):
            raise ValueError(f"--fixed-mask {args.fixed_mask!r} is not a file: pass a mask file "
                             "(tools/export_masks.py, prune_oneshot.py --output-mask/--hf-masks)")
        if not (args.save or args.save_hf):
            raise ValueError("--fixed-mask computes weights for the given mask: pass --save or "
                             "--save-hf to say where to write them")
        args.update_weights = True
    elif not args.output_mask:
        raise ValueError("pass --output-mask FILE: where to write the mask this method chooses")
    if args.update_weights and args.method != "sparsegpt":
        raise ValueError(f"--update-weights is SparseGPT's weight update; {args.method} has none")
    if args.update_weights and not (args.save or args.save_hf):
        raise ValueError("--update-weights asks for the updated weights: pass --save or --save-hf "
                         "to say where to write them")
    if args.method != "magnitude" and bool(args.calib_text) == bool(args.calib_data):
        raise ValueError(f"{args.method} needs calibration data: pass one of --calib-text and "
                         "--calib-data")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.hf_checkpoint and world != 1:
        raise ValueError(f"--hf-checkpoint runs in one process, not {world}: convert with "
                         "tools/convert_hf_to_megatron.py first and pass --load under torchrun")
    if args.save_hf and world != 1:
        raise ValueError(f"--save-hf writes from one process, not {world}: pass --save and "
                         "convert it with tools/convert_megatron_to_hf.py")
    for path in filter(None, (args.output_mask, args.hf_masks, args.save, args.save_hf)):
        if os.path.lexists(path) and not args.overwrite:
            raise ValueError(f"{path!r} exists: pick a new output or pass --overwrite")
    _check_outputs(args)


def _check_outputs(args) -> None:
    """No output may be an input or another output (or lie inside one); mask files must not be
    directories, and every output must be writable: all checked before the pruning."""
    from ..cli_errors import refuse_overlap, same_or_nested
    from ..fileio import check_output_dir, check_writable

    outputs = {"--output-mask": args.output_mask, "--hf-masks": args.hf_masks,
               "--save": args.save, "--save-hf": args.save_hf}
    inputs = {"--load": args.load, "--hf-checkpoint": args.hf_checkpoint,
              "--calib-text": args.calib_text, "--tokenizer-model": args.tokenizer_model,
              "--fixed-mask": args.fixed_mask}
    for word in args.calib_data or ():
        for ext in (".bin", ".idx"):
            refuse_overlap(inputs={"--calib-data": word + ext}, outputs=outputs)
    refuse_overlap(inputs=inputs, outputs=outputs)
    given = [(flag, path) for flag, path in outputs.items() if path]
    for i, (flag, path) in enumerate(given):
        for other_flag, other in given[i + 1:]:
            if same_or_nested(path, other):
                raise ValueError(f"{flag} {path!r} and {other_flag} {other!r} are the same path "
                                 "(or one is inside the other): one would overwrite the other; "
                                 "give each output its own path")
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for flag in ("--output-mask", "--hf-masks"):
        if outputs[flag] and os.path.isdir(outputs[flag]):
            raise ValueError(f"{flag} {outputs[flag]!r} is a directory: name the .npz file to "
                             f"write, e.g. {os.path.join(outputs[flag], 'masks.npz')!r}")
        if outputs[flag]:
            check_writable(outputs[flag])
    for flag in ("--save", "--save-hf"):
        if outputs[flag]:
            check_output_dir(outputs[flag], overwrite=args.overwrite)


def _calibration(args, tokenizer_dir: Optional[str], vocab_size: int) -> Optional[torch.Tensor]:
    from ..data.calibration import blended_windows, text_windows
    from ..data.tokenizers import checkpoint_tokenizer

    if args.method == "magnitude":
        return None
    if args.calib_data:
        return blended_windows(args.calib_data, seq_length=args.seq_length,
                               num_samples=args.calib_samples)
    tokenizer = checkpoint_tokenizer(args.tokenizer_type, args.tokenizer_model,
                                     saved_dir=tokenizer_dir, vocab_size=vocab_size,
                                     purpose="for --calib-text")
    return text_windows(args.calib_text, tokenizer, seq_length=args.seq_length,
                        num_samples=args.calib_samples)


def _record(args, calibration: Optional[torch.Tensor]) -> Dict[str, Any]:
    return {"method": args.method, "pattern": args.pattern, "percdamp": args.percdamp,
            "blocksize": args.blocksize, "updated_weights": bool(args.update_weights),
            "fixed_mask": os.path.abspath(args.fixed_mask) if args.fixed_mask else None,
            "calibration": None if calibration is None else {
                "source": args.calib_text or " ".join(args.calib_data),
                "windows": int(calibration.shape[0]), "seq_length": int(calibration.shape[1])}}


def _save_megatron(model, output: str, info, *, dtype: torch.dtype, record: Dict[str, Any],
                   overwrite: bool) -> None:
    """A dense Megatron checkpoint laid out as the converter lays one out (its
    ``write_release_files``: release/, pointer, model_shape.json, hf_config.json, tokenizer/)
    plus the pruning record, written by all TP ranks, renamed by rank 0."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from ..convert.output import write_release_files
    from ..fileio import atomic_output_dir

    rank = dist.get_rank()
    with contextlib.ExitStack() as stack:
        holder: List[Any] = [stack.enter_context(atomic_output_dir(output, overwrite=overwrite))
                             if rank == 0 else None]
        dist.broadcast_object_list(holder, src=0)  # every rank writes into rank 0's temp dir
        tmp = holder[0]
        if rank == 0:
            os.makedirs(os.path.join(tmp, layout.RELEASE))
        dist.barrier()
        model.to(dtype)
        dist_checkpointing.save(model.sharded_state_dict(), os.path.join(tmp, layout.RELEASE))
        dist.barrier()
        if rank == 0:
            tokenizer = info.tokenizer_dir
            write_release_files(tmp, shape=info.shape, hf_config=info.hf_config,
                                save_tokenizer=tokenizer and (
                                    lambda target: shutil.copytree(tokenizer, target)))
            with open(os.path.join(tmp, PRUNING_RECORD), "w") as handle:
                json.dump(record, handle, indent=1)
    dist.barrier()  # renamed into place by rank 0


def prune_checkpoint(args: PruneJob) -> Dict[str, Any]:
    """Run the whole job ``args`` describes; returns a summary.

    Every process is one tensor-parallel rank (TP = world size, PP = 1); torch.distributed is
    initialised (and torn down) here unless the caller already did.
    """
    _check_args(args)
    from ..convert.megatron_to_hf import to_hf_tensors
    from ..masking import is_exact_nm, parse_nm, save_masks_npz
    from ..mcore.loading import checkpoint_dtype, load_dense_weights, load_model, open_checkpoint
    from ..mcore.parallel import tensor_parallel_world
    from .model import apply_global_masks, global_linear_shapes, prune_model

    n, m = parse_nm(args.pattern)
    config = PruneConfig(method=args.method, n=n, m=m, percdamp=args.percdamp,
                         blocksize=args.blocksize, micro_batch_size=args.micro_batch_size)
    started = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix="masklm-prune-") if args.hf_checkpoint else None
    try:
        source = args.load
        if args.hf_checkpoint:
            from ..convert import convert_hf_to_megatron

            source = convert_hf_to_megatron(args.hf_checkpoint, os.path.join(scratch, "megatron"),
                                            dtype="float32", progress=not args.no_progress)
        info = open_checkpoint(source)
        shape, hf_config = info.shape, info.hf_config
        if args.method != "magnitude" and args.seq_length > shape.max_position_embeddings:
            raise ValueError(f"--seq-length {args.seq_length} is beyond the model's "
                             f"max_position_embeddings of {shape.max_position_embeddings}: pass "
                             f"--seq-length {shape.max_position_embeddings} or less")
        calibration = _calibration(args, info.tokenizer_dir, shape.vocab_size)
        if calibration is not None and int(calibration.max()) >= shape.vocab_size:
            raise ValueError(f"calibration token id {int(calibration.max())} is outside the "
                             f"model's vocabulary of {shape.vocab_size}: use the model's tokenizer")
        with tensor_parallel_world():
            # dense at TP = world size, fp32 (the pruning maths and the layer passes run in fp32)
            source_dtype = checkpoint_dtype(info.directory, trust=args.trust_checkpoint)
            model = load_model(info.directory, shape=shape, dense=True, dtype=torch.float32,
                               sdpa_attention=True, use_te=False, trust=args.trust_checkpoint)
            fixed = None
            if args.fixed_mask:
                from ..convert.masks import read_global_masks

                fixed = read_global_masks(args.fixed_mask, global_linear_shapes(model), n=n, m=m,
                                          shape=shape)
            loaded = time.perf_counter()
            masks = prune_model(model, config, calibration, progress=not args.no_progress,
                                fixed_masks=fixed)
            pruned = time.perf_counter()
            bad = [name for name, mask in masks.items() if not is_exact_nm(mask, n, m)]
            if bad:  # pragma: no cover - the methods guarantee it; a failure here is a bug
                raise RuntimeError(f"pruned masks are not exactly {n}:{m}: {bad[:3]}")
            record = _record(args, calibration)
            rank0 = torch.distributed.get_rank() == 0
            hf_vocab = info.hf_vocab_size
            if rank0:
                if args.output_mask:
                    save_masks_npz(args.output_mask, masks)
                if args.hf_masks:
                    save_masks_npz(args.hf_masks, to_hf_tensors(masks, shape, hf_vocab_size=hf_vocab,
                                                                masked_only=True))
            if (args.save or args.save_hf) and args.method == "sparsegpt" and not args.update_weights:
                load_dense_weights(info.directory, model=model,  # the originals, then the masks
                                   trust=args.trust_checkpoint)
                apply_global_masks(model, masks)
            if args.hf_checkpoint:
                source_dtype = _config_dtype(hf_config) or source_dtype
            if args.save_hf:
                _save_hf(model, args.save_hf, shape, hf_config, hf_vocab, info.tokenizer_dir,
                         dtype=source_dtype, overwrite=args.overwrite)
            if args.save:
                _save_megatron(model, args.save, info, dtype=source_dtype, record=record,
                               overwrite=args.overwrite)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    kept = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    return {**record, "layers": len(masks), "exact_nm": True, "density": kept / total,
            "prune_seconds": round(pruned - loaded, 2),
            "total_seconds": round(time.perf_counter() - started, 2)}


def _save_hf(model, output: str, shape, hf_config, hf_vocab: int, tokenizer_dir: Optional[str], *,
             dtype: torch.dtype, overwrite: bool) -> None:
    """The model's (pruned) weights as a HF directory; TP=1 only (the model holds whole tensors)."""
    from ..convert.hf_config import hf_config_from_shape
    from ..convert.megatron_to_hf import to_hf_tensors, write_hf_dir

    params = {name: p.detach().to(dtype) for name, p in model.named_parameters()}
    tensors = to_hf_tensors(params, shape, hf_vocab_size=hf_vocab)
    config = hf_config or hf_config_from_shape(shape, vocab_size=hf_vocab,
                                               torch_dtype=str(dtype).replace("torch.", ""))
    write_hf_dir(output, tensors, config, tokenizer_dir, overwrite=overwrite)


def _config_dtype(hf_config: Optional[Dict[str, Any]]) -> Optional[torch.dtype]:
    from ..convert.hf_to_megatron import DTYPES

    name = str((hf_config or {}).get("dtype") or (hf_config or {}).get("torch_dtype") or "")
    return DTYPES.get(name.replace("torch.", ""))
