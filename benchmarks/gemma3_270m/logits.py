"""Max |logit difference| between the converted Megatron checkpoint and transformers' model
loaded from the same GGUF, on the first 2 EVAL windows (512 tokens with BOS), fp32, TP=1."""
import json, os, sys, torch
def main():
    gguf, mg, text = sys.argv[1:4]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    d, n = os.path.split(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=n)
    ref = AutoModelForCausalLM.from_pretrained(d, gguf_file=n, dtype=torch.float32).eval()
    ids = tok(open(text).read()[:20000], add_special_tokens=False)["input_ids"]
    windows = torch.tensor([[tok.bos_token_id] + ids[i * 511:(i + 1) * 511] for i in range(2)])
    with torch.no_grad():
        expected = ref(windows).logits
    from megatron_masklm.convert.output import megatron_world_of_one
    from megatron_masklm.mcore.loading import load_model, open_checkpoint
    with megatron_world_of_one():
        info = open_checkpoint(mg)
        shape = info.shape
        model = load_model(info.directory, shape=shape, nm=info.nm, dtype=torch.float32).eval()
        with torch.no_grad():
            ours = model(windows, torch.arange(512).expand(2, 512), None)[..., :expected.shape[-1]]
    diff = (ours - expected).abs()
    print(json.dumps({"max_abs_logit_diff": diff.max().item(), "mean_abs_logit_diff": diff.mean().item(),
                      "max_abs_logit": expected.abs().max().item(), "tokens": int(windows.numel()),
                      "argmax_agree": (ours.argmax(-1) == expected.argmax(-1)).float().mean().item(),
                      "shape": {k: v for k, v in vars(shape).items()}}))
if __name__ == "__main__":
    main()
