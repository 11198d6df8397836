"""Forward a converted Megatron checkpoint at TP=N and save the full-vocabulary logits (rank 0).

    python -m torch.distributed.run --standalone --nproc_per_node 2 \
        benchmarks/smollm2_convert/tp_forward.py --load-dir MEGATRON_OUT --tokens T.pt --out L.pt --tp 2
    python benchmarks/smollm2_convert/tp_forward.py ... --tp 1        # one process

``--tokens`` is a torch.save'd LongTensor [batch, seq]; ``--out`` receives a dict with
``logits`` ([batch, seq, hf_vocab], fp32: gathered over the TP group, vocabulary padding dropped),
``tp``, ``load_s`` and ``forward_s``.
"""
import argparse
import json
import os
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--load-dir", required=True, help="converter output (model_shape.json, release/)")
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tp", type=int, default=1)
    args = parser.parse_args()
    if REPO not in sys.path:
        sys.path.insert(0, REPO)

    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_masklm.mcore import (
        ModelShape, build_dense_gpt_model, build_transformer_config, destroy_distributed,
        initialize_distributed)
    from megatron_masklm.mcore import safe_load

    initialize_distributed(tensor_model_parallel_size=args.tp)
    if dist.get_world_size() != args.tp:
        raise SystemExit(f"launch exactly --tp ({args.tp}) ranks, not {dist.get_world_size()}")
    with open(os.path.join(args.load_dir, "model_shape.json")) as handle:
        shape = ModelShape(**json.load(handle))
    with open(os.path.join(args.load_dir, "hf_config.json")) as handle:
        hf_vocab = json.load(handle)["vocab_size"]

    start = time.perf_counter()
    model = build_dense_gpt_model(
        shape, config=build_transformer_config(shape, tensor_model_parallel_size=args.tp))
    state = safe_load.load(model.sharded_state_dict(), os.path.join(args.load_dir, "release"))
    model.load_state_dict(state, strict=True)
    model.eval()
    load_s = time.perf_counter() - start

    tokens = torch.load(args.tokens)
    positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)
    start = time.perf_counter()
    with torch.no_grad():
        local = model(tokens, positions, None).float().contiguous()  # [b, s, padded_vocab / TP]
    if args.tp > 1:
        parts = [torch.empty_like(local) for _ in range(args.tp)]
        dist.all_gather(parts, local, group=parallel_state.get_tensor_model_parallel_group())
        logits = torch.cat(parts, dim=-1)
    else:
        logits = local
    forward_s = time.perf_counter() - start
    if logits.shape[-1] != shape.vocab_size:
        raise SystemExit(f"gathered logits have {logits.shape[-1]} columns, expected {shape.vocab_size}")
    if dist.get_rank() == 0:
        torch.save({"logits": logits[..., :hf_vocab].clone(), "tp": args.tp, "load_s": load_s,
                    "forward_s": forward_s}, args.out)
    dist.barrier()
    destroy_distributed()


if __name__ == "__main__":  # required: the dist-checkpoint reader may re-import __main__
    main()
