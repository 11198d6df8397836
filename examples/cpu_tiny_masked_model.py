"""Learn 2:4 masks for a tiny random LLaMA-style model on CPU (or GPU), single process or torchrun.

    python examples/cpu_tiny_masked_model.py
    torchrun --standalone --nproc_per_node 2 examples/cpu_tiny_masked_model.py --tp 2

The model and its "data" are random: this shows the moving parts (masked Megatron-Core model,
schedules, mask-only optimisation, the final exact N:M check), not a useful mask.
"""
import argparse
import warnings

import torch


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pattern", default="2:4", help="N:M sparsity pattern")
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args()


def main():
    warnings.filterwarnings("ignore", category=UserWarning)
    args = parse_args()
    from megatron.core import parallel_state

    from megatron_masklm.masking import MaskConfig, mask_state_at, parse_nm
    from megatron_masklm.mcore import (
        ModelShape, apply_mask_state, build_masked_gpt_model, build_transformer_config, check_nm,
        destroy_distributed, initialize_distributed, seed_mask_noise)

    n, m = parse_nm(args.pattern)
    initialize_distributed(tensor_model_parallel_size=args.tp, seed=args.seed)
    shape = ModelShape(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                       num_query_groups=2, vocab_size=256, max_position_embeddings=64)
    mask_config = MaskConfig(n=n, m=m)
    config = build_transformer_config(shape, tensor_model_parallel_size=args.tp)
    model = build_masked_gpt_model(shape, mask_config, config=config)
    logits = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(logits, lr=5e-2, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)  # same batch on every TP rank
    tokens = torch.randint(0, shape.vocab_size, (4, 32), generator=gen)
    positions = torch.arange(32).expand(4, 32)
    rank0 = torch.distributed.get_rank() == 0
    device = next(model.parameters()).device
    tokens, positions = tokens.to(device), positions.to(device)
    for step in range(args.steps):
        state = mask_state_at(mask_config, step, args.steps)
        apply_mask_state(model, state)
        seed_mask_noise(args.seed, iteration=step)
        loss = model(tokens[:, :-1], positions[:, :-1], None, labels=tokens[:, 1:]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank0 and (step % 5 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss {loss.item():.4f}  tau {state.temperature:.3f}  "
                  f"kappa {state.logit_scale:.0f}")
    model.eval()
    exact = check_nm(model)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    print(f"[tp rank {tp_rank}] {sum(exact.values())}/{len(exact)} masked layers exactly "
          f"{args.pattern}: {'OK' if all(exact.values()) else 'FAILED'}")
    ok = all(exact.values())
    destroy_distributed()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":  # required: dist_checkpointing and torchrun re-import __main__
    main()
