"""Side-by-side step time: mask-only training of a masked model vs dense fine-tuning (weights
trainable) of the same Megatron GPT model on the same batch, interleaved. Single process.

    python benchmarks/step_time.py [--layers 4 --hidden 576 --ffn 1536 --seq 512 --batch 4]
"""
import argparse
import statistics
import time
import warnings

import torch


def main():
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--ffn", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (logits stay fp32)")
    args = parser.parse_args()

    from megatron.core.models.gpt import GPTModel

    from megatron_masklm.masking import MaskConfig
    from megatron_masklm.mcore import (
        ModelShape, build_masked_gpt_model, build_transformer_config, compat, initialize_distributed)

    initialize_distributed(seed=1)
    shape = ModelShape(num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=args.ffn,
                       num_attention_heads=args.heads, num_query_groups=args.groups,
                       vocab_size=args.vocab, max_position_embeddings=args.seq, tied_embeddings=True)
    config = build_transformer_config(shape, bf16=args.bf16)
    masked = build_masked_gpt_model(shape, MaskConfig(), config=config)
    dense = GPTModel(config=config, vocab_size=args.vocab, max_sequence_length=args.seq,
                     transformer_layer_spec=compat.gpt_layer_spec(use_te=False, normalization="RMSNorm"),
                     share_embeddings_and_output_weights=True, position_embedding_type="rope")
    device = next(masked.parameters()).device
    dense.to(device)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    positions = torch.arange(args.seq, device=device).expand(args.batch, args.seq)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    models = {"mask-only (logits train)": masked, "dense (weights train)": dense}
    times = {name: [] for name in models}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, model in models.items():
            model.train()
            model.zero_grad(set_to_none=True)
            sync()
            start = time.perf_counter()
            model(tokens, positions, None, labels=tokens).float().mean().backward()
            sync()
            if repeat:
                times[name].append(time.perf_counter() - start)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.layers} layers, hidden {args.hidden}, ffn {args.ffn}, {args.batch}x{args.seq} tokens, "
          f"{'bf16' if args.bf16 else 'fp32'}, {where}, {args.repeats} interleaved repeats")
    for name, values in times.items():
        print(f"{name:<28} fwd+bwd median {statistics.median(values):.3f} s")
    names = list(models)
    ratio = statistics.median(times[names[0]]) / statistics.median(times[names[1]])
    print(f"mask-only / dense step-time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
