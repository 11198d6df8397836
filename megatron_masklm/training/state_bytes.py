"""What a training run holds in memory, counted from its real tensors (the measured side of
megatron_masklm/training/memory.py's estimate; see tests/unit/test_estimate_memory.py)."""
import torch


def training_state_bytes(run) -> dict:
    """Bytes of a built (and stepped) run's parameters (weights, mask logits), Megatron DDP
    buffers (parameter padding, gradients) and optimizer state (Adam moments, fp32 main copies),
    counted from the real tensors, each storage once."""
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
