"""Perplexity of a Megatron checkpoint (any TP, hard masks) or of a Hugging Face directory
(optionally with a mask file) on a text file or an indexed dataset.

    torchrun --nproc-per-node TP tools/eval_ppl.py --load RUN_OR_CKPT --text eval.txt
    python tools/eval_ppl.py --hf-dir HF_DIR [--masks masks.npz] --data-path PREFIX

Windows (:func:`plan_windows`): the token stream is cut into windows of ``--seq-length`` tokens
starting every ``--stride`` tokens (default: the window length, non-overlapping). Every token is
scored once, by the first window that holds it with context before it: a non-overlapping window
scores all its tokens but the first, a sliding one only those the previous window did not score.
``--bos`` puts the tokenizer's BOS first in every window (and the window then also scores its
first text token). ``--keep-last`` adds a last window, the stream's final ``--seq-length`` tokens,
that scores the tail the full windows leave unscored. PPL = exp(sum of the scored tokens' NLL / their number), summed in float64.

The defaults are ../shared/BENCHMARK.md's protocol: text tokenized whole without special
tokens, non-overlapping 512-token windows, incomplete last window dropped.

A Megatron checkpoint is loaded strictly (every tensor of the model must be there) at TP = the
number of processes; a training run's mask logits give the final hard (argmax) N:M masks, as
training's validation and the exported checkpoints use them. Logits beyond the tokenizer's
vocabulary (Megatron's padding) are left out of the softmax.
"""
import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..masking.candidates import parse_nm


@dataclass(frozen=True)
class Window:
    """Tokens ``[start, start + length)`` of the stream; ``scored`` of them, at the end, are
    predicted (from the token before each, or from BOS for the first one)."""

    start: int
    length: int
    scored: int


def plan_windows(num_tokens: int, *, seq_length: int, stride: Optional[int] = None,
                 bos: bool = False, drop_last: bool = True) -> List[Window]:
    """The windows that score a stream of ``num_tokens`` tokens (see the module docstring).

    ``seq_length`` counts the BOS token when ``bos`` is set. Raises ValueError when the stream
    holds no full window (or nothing to score).
    """
    text_length = seq_length - 1 if bos else seq_length
    stride = text_length if stride is None else stride
    if text_length < 1 or (not bos and seq_length < 2):
        raise ValueError(f"seq_length {seq_length} is too short: need >= 2 tokens per window")
    if not 1 <= stride <= text_length:
        raise ValueError(f"stride {stride} must be between 1 and the window's {text_length} "
                         f"text tokens (seq_length {seq_length}{' with BOS' if bos else ''})")
    first_scored = 0 if bos else 1  # the first text token needs BOS (or nothing) before it
    windows, scored_until, start = [], 0, 0
    while start + text_length <= num_tokens:
        begin = max(start + first_scored, scored_until)
        windows.append(Window(start, text_length, start + text_length - begin))
        scored_until = start + text_length
        start += stride
    if not drop_last and scored_until < num_tokens:  # the tail: the last window's worth
        start = max(0, num_tokens - text_length)
        begin = max(start + first_scored, scored_until)
        if num_tokens - begin > 0:
            windows.append(Window(start, num_tokens - start, num_tokens - begin))
    if not windows or sum(w.scored for w in windows) == 0:
        raise ValueError(f"{num_tokens} tokens hold no full window of {text_length} text tokens: "
                         "pass a shorter --seq-length, --keep-last, or more text")
    return windows


def window_batches(ids: np.ndarray, windows: Sequence[Window], *, batch_size: int,
                   bos_id: Optional[int]):
    """Yield ``(tokens [b, s], targets [b, s - 1], score_mask [b, s - 1])`` batches; windows of
    one batch have equal length (a shorter last window gets a batch of its own)."""
    batch: List[Window] = []
    for window in list(windows) + [None]:
        if batch and (window is None or len(batch) == batch_size or window.length != batch[0].length):
            rows = [ids[w.start:w.start + w.length] for w in batch]
            tokens = torch.from_numpy(np.stack(rows).astype(np.int64))
            if bos_id is not None:
                tokens = torch.cat([torch.full((len(rows), 1), bos_id, dtype=torch.long), tokens], 1)
            mask = torch.zeros(len(rows), tokens.shape[1] - 1, dtype=torch.bool)
            for row, w in enumerate(batch):
                mask[row, mask.shape[1] - w.scored:] = True
            yield tokens, tokens[:, 1:], mask
            batch = []
        if window is not None:
            batch.append(window)


def score(logits_fn, ids: np.ndarray, windows: Sequence[Window], *, batch_size: int,
          bos_id: Optional[int], vocab_size: int, progress: bool = False):
    """``(NLL sum as float64, scored tokens)`` of ``logits_fn(tokens [b, s]) -> [b, s, >= V]``;
    only the first ``vocab_size`` logits (the tokenizer's vocabulary) enter the softmax."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    batches = window_batches(ids, windows, batch_size=batch_size, bos_id=bos_id)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=math.ceil(len(windows) / batch_size), desc="eval",
                       unit="batch", file=sys.stderr)
    with torch.no_grad():
        for tokens, targets, mask in batches:
            logits = logits_fn(tokens)[:, :-1, :vocab_size].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, vocab_size), targets.to(logits.device).reshape(-1),
                reduction="none").view(targets.shape)
            total += nll.double()[mask.to(nll.device)].sum().cpu()
            count += int(mask.sum())
    return total, count


# ----------------------------------------------------------------------------- models
def hf_logits_fn(hf_dir: str, *, masks: Optional[str] = None,
                 nm: Optional[Tuple[int, int]] = None, dtype: torch.dtype = torch.float32):
    """``(logits_fn, tokenizer_dir, info)`` of a HF causal LM directory, with ``masks`` (a mask
    file under HF names, either format) applied to its weights when given, strictly: a mask for
    every linear MaskLLM masks, each exactly ``nm`` (default: the file's N:M, else 2:4)."""
    from transformers import AutoModelForCausalLM

    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise ValueError(f"--hf-dir {hf_dir!r} is not a HF model directory (no config.json)")
    from ..convert.sources import guarded_read

    model, loading = guarded_read(hf_dir, lambda: AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=dtype, output_loading_info=True))
    _check_loaded(hf_dir, loading)
    model.eval()
    if masks:
        from ..masking.files import apply_masks_to_hf_model

        apply_masks_to_hf_model(model, masks, nm)
    device = next(model.parameters()).device
    return ((lambda tokens: model(input_ids=tokens.to(device), use_cache=False).logits), hf_dir,
            {"vocab_size": model.config.vocab_size,
             "max_positions": getattr(model.config, "max_position_embeddings", None)})


def _check_loaded(hf_dir: str, loading: Dict[str, Any]) -> None:
    """transformers initialises the tensors a checkpoint lacks at random and goes on: refuse."""
    missing = sorted(loading.get("missing_keys") or ())
    mismatched = sorted(str(entry[0]) if isinstance(entry, tuple) else str(entry)
                        for entry in loading.get("mismatched_keys") or ())
    if missing or mismatched:
        detail = (f"lack {len(missing)} tensors the config needs, e.g. {missing[:3]}" if missing
                  else f"have tensors whose shapes disagree with config.json, e.g. "
                       f"{mismatched[:3]}")
        raise ValueError(f"the weights in --hf-dir {hf_dir!r} {detail}: the checkpoint is "
                         "incomplete or does not match its config.json (transformers would "
                         "initialise them at random); re-export or re-download it")


def megatron_logits_fn(path: str, *, dtype: Optional[torch.dtype] = None, trust: bool = False):
    """``(logits_fn, tokenizer_dir, info)`` of a Megatron checkpoint at TP = world size; every
    rank calls ``logits_fn`` on the same tokens and gets the whole vocabulary's logits."""
    from megatron.core import parallel_state

    from .. import mcore
    from ..mcore.loading import load_model, open_checkpoint
    from ..mcore.parallel import gather_global_tensor

    info = open_checkpoint(path)
    model = load_model(info.directory, shape=info.shape, nm=info.nm, dtype=dtype,
                       sdpa_attention=True, trust=trust)
    model.eval()
    exact = all(mcore.check_nm(model).values())
    group = parallel_state.get_tensor_model_parallel_group()
    device = next(model.parameters()).device

    def logits_fn(tokens):
        tokens = tokens.to(device)
        positions = torch.arange(tokens.shape[1], device=device).expand_as(tokens)
        local = model(tokens, positions, None)  # [b, s, vocab / TP]
        return gather_global_tensor(local, axis=-1, stride=1, group=group)

    return logits_fn, info.tokenizer_dir, {
        "pattern": info.pattern, "exact_nm": exact if info.nm else None,
        "vocab_size": info.hf_vocab_size, "max_positions": info.shape.max_position_embeddings}


# ----------------------------------------------------------------------------- the job
@dataclass(kw_only=True)
class EvalJob:
    """What :func:`evaluate` does; tools/eval_ppl.py's flags are these fields (same names and
    defaults)."""

    load: Optional[str] = None
    """Megatron checkpoint: a training run, a converted or pruned checkpoint (any TP)."""
    trust_checkpoint: bool = False
    hf_dir: Optional[str] = None
    """Or: a HF causal LM directory (one process), with ``masks`` applied when given."""
    masks: Optional[str] = None
    pattern: Optional[str] = None
    text: Optional[str] = None
    data_path: Optional[str] = None
    tokenizer_type: Optional[str] = None
    tokenizer_model: Optional[str] = None
    seq_length: int = 512
    stride: Optional[int] = None
    bos: bool = False
    keep_last: bool = False
    max_windows: Optional[int] = None
    micro_batch_size: int = 4
    dtype: Optional[str] = None
    output: Optional[str] = None
    no_progress: bool = False


def _check_args(args) -> None:
    if (args.load is None) == (args.hf_dir is None):
        raise ValueError("pass exactly one of --load (Megatron) and --hf-dir (HF)")
    if args.masks and not args.hf_dir:
        raise ValueError("--masks applies to --hf-dir; a Megatron run's masks come from its logits")
    if args.masks and not os.path.isfile(args.masks):
        raise ValueError(f"--masks {args.masks!r} does not exist")
    if (args.text is None) == (args.data_path is None):
        raise ValueError("pass exactly one of --text and --data-path")
    if args.micro_batch_size < 1:
        raise ValueError(f"--micro-batch-size {args.micro_batch_size} must be >= 1")
    if args.max_windows is not None and args.max_windows < 1:
        raise ValueError(f"--max-windows {args.max_windows} must be >= 1")
    if args.hf_dir and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--hf-dir runs in one process; use --load under torchrun")
    if args.output:
        _check_output(args)


def _check_output(args) -> None:
    """--output must not be an input, nor a directory, and must be writable: checked before the
    model is loaded and scored, not after."""
    from ..cli_errors import refuse_overlap
    from ..fileio import check_writable

    inputs = {"--load": args.load, "--hf-dir": args.hf_dir, "--masks": args.masks,
              "--text": args.text, "--tokenizer-model": args.tokenizer_model}
    for ext in (".bin", ".idx") if args.data_path else ():
        refuse_overlap(inputs={**inputs, "--data-path": args.data_path + ext},
                       outputs={"--output": args.output})
    refuse_overlap(inputs=inputs, outputs={"--output": args.output})
    if os.path.isdir(args.output):
        raise ValueError(f"--output {args.output!r} is a directory: name the JSON file to write, "
                         f"e.g. {os.path.join(args.output, 'ppl.json')!r}")
    if int(os.environ.get("RANK", "0")) == 0:
        check_writable(args.output)


def _tokenizer(args, tokenizer_dir: Optional[str], vocab_size: int):
    from ..data.tokenizers import checkpoint_tokenizer

    return checkpoint_tokenizer(args.tokenizer_type, args.tokenizer_model, saved_dir=tokenizer_dir,
                                vocab_size=vocab_size, purpose="to read the text")


def evaluate(args: EvalJob) -> Dict[str, Any]:
    """Run the evaluation ``args`` describes; returns the result (on every rank)."""
    from ..data.calibration import indexed_token_ids, text_token_ids

    _check_args(args)
    nm = parse_nm(args.pattern) if args.masks and args.pattern is not None else None
    dtype = getattr(torch, args.dtype) if args.dtype else None
    started = time.perf_counter()
    if args.load:
        from ..mcore.parallel import tensor_parallel_world

        world = tensor_parallel_world()
    else:
        world = contextlib.nullcontext()
    with world:
        if args.load:
            logits_fn, tokenizer_dir, info = megatron_logits_fn(args.load, dtype=dtype,
                                                                 trust=args.trust_checkpoint)
        else:
            logits_fn, tokenizer_dir, info = hf_logits_fn(
                args.hf_dir, masks=args.masks, nm=nm, dtype=dtype or torch.float32)
        tokenizer = _tokenizer(args, tokenizer_dir, info["vocab_size"])
        if args.bos and getattr(tokenizer, "bos", None) is None:
            raise ValueError("--bos: the tokenizer has no BOS token")
        ids = (text_token_ids(args.text, tokenizer) if args.text
               else indexed_token_ids(args.data_path))
        if len(ids) and int(ids.max()) >= info["vocab_size"]:
            raise ValueError(f"token id {int(ids.max())} is outside the model's vocabulary of "
                             f"{info['vocab_size']}: use the model's tokenizer")
        limit = info.get("max_positions")
        if limit and args.seq_length > limit:
            raise ValueError(f"--seq-length {args.seq_length} is beyond the model's "
                             f"max_position_embeddings of {limit}: pass --seq-length {limit} or "
                             "less")
        windows = plan_windows(len(ids), seq_length=args.seq_length, stride=args.stride,
                               bos=args.bos, drop_last=not args.keep_last)
        windows = windows[:args.max_windows] if args.max_windows else windows
        loaded = time.perf_counter()
        rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        total, count = score(logits_fn, ids, windows, batch_size=args.micro_batch_size,
                             bos_id=tokenizer.bos if args.bos else None,
                             vocab_size=info["vocab_size"],
                             progress=rank0 and not args.no_progress)
    nll = total.item() / count
    return {"model": args.load or args.hf_dir, "masks": args.masks,
            "data": args.text or args.data_path, "ppl": math.exp(nll), "nll": nll,
            "scored_tokens": count, "windows": len(windows), "stream_tokens": int(len(ids)),
            "seq_length": args.seq_length, "stride": args.stride or windows[0].length,
            "bos": args.bos, "drop_last": not args.keep_last,
            "exact_nm": info.get("exact_nm"), "pattern": info.get("pattern"),
            "eval_seconds": round(time.perf_counter() - loaded, 2),
            "total_seconds": round(time.perf_counter() - started, 2)}
