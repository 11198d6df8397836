"""A bf16 masked model under Megatron's DDP and distributed optimizer at TP=2 (CPU backend):
the logits stay fp32, only they get optimizer state, and the loss falls."""
import pytest
import torch

from harness import run_distributed


def _optimizer_rank(*, rank, init_method):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer.module import Float16Module

    from megatron_masklm.masking import MaskConfig
    from megatron_masklm.mcore import (
        ModelShape, build_masked_gpt_model, build_transformer_config, initialize_distributed,
        seed_mask_noise)

    initialize_distributed(tensor_model_parallel_size=2, init_method=init_method, seed=3,
                           cuda_to_cpu_mode=True)  # Megatron's optimizer hard-codes CUDA tensors
    shape = ModelShape(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                       num_query_groups=2, vocab_size=128, max_position_embeddings=32)
    config = build_transformer_config(shape, tensor_model_parallel_size=2, bf16=True)
    model = Float16Module(config, build_masked_gpt_model(shape, MaskConfig(), config=config))
    logits = [p for n, p in model.named_parameters() if n.endswith("mask_logits")]
    assert {p.dtype for p in logits} == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if not n.endswith("mask_logits")} == {torch.bfloat16}
    ddp = DistributedDataParallel(config, DistributedDataParallelConfig(
        use_distributed_optimizer=True, grad_reduce_in_fp32=True), model)
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=5e-2, bf16=True, clip_grad=1.0, use_distributed_optimizer=True,
        params_dtype=torch.bfloat16), [ddp])
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 128, (2, 16), generator=gen)
    positions = torch.arange(16).expand(2, 16)
    losses = []
    for step in range(4):
        seed_mask_noise(3, iteration=step)
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        loss = ddp(tokens, positions, None, labels=tokens).float().mean()
        loss.backward()
        ddp.finish_grad_sync()
        ok, grad_norm, _ = optimizer.step()
        assert ok and grad_norm > 0
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    state_numel = sum(value.numel() for opt in optimizer.chained_optimizers
                      for state in opt.optimizer.state.values()
                      for value in state.values() if torch.is_tensor(value) and value.dim() > 0)
    logits_numel = sum(p.numel() for p in logits)
    # Adam's two moments, for the logits only (DP=1: the distributed optimizer holds all of them)
    assert state_numel == 2 * logits_numel, (state_numel, logits_numel)
    assert {p.dtype for p in logits} == {torch.float32}
    return losses


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_distributed_optimizer_trains_only_fp32_logits():
    losses = run_distributed(_optimizer_rank)
    assert losses[0] == losses[1]  # TP ranks see one loss
