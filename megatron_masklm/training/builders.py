"""Build what a run trains (model, DDP, optimizer, LR scheduler) and what it reads (data)."""
import dataclasses
import os
import sys
from typing import Optional, Tuple

import torch
from megatron.core import parallel_state
from megatron.core.distributed import (DistributedDataParallel, DistributedDataParallelConfig,
                                       finalize_model_grads)
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module

from ..cpu import native_bf16, slow_bf16_note
from ..mcore import (build_dense_gpt_model, build_masked_gpt_model, build_transformer_config,
                     compat, use_transformer_engine)
from .config import RunConfig


def build_model_and_optimizer(config: RunConfig):
    """(DDP-wrapped model, the bare GPTModel, Megatron optimizer, LR scheduler) for this rank."""
    p, o, t = config.parallel, config.optimizer, config.training
    recompute = {}
    if p.recompute_granularity == "full":
        recompute = dict(recompute_granularity="full", recompute_method="uniform",
                         recompute_num_layers=1)
    elif p.recompute_granularity == "selective":
        recompute = dict(recompute_granularity="selective")
    dtype = torch.bfloat16 if p.bf16 else torch.float32
    use_te = use_transformer_engine(p.transformer_impl)
    if use_te and torch.distributed.get_rank() == 0:
        print(f"warning: --transformer-impl {p.transformer_impl} uses Transformer Engine layers, "
              "which this release has not verified on a GPU; --transformer-impl local is the "
              "tested choice", file=sys.stderr, flush=True)
    if p.bf16 and not torch.cuda.is_available() and native_bf16() is False \
            and torch.distributed.get_rank() == 0:
        print(f"warning: --bf16 on CPU: {slow_bf16_note()}", file=sys.stderr, flush=True)
    if p.gradient_accumulation_fusion and not compat.grad_accum_fusion_available():
        raise ValueError("--gradient-accumulation-fusion needs apex's fused_weight_gradient_mlp_cuda "
                         "extension (NGC PyTorch containers ship it; Megatron's output layer uses "
                         "it with any --transformer-impl), which does not import here: drop the flag")
    tconfig = build_transformer_config(
        config.model, tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        sequence_parallel=p.sequence_parallel, bf16=p.bf16, pipeline_dtype=dtype,
        gradient_accumulation_fusion=p.gradient_accumulation_fusion, **recompute)
    # sdpa_attention: torch's fused causal attention in the local spec (same maths as
    # Megatron's unfused one; a whole SmolLM2 mask step 1.2x faster on CPU); TE specs keep theirs
    gpt = build_masked_gpt_model(
        config.model, config.mask, config=tconfig, use_te=use_te, sdpa_attention=True,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage())
    module = Float16Module(tconfig, gpt) if p.bf16 else gpt
    ddp = DistributedDataParallel(tconfig, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=p.use_distributed_optimizer,
        check_for_nan_in_grad=False), module)  # the loop checks the loss: one line, no traceback
    tconfig.finalize_model_grads_func = finalize_model_grads
    tconfig.no_sync_func = ddp.no_sync
    optimizer = compat.megatron_optimizer(MegatronOptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad, bf16=p.bf16, params_dtype=dtype,
        use_distributed_optimizer=p.use_distributed_optimizer), [ddp],
        lr_mult_pattern="*mask_logits", lr_mult=o.mask_lr_mult)
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=o.lr_warmup_iters, lr_decay_steps=t.train_iters,
        lr_decay_style=o.lr_decay_style, start_wd=o.weight_decay, end_wd=o.weight_decay,
        wd_incr_steps=t.train_iters, wd_incr_style="constant")
    return ddp, gpt, optimizer, scheduler


def build_teacher(config: RunConfig, gpt: torch.nn.Module) -> torch.nn.Module:
    """Weight recovery's teacher: a dense GPTModel shaped and split as the student ``gpt``
    (this rank's pipeline stage and tensor shard), holding the teacher (else the pretrained)
    checkpoint's weights,
    frozen, in eval mode; wrapped like the student for bf16. It costs a second copy of the
    weights (the memory estimator counts it), since the student's weights now change."""
    from ..mcore.loading import load_dense_weights

    ckpt = config.checkpoint
    teacher = build_dense_gpt_model(  # no random initialisation: the checkpoint overwrites it
        config.model, config=dataclasses.replace(gpt.config, perform_initialization=False), use_te=use_transformer_engine(config.parallel.transformer_impl),
        sdpa_attention=True, pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage())
    load_dense_weights(ckpt.teacher_checkpoint or ckpt.pretrained_checkpoint, model=teacher,
                       trust=ckpt.trust_checkpoint)
    for param in teacher.parameters():
        param.requires_grad_(False)
    module = Float16Module(gpt.config, teacher) if config.parallel.bf16 else teacher
    return module.eval()


def build_tokenizer_for(config: RunConfig):
    """The run's tokenizer (NullTokenizer over the model's vocabulary for mock data)."""
    from ..data import build_tokenizer

    d = config.data
    if d.tokenizer_type is None:
        if d.mock_data:
            return build_tokenizer("NullTokenizer", vocab_size=config.model.vocab_size)
        raise ValueError("--data-path needs --tokenizer-type (SentencePieceTokenizer, "
                         "HuggingFaceTokenizer or NullTokenizer) and --tokenizer-model")
    tokenizer = build_tokenizer(d.tokenizer_type, tokenizer_model=d.tokenizer_model,
                                vocab_size=config.model.vocab_size)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                         f"vocab_size is {config.model.vocab_size}")
    return tokenizer


def build_data(config: RunConfig, *, tokenizer=None) -> Tuple[object, Optional[object]]:
    """(train, validation) GPT datasets sized for the whole run (validation may be None);
    ``tokenizer`` defaults to :func:`build_tokenizer_for`'s."""
    from ..data import build_gpt_datasets

    t, d, log = config.training, config.data, config.logging
    tokenizer = tokenizer or build_tokenizer_for(config)
    common = dict(seq_length=t.seq_length, seed=t.seed, tokenizer=tokenizer,
                  cache_dir=d.data_cache_path and os.path.abspath(d.data_cache_path))
    train_samples, valid_samples = t.train_iters * t.global_batch_size, log.eval_iters * t.global_batch_size
    separate = d.valid_data_path is not None
    train, valid, _ = build_gpt_datasets(
        data_path=d.data_path, split=d.split, mock=d.mock_data,
        num_samples=(train_samples, 0 if separate else valid_samples, 0), **common)
    if train is None:
        raise ValueError(f"split {d.split!r} leaves no training data")
    if separate and valid_samples:
        _, valid, _ = build_gpt_datasets(data_path=d.valid_data_path, split="0,1,0",
                                         num_samples=(0, valid_samples, 0), **common)
    return train, valid if log.eval_iters else None
