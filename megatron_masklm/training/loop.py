"""The mask-training loop on megatron.core's stable parts.

Megatron-Core's DDP and (distributed) optimizer, its pipeline schedules, LR scheduler and dist
checkpoints; the mask schedules, the per-iteration Gumbel reseeding and the hard-mask
validation are ours. The same code runs with NCCL on GPUs and with gloo on CPU.
"""
import contextlib
import dataclasses
import functools
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.pipeline_parallel import get_forward_backward_func

from ..checkpoints import latest_checkpoint
from ..convert.masks import load_global_masks
from ..masking import MaskState, expected_mask, mask_state_at
from ..mcore import (apply_fixed_masks, apply_mask_state, apply_prior_masks, check_nm,
                     masked_linears, masks_off, seed_mask_noise, set_random_seeds)
from ..mcore.loading import load_dense_weights
from . import checkpointing
from .builders import build_data, build_model_and_optimizer, build_teacher, build_tokenizer_for
from .checkpointing import TrainState
from .config import DistillConfig, RunConfig
from .distillation import sequence_major_grad, vocab_parallel_kl
from .monitor import MetricsLogger, peak_memory_bytes, perplexity
from .run_lock import holding_run_dir
from .signals import ExitSignalHandler, SaveAborted, signal_name


class NonFiniteError(ValueError):
    """A non-finite loss, gradient norm or parameter: the run stops before anything is saved."""


@dataclass
class Run:
    """Everything a training run holds."""

    config: RunConfig
    ddp: torch.nn.Module
    gpt: torch.nn.Module
    optimizer: object
    scheduler: object
    train_data: object
    valid_data: Optional[object]
    state: TrainState = field(default_factory=TrainState)
    vocab_size: Optional[int] = None
    """The tokenizer's vocabulary (the model's rows past it are padding)."""
    checkpoint: Optional[str] = None
    """The checkpoint this run resumed from or last saved."""
    teacher: Optional[torch.nn.Module] = None
    """Weight recovery with distillation: a frozen dense copy of the pretrained weights (this
    rank's stage and shard). Mask learning's teacher is ``gpt`` itself with the masks off."""


def data_parallel_size() -> int:
    return parallel_state.get_data_parallel_world_size()


def num_microbatches(config: RunConfig) -> int:
    """Micro-batches per DP rank per step; the global batch must split evenly."""
    t = config.training
    per_step = t.micro_batch_size * data_parallel_size()
    if t.global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size {t.global_batch_size} is not divisible by micro_batch_size "
            f"{t.micro_batch_size} x data-parallel size {data_parallel_size()}")
    return t.global_batch_size // per_step


def microbatches(dataset, *, first_sample: int, config: RunConfig) -> List[Dict[str, torch.Tensor]]:
    """This DP rank's micro-batches of the global batch that starts at ``first_sample``.

    Sample order depends only on the sample index, so a resumed run reads exactly what an
    uninterrupted one would.
    """
    t = config.training
    dp_rank, dp = parallel_state.get_data_parallel_rank(), data_parallel_size()
    batches = []
    for j in range(num_microbatches(config)):
        start = first_sample + (j * dp + dp_rank) * t.micro_batch_size
        samples = [dataset[(start + i) % len(dataset)] for i in range(t.micro_batch_size)]
        batches.append({key: torch.stack([torch.as_tensor(s[key]) for s in samples])
                        for key in ("tokens", "labels", "loss_mask", "position_ids")})
    return batches


def _batch_on_device(batch, model):
    device = next(model.parameters()).device
    return (batch[k].to(device) for k in ("tokens", "labels", "loss_mask", "position_ids"))


def _masked_mean(per_token: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    mask = loss_mask.reshape(-1).float()
    return (per_token.float().reshape(-1) * mask).sum() / mask.sum().clamp(min=1.0)


def _forward_step(data_iterator: Iterator, model):
    batch = next(data_iterator)
    tokens, labels, loss_mask, positions = _batch_on_device(batch, model)
    output = model(tokens, positions, None, labels=labels)

    def loss_func(output_tensor):
        loss = _masked_mean(output_tensor, loss_mask)
        return loss, {"lm loss": loss.detach().clone()}

    return output, loss_func


def _teacher_forward_step(data_iterator: Iterator, model):
    """The dense teacher's forward (run under :func:`masks_off`); on the last pipeline stage its
    vocab-parallel logits are kept in the micro-batch for the student's step."""
    batch = next(data_iterator)
    tokens, _, _, positions = _batch_on_device(batch, model)
    output = model(tokens, positions, None)

    def keep_logits(output_tensor):
        batch["teacher_logits"] = output_tensor.detach()
        return output_tensor.new_zeros(()).float(), {}

    return output, keep_logits


def _distill_forward_step(data_iterator: Iterator, model, *, distill: DistillConfig,
                          vocab_size: int):
    """The student's forward: LM loss + distill_weight x T^2 KL(teacher || student) per token,
    both from the vocab-parallel logits (never gathered over the vocabulary)."""
    batch = next(data_iterator)
    tokens, labels, loss_mask, positions = _batch_on_device(batch, model)
    output = model(tokens, positions, None)

    def loss_func(logits):
        teacher = batch.pop("teacher_logits")
        logits = sequence_major_grad(logits)  # keeps the output layer's matmuls on fast kernels
        group = parallel_state.get_tensor_model_parallel_group()
        vocab_start = parallel_state.get_tensor_model_parallel_rank() * logits.shape[-1]
        kl = vocab_parallel_kl(logits, teacher, temperature=distill.distill_temperature,
                               vocab_start=vocab_start, vocab_size=vocab_size, group=group)
        # Megatron's cross-entropy shifts its input in place, so it comes after the KL
        lm = tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels)
        lm_loss, kl_loss = _masked_mean(lm, loss_mask), _masked_mean(kl, loss_mask)
        loss = lm_loss + distill.distill_weight * kl_loss
        return loss, {"lm loss": lm_loss.detach().clone(), "distill loss": kl_loss.detach().clone()}

    return output, loss_func


def _run_batches(run: Run, batches, *, forward_only: bool) -> Dict[str, float]:
    """Forward (+backward) over micro-batches; the DP-mean losses ("lm loss", and "distill
    loss" when distilling), known on every rank. Validation (``forward_only``) is LM loss only."""
    t, distill = run.config.training, run.config.distillation
    step, distilling = _forward_step, distill.enabled and not forward_only
    if distilling:
        _teacher_pass(run, batches)
        step = functools.partial(_distill_forward_step, distill=distill, vocab_size=run.vocab_size)
    losses = get_forward_backward_func()(
        forward_step_func=step, data_iterator=iter(batches), model=[run.ddp],
        num_microbatches=len(batches), seq_length=t.seq_length,
        micro_batch_size=t.micro_batch_size, forward_only=forward_only)
    keys = ["lm loss"] + (["distill loss"] if distilling else [])
    device = next(run.gpt.parameters()).device
    values = torch.zeros(len(keys), dtype=torch.float64, device=device)
    if parallel_state.is_pipeline_last_stage():
        values += torch.stack([torch.stack([d[k] for k in keys]) for d in losses]).double().mean(0)
        dist.all_reduce(values, group=parallel_state.get_data_parallel_group())
        values /= data_parallel_size()
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(values, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())
    return dict(zip(keys, values.tolist()))


@torch.no_grad()
def _teacher_pass(run: Run, batches) -> None:
    """A forward-only pipeline pass of the dense teacher (the same parameters with the masks
    off, or in weight recovery the separate frozen copy) over this step's micro-batches; the
    last stage keeps each one's logits in its batch."""
    t = run.config.training
    teacher = run.teacher if run.teacher is not None else run.ddp
    with masks_off(run.gpt) if run.teacher is None else contextlib.nullcontext():
        get_forward_backward_func()(
            forward_step_func=_teacher_forward_step, data_iterator=iter(batches), model=[teacher],
            num_microbatches=len(batches), seq_length=t.seq_length,
            micro_batch_size=t.micro_batch_size, forward_only=True)


def prepare_iteration(run: Run, iteration: int) -> MaskState:
    """Set this iteration's mask schedules and reseed the Gumbel noise from (seed, iteration).

    The regulariser weight is split over the micro-batches, as the LM loss is, so it adds up
    to lambda per step on every pipeline stage.
    """
    config = run.config
    state = mask_state_at(config.mask, iteration, config.training.train_iters)
    per_microbatch = dataclasses.replace(state, reg_weight=state.reg_weight / num_microbatches(config))
    apply_mask_state(run.gpt, per_microbatch)
    seed_mask_noise(config.training.seed, iteration=iteration)
    return state


def train_step(run: Run) -> Dict[str, float]:
    """One optimizer step over a global batch."""
    config, state = run.config, run.state
    mask_state = prepare_iteration(run, state.iteration)
    batches = microbatches(run.train_data, first_sample=state.consumed_train_samples, config=config)
    run.ddp.zero_grad_buffer()
    run.optimizer.zero_grad()
    losses = _run_batches(run, batches, forward_only=False)  # the same on every rank
    for key, what in (("lm loss", "loss"), ("distill loss", "distillation loss")):
        if key in losses and not math.isfinite(losses[key]):
            raise NonFiniteError(f"non-finite {what} ({losses[key]}) at iteration "
                                 f"{state.iteration + 1}")
    lr = max((g["lr"] for g in run.optimizer.param_groups if g["params"]), default=0.0)
    ok, grad_norm, _ = run.optimizer.step()  # the grad norm is reduced over all ranks
    if not ok or (grad_norm is not None and not math.isfinite(grad_norm)):
        raise NonFiniteError(f"non-finite gradient norm ({grad_norm}) at iteration "
                             f"{state.iteration + 1}")
    run.scheduler.step(increment=1)
    state.iteration += 1
    state.consumed_train_samples += config.training.global_batch_size
    extra = {"distill_loss": losses["distill loss"]} if "distill loss" in losses else {}
    return {"lm_loss": losses["lm loss"], **extra, "grad_norm": float(grad_norm or 0.0),
            "temperature": mask_state.temperature, "logit_scale": mask_state.logit_scale,
            "reg_weight": mask_state.reg_weight, "lr": lr}


def _model_parallel_sum(values: List[float], device) -> List[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, group=parallel_state.get_model_parallel_group())
    return tensor.tolist()


@torch.no_grad()
def regulariser_term(run: Run, state: MaskState) -> float:
    """lambda * sum ||W * M~||^2 over the whole model, with the noise-free soft mask (for logs).

    A pass over every logit, as costly as a masked forward's mask maths: skipped once the
    regulariser's weight has decayed to 0 (the same on every rank: it follows the schedule).
    """
    if state.reg_weight == 0 or run.config.mask.frozen:  # a fixed mask has no regulariser
        return 0.0
    device = next(run.gpt.parameters()).device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for _, layer in masked_linears(run.gpt):
        mask = expected_mask(layer.mask_logits, layer.mask_candidates,
                             temperature=state.temperature, logit_scale=state.logit_scale)
        total += (layer.weight.float() * mask.reshape(layer.weight.shape)).pow(2).sum()
    return state.reg_weight * _model_parallel_sum([total.item()], device)[0]


def mask_choices(run: Run) -> Dict[str, torch.Tensor]:
    """The argmax candidate index of every group (the final mask, compactly)."""
    return {name: layer.mask_logits.detach().argmax(-1).to(torch.uint8)
            for name, layer in masked_linears(run.gpt)}


def evaluate(run: Run) -> Dict[str, float]:
    """Validation loss and PPL with the hard masks; fraction of groups changed since last time."""
    config = run.config
    run.ddp.eval()
    losses = []
    with torch.no_grad():
        for index in range(config.logging.eval_iters):
            batches = microbatches(run.valid_data, config=config,
                                   first_sample=index * config.training.global_batch_size)
            losses.append(_run_batches(run, batches, forward_only=True)["lm loss"])
    run.ddp.train()
    choices = mask_choices(run)
    reference = run.state.mask_reference
    changed = sum(int((choices[k] != reference[k]).sum()) for k in choices)
    groups = sum(c.numel() for c in choices.values())
    exact = sum(check_nm(run.gpt).values())
    device = next(run.gpt.parameters()).device
    changed, groups, exact, layers = _model_parallel_sum(
        [changed, groups, exact, len(choices)], device)
    run.state.mask_reference = choices
    val_loss = sum(losses) / len(losses)
    return {"val_loss": val_loss, "val_ppl": perplexity(val_loss),
            "mask_change_fraction": changed / max(groups, 1), "exact_nm": exact == layers}


def _initialise_masks(run: Run) -> None:
    """A fresh run: dense weights from the pretrained checkpoint, then the optional prior (or,
    in weight recovery, the fixed mask, which also zeroes the pruned weights)."""
    ckpt, mask = run.config.checkpoint, run.config.mask
    if ckpt.pretrained_checkpoint:
        load_dense_weights(ckpt.pretrained_checkpoint, model=run.gpt,
                           trust=ckpt.trust_checkpoint)
    if ckpt.prior_mask:
        priors = load_global_masks(ckpt.prior_mask, run.gpt, shape=run.config.model)
        apply_prior_masks(run.gpt, priors, strength=mask.prior_strength)
    if ckpt.fixed_mask:
        apply_fixed_masks(run.gpt, load_global_masks(ckpt.fixed_mask, run.gpt,
                                                     shape=run.config.model))
    if ckpt.pretrained_checkpoint or ckpt.prior_mask:
        run.optimizer.reload_model_params()  # main-parameter copies follow the loaded values


def _check_parallel_state(config: RunConfig) -> None:
    p = config.parallel
    actual = (parallel_state.get_tensor_model_parallel_world_size(),
              parallel_state.get_pipeline_model_parallel_world_size())
    wanted = (p.tensor_model_parallel_size, p.pipeline_model_parallel_size)
    if actual != wanted:
        raise ValueError(f"Megatron was initialised with TP x PP = {actual} but the run config "
                         f"asks for {wanted}: initialise with the config's sizes")


def setup_run(config: RunConfig) -> Run:
    """Build model, optimizer, scheduler and data; resume or initialise the masks."""
    _check_parallel_state(config)
    set_random_seeds(config.training.seed)
    ddp, gpt, optimizer, scheduler = build_model_and_optimizer(config)
    tokenizer = build_tokenizer_for(config)
    train_data, valid_data = build_data(config, tokenizer=tokenizer)
    run = Run(config=config, ddp=ddp, gpt=gpt, optimizer=optimizer, scheduler=scheduler,
              train_data=train_data, valid_data=valid_data, vocab_size=tokenizer.vocab_size)
    if config.mask.frozen and config.distillation.enabled:
        run.teacher = build_teacher(config, gpt)  # also when resuming: the original weights
    num_microbatches(config)  # fail early on a batch that does not split
    resume = latest_checkpoint(config.checkpoint.load,
                               announce="resuming from" if dist.get_rank() == 0 else None)
    if resume:
        run.state = checkpointing.load_checkpoint(resume, model=gpt, optimizer=optimizer,
                                                  scheduler=scheduler, run_config=config,
                                                  trust=config.checkpoint.trust_checkpoint)
        run.checkpoint = resume
        if dist.get_rank() == 0:
            print(f"resuming from {resume} (iteration {run.state.iteration}, "
                  f"{run.state.consumed_train_samples} samples consumed)", flush=True)
    else:
        _initialise_masks(run)
    if run.state.mask_reference is None:  # a fresh run, or resumed at another TP/PP split
        run.state.mask_reference = mask_choices(run)
    return run


def _is_logging_rank() -> bool:
    return dist.get_rank() == dist.get_world_size() - 1  # the last pipeline stage of DP rank 0


def train(config: RunConfig) -> List[Dict[str, float]]:
    """Train until train_iters (or exit_interval, or an exit signal); return every iteration's
    metrics. The save directory is locked for the run's length (``run_lock``): one job per run
    directory; with --exit-signal-handler SIGTERM/SIGUSR1 save and stop (``signals``)."""
    with holding_run_dir(config.checkpoint.save), \
            ExitSignalHandler(enabled=config.training.exit_signal_handler) as signals:
        if signals.enabled:  # a helper that must survive a signal sent to every process
            with signals.ignored():
                checkpointing.start_writer_helpers()
        return _train(config, signals)


def _train(config: RunConfig, signals: ExitSignalHandler) -> List[Dict[str, float]]:
    run = setup_run(config)
    t, log_cfg, ckpt = config.training, config.logging, config.checkpoint
    log_dir = log_cfg.log_dir or (f"{ckpt.save}/logs" if ckpt.save else None)
    logger = MetricsLogger(log_dir=log_dir, tensorboard_dir=log_cfg.tensorboard_dir,
                           enabled=_is_logging_rank())
    device = next(run.gpt.parameters()).device
    history, window = [], []
    try:
        while run.state.iteration < t.train_iters:
            start = time.perf_counter()
            try:
                metrics = train_step(run)
            except NonFiniteError as error:
                raise NonFiniteError(f"{error}{_last_good(run)}") from None
            it = run.state.iteration
            signum, finite = _agreed_after_step(run, signals, device)
            if not finite:
                raise NonFiniteError(f"non-finite parameters after the optimizer step of "
                                     f"iteration {it}{_last_good(run)}")
            metrics["step_time_s"] = time.perf_counter() - start
            metrics["iteration"] = it
            history.append(metrics)
            window.append(metrics)
            if it % log_cfg.log_interval == 0 or it == t.train_iters:
                logger.log(_train_record(run, window, device))
                window = []
            if log_cfg.eval_iters and run.valid_data is not None and (
                    it % log_cfg.eval_interval == 0 or it == t.train_iters):
                logger.log({"kind": "eval", "iteration": it,
                            "tokens": run.state.consumed_train_samples * t.seq_length,
                            **evaluate(run)})
            stop = t.exit_interval is not None and it % t.exit_interval == 0
            if ckpt.save and (it == t.train_iters or stop or signum or
                              (ckpt.save_interval and it % ckpt.save_interval == 0)):
                _save(run, signals, exiting=bool(signum))
            if signum:
                if dist.get_rank() == 0:
                    print(f"saved checkpoint {os.path.basename(run.checkpoint)} after "
                          f"{signal_name(signum)}; exiting 0 so a requeued job resumes from it",
                          file=sys.stderr, flush=True)
                break
            if stop:
                break
    finally:
        logger.close()
    return history


def _save(run: Run, signals: ExitSignalHandler, *, exiting: bool) -> None:
    """Save a checkpoint; while ``exiting`` (the save an exit signal asked for) a second signal
    abandons it, on every rank together, before it commits (nothing partial is left)."""
    ckpt = run.config.checkpoint
    device = next(run.gpt.parameters()).device

    def agree(signum: int) -> int:
        flag = torch.tensor(float(signum), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    try:
        with signals.abortable() if exiting else contextlib.nullcontext():
            run.checkpoint = checkpointing.save_checkpoint(
                ckpt.save, run.state, model=run.gpt, optimizer=run.optimizer,
                scheduler=run.scheduler, run_config=run.config,
                before_commit=(lambda: signals.agreed_abort(agree)) if exiting else lambda: None)
    except SaveAborted as aborted:
        previous = _latest_saved(run)
        still = f"the latest checkpoint is still {previous}" if previous else "none was saved"
        aborted.detail = f"iteration {run.state.iteration} was not saved; {still}"
        raise


def _latest_saved(run: Run) -> Optional[str]:
    """The checkpoint a resume from --save (else from --load) would start from, if any."""
    ckpt = run.config.checkpoint
    for directory in (ckpt.save, ckpt.load):
        try:
            found = latest_checkpoint(directory, announce=None)
        except ValueError:
            found = None
        if found and os.path.isdir(found):
            return found
    return None


def _last_good(run: Run) -> str:
    """The tail of a non-finite error: where a run can go on from, and what to change."""
    found = _latest_saved(run)
    if not found:
        return "; no checkpoint was saved: start again with a lower --lr"
    return (f"; the last good checkpoint is {found} (resuming from it with --load "
            f"{os.path.dirname(found)} repeats this with the saved LR schedule): start again "
            "with a lower --lr")


def _agreed_after_step(run: Run, signals: ExitSignalHandler, device) -> Tuple[int, bool]:
    """(the exit signal any rank received, 0 if none; whether every rank's trained parameters
    are finite), the same on every rank: one all-reduce (MAX) per step."""
    trained = [p for p in run.gpt.parameters() if p.requires_grad]
    finite = torch.stack([torch.isfinite(p).all() for p in trained]).all() if trained else \
        torch.ones((), dtype=torch.bool, device=device)
    flags = torch.stack([torch.tensor(float(signals.received or 0), device=device),
                         (~finite).float()])
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    signum, non_finite = flags.tolist()
    return int(signum), not non_finite


def _train_record(run: Run, window: List[Dict[str, float]], device) -> Dict[str, float]:
    t = run.config.training
    last = window[-1]
    step_time = sum(m["step_time_s"] for m in window) / len(window)
    state = MaskState(temperature=last["temperature"], logit_scale=last["logit_scale"],
                      reg_weight=last["reg_weight"])
    return {
        "kind": "train", "iteration": last["iteration"], "train_iters": t.train_iters,
        "lm_loss": sum(m["lm_loss"] for m in window) / len(window),
        **({"distill_loss": sum(m["distill_loss"] for m in window) / len(window)}
           if "distill_loss" in last else {}),
        "reg_term": regulariser_term(run, state),
        "temperature": last["temperature"], "logit_scale": last["logit_scale"],
        "lr": last["lr"], "grad_norm": last["grad_norm"],
        "tokens_per_s": t.global_batch_size * t.seq_length / step_time,
        "step_time_s": step_time, "peak_memory_bytes": peak_memory_bytes(device),
        "tokens": run.state.consumed_train_samples * t.seq_length,
        "consumed_samples": run.state.consumed_train_samples,
    }

