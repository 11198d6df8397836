"""Side by side on a real checkpoint's shape and weights (SmolLM2-135M in run.py), one process:

* step time on the same batch, interleaved repeats: a mask-training step (masked forward and
  backward with Gumbel-softmax masks, plus AdamW on the logits) against the dense model's
  forward+backward with frozen weights (input gradients only), and against dense
  forward+backward with weight gradients (the GEMMs a mask gradient needs too); the masked
  forward+backward with Megatron's unfused attention instead of torch's fused kernel (what
  training used before), and with distillation (the dense teacher's forward plus the KL);
* training-state bytes per masked weight, counted from the real tensors of the training
  builders' model, Megatron DDP buffers and distributed optimizer after one step.

    python benchmarks/smollm2_cpu/measure.py --checkpoint MEGATRON_DIR --data-path TRAIN_PREFIX \
        [--micro-batch-size 4 --seq-length 512 --repeats 3 --threads 2]

The last stdout line is JSON with every number.
"""
import argparse
import json
import os
import statistics
import time
import warnings

import torch


def _shape(checkpoint: str):
    from megatron_masklm.mcore import ModelShape

    with open(os.path.join(checkpoint, "model_shape.json")) as handle:
        return ModelShape(**json.load(handle))


def step_times(checkpoint: str, tokens: torch.Tensor, repeats: int) -> dict:
    """Median seconds of each variant over ``repeats`` interleaved rounds (after one warm-up)."""
    from megatron_masklm import mcore
    from megatron_masklm.masking import MaskConfig, MaskState
    from megatron_masklm.mcore.loading import load_dense_weights

    from megatron.core import tensor_parallel

    from megatron_masklm.training.distillation import vocab_parallel_kl

    shape = _shape(checkpoint)
    config = mcore.build_transformer_config(shape, use_cpu_initialization=True,
                                            perform_initialization=False)
    # the attention training uses (torch's fused kernel), and Megatron's unfused one
    masked = mcore.build_masked_gpt_model(shape, MaskConfig(n=2, m=4), config=config,
                                          sdpa_attention=True)
    unfused = mcore.build_masked_gpt_model(shape, MaskConfig(n=2, m=4), config=config)
    dense = mcore.build_dense_gpt_model(shape, config=config, sdpa_attention=True)
    for model in (masked, unfused, dense):
        load_dense_weights(checkpoint, model=model)
        model.train()
    unfused.load_state_dict(masked.state_dict())  # the same logits
    state = MaskState(temperature=2.0, logit_scale=200.0, reg_weight=1e-5)
    for model in (masked, unfused):
        mcore.apply_mask_state(model, state)
    logits = [p for p in masked.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(logits, lr=1e-3, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
    # frozen dense weights: gradients flow to the activations only, from the embedding output on
    dense.embedding.register_forward_hook(lambda module, inputs, output: output.requires_grad_())
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)

    def loss(model):
        return model(tokens, positions, None, labels=tokens).float().mean()

    def mask_step():
        optimizer.zero_grad(set_to_none=True)
        loss(masked).backward()
        optimizer.step()

    def mask_fwd_bwd():
        masked.zero_grad(set_to_none=True)
        loss(masked).backward()

    def mask_fwd_bwd_unfused_attention():
        unfused.zero_grad(set_to_none=True)
        loss(unfused).backward()

    def mask_fwd_bwd_distill():
        masked.zero_grad(set_to_none=True)
        with torch.no_grad(), mcore.masks_off(masked):
            teacher = masked(tokens, positions, None)
        student = masked(tokens, positions, None)
        kl = vocab_parallel_kl(student, teacher, vocab_size=shape.vocab_size)
        lm = tensor_parallel.vocab_parallel_cross_entropy(student.float(), tokens)
        (lm.mean() + kl.mean()).backward()

    def dense_frozen():
        for p in dense.parameters():
            p.requires_grad_(False)
        loss(dense).backward()

    def dense_weight_grads():
        for p in dense.parameters():
            p.requires_grad_(True)
            p.grad = None
        loss(dense).backward()

    variants = {"mask_training_step": mask_step, "mask_fwd_bwd": mask_fwd_bwd,
                "mask_fwd_bwd_unfused_attention": mask_fwd_bwd_unfused_attention,
                "mask_fwd_bwd_distill": mask_fwd_bwd_distill,
                "dense_frozen_fwd_bwd": dense_frozen, "dense_weight_grads_fwd_bwd": dense_weight_grads}
    times = {name: [] for name in variants}
    for round_ in range(repeats + 1):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def training_state_bytes(run) -> dict:
    """Bytes of a built (and stepped) run's parameters (weights, mask logits), Megatron DDP
    buffers (parameter padding, gradients) and optimizer state (Adam moments, fp32 main copies),
    counted from the real tensors, each storage once: the measured side of
    megatron_masklm/training/memory.py's estimate (tests/unit/test_estimate_memory.py compares
    the two with this function)."""
    params = dict(run.gpt.named_parameters())
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    counts = {
        "weights": sum(nbytes(p) for n, p in params.items() if not n.endswith("mask_logits")),
        "mask_logits": sum(nbytes(p) for n, p in params.items() if n.endswith("mask_logits")),
        "ddp_param_padding": 0, "grad_buffers": 0, "optimizer_states": 0,
    }
    model_storages = {p.untyped_storage().data_ptr() for p in params.values()}
    grad_storages = set()
    for buffer in run.ddp.buffers + run.ddp.expert_parallel_buffers:
        if buffer.param_data is not None:
            counts["ddp_param_padding"] += (
                (buffer.param_data.numel() - sum(p.numel() for p in buffer.params))
                * buffer.param_data.element_size())
            model_storages.add(buffer.param_data.untyped_storage().data_ptr())
        counts["grad_buffers"] += nbytes(buffer.grad_data)
        grad_storages.add(buffer.grad_data.untyped_storage().data_ptr())
    for chained in run.optimizer.chained_optimizers:
        inner = chained.optimizer
        for state in inner.state.values():  # exp_avg, exp_avg_sq (torch Adam's 0-d 'step' aside)
            counts["optimizer_states"] += sum(nbytes(v) for v in state.values()
                                              if torch.is_tensor(v) and v.dim() > 0)
        for group in inner.param_groups:
            for p in group["params"]:  # fp32 main copies: optimizer params with their own storage
                if p.untyped_storage().data_ptr() not in model_storages:
                    counts["optimizer_states"] += nbytes(p)
    # no gradient of its own anywhere (else the counts above would miss it): a .grad is None or
    # a view of DDP's buffer (an fp32 param the optimizer updates in place)
    optimizer_params = [p for chained in run.optimizer.chained_optimizers
                        for group in chained.optimizer.param_groups for p in group["params"]]
    stray = [p for p in list(params.values()) + optimizer_params
             if p.grad is not None and p.grad.untyped_storage().data_ptr() not in grad_storages]
    if stray:
        raise RuntimeError(f"{len(stray)} gradients live outside DDP's buffers: not counted")
    return counts


def state_bytes(checkpoint: str) -> dict:
    """Bytes of the training state the real builders allocate, per masked weight."""
    from megatron_masklm.training.arguments import run_config_from_options
    from megatron_masklm.training.loop import setup_run, train_step

    shape = _shape(checkpoint)
    options = {**{k: getattr(shape, k) for k in shape.__dataclass_fields__},
               "mock_data": True, "micro_batch_size": 1, "global_batch_size": 1, "seq_length": 64,
               "train_iters": 1, "eval_iters": 0, "pretrained_checkpoint": checkpoint}
    run = setup_run(run_config_from_options(options))
    train_step(run)
    counts = training_state_bytes(run)
    masked = sum(p.numel() for n, p in run.gpt.named_parameters() if n.endswith("mask_logits"))
    masked_weights = masked * 4 // 6  # [rows, in/4, C(4,2)=6] logits per 2:4 layer
    total = counts["weights"] + counts["mask_logits"] + counts["grad_buffers"] + counts["optimizer_states"]
    estimated = _estimate(shape)
    return {**counts, "estimated": {key: estimated[key] for key in counts},
            "estimate_equals_count": all(estimated[key] == counts[key] for key in counts),
            "masked_weights": masked_weights,
            "state_bytes_per_masked_weight": (counts["mask_logits"] + counts["grad_buffers"]
                                              + counts["optimizer_states"]) / masked_weights,
            "all_bytes_per_masked_weight": total / masked_weights}


def _estimate(shape) -> dict:
    """tools/estimate_memory.py's exact items for the same run (fp32, TP = PP = DP = 1)."""
    from megatron_masklm.training.memory import Setup, estimate

    arch = shape  # the same ModelShape the run builds (its vocabulary is padded already)
    result = estimate(arch, Setup(micro_batch_size=1, seq_length=64))
    return {item.key: item.bytes for item in result.stages[0].items}


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="converted Megatron checkpoint (TP any)")
    parser.add_argument("--data-path", required=True, help="indexed dataset the batch comes from")
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from megatron_masklm import mcore
    from megatron_masklm.data.calibration import indexed_windows

    tokens = indexed_windows(args.data_path, seq_length=args.seq_length,
                             num_samples=args.micro_batch_size)
    mcore.initialize_distributed(tensor_model_parallel_size=1, seed=1, cuda_to_cpu_mode=True)
    try:
        times = step_times(args.checkpoint, tokens, args.repeats)
        counted = state_bytes(args.checkpoint)
    finally:
        mcore.destroy_distributed()
    frozen = times["dense_frozen_fwd_bwd"]
    result = {"batch": list(tokens.shape), "threads": args.threads, "repeats": args.repeats,
              "seconds": times,
              "ratio_step_vs_frozen": times["mask_training_step"] / frozen,
              "ratio_fwd_bwd_vs_frozen": times["mask_fwd_bwd"] / frozen,
              "ratio_fwd_bwd_vs_weight_grads": times["mask_fwd_bwd"] / times["dense_weight_grads_fwd_bwd"],
              "ratio_unfused_vs_fused_attention": times["mask_fwd_bwd_unfused_attention"] / times["mask_fwd_bwd"],
              "ratio_distill_vs_lm_only": times["mask_fwd_bwd_distill"] / times["mask_fwd_bwd"],
              **counted}
    for name, value in times.items():
        print(f"{name:<28} {value:.3f} s (median of {args.repeats})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
