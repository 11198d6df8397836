"""EVAL perplexity of a transformers causal LM on pre-tokenized 512-token windows.

    python benchmarks/oneshot_smollm2/ppl.py --model DIR --eval-tokens FILE \
        [--batch-size 4] [--limit K] [--threads 2]

Protocol (BENCHMARK.md): every window of ``eval_tokens`` (a LongTensor [n, 512] written by
assets.py) predicts its 511 next tokens; the token NLLs are summed in float64 over all windows
and PPL = exp(sum / (n * 511)). For the dequantised SmolLM2-135M on the 210 EVAL windows this
is ~14.70. The last line printed is JSON: {"ppl": ..., "windows": ..., "seconds": ...}.
"""
import argparse
import json
import math
import time

import torch


def load_hf(path: str):
    """Load a causal LM from a local HF directory in fp32, on CPU, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


@torch.no_grad()
def nll_sum(model, eval_tokens: torch.Tensor, batch_size: int = 4):
    """Return ``(sum of next-token NLLs as a float64 tensor, number of predicted tokens)``."""
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64)
    count = 0
    for start in range(0, eval_tokens.shape[0], batch_size):
        batch = eval_tokens[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        targets = batch[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
            reduction="none")
        total += nll.double().sum().cpu()
        count += targets.numel()
    return total, count


def perplexity(model, eval_tokens: torch.Tensor, batch_size: int = 4) -> float:
    """PPL = exp(mean next-token NLL over all windows of ``eval_tokens`` [n, seq_len])."""
    was_training = model.training
    model.eval()
    try:
        total, count = nll_sum(model, eval_tokens, batch_size)
    finally:
        model.train(was_training)
    return math.exp(total.item() / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="local HF model directory")
    parser.add_argument("--eval-tokens", required=True, help="torch.save'd LongTensor [n, 512]")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="use only the first K windows")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    eval_tokens = torch.load(args.eval_tokens)
    if args.limit is not None:
        eval_tokens = eval_tokens[:args.limit]
    model = load_hf(args.model)
    start = time.perf_counter()
    ppl = perplexity(model, eval_tokens, args.batch_size)
    seconds = time.perf_counter() - start
    print(json.dumps({"ppl": ppl, "windows": int(eval_tokens.shape[0]),
                      "seconds": round(seconds, 2)}))


if __name__ == "__main__":
    main()
