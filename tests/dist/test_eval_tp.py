"""tools/eval_ppl.py on a masked training run at TP=2 equals TP=1, and both equal an independent
loop on transformers' model holding the exported 2:4 weights."""
import pytest
import torch

from harness import run_distributed
from script_modules import tool
from training_utils import make_token_dataset, tiny_options

pytest.importorskip("transformers")
from hf_utils import reference_nll, tiny_llama  # noqa: E402

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]
SHAPE_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
              "num_query_groups", "vocab_size", "max_position_embeddings")


def _eval_argv(run_dir, text):
    return [str(a) for a in ("--load", run_dir, "--text", text, "--tokenizer-type",
                             "NullTokenizer", "--seq-length", 32, "--stride", 24, "--keep-last",
                             "--micro-batch-size", 3, "--no-progress")]


def _train_then_evaluate(*, rank, init_method, prefix, checkpoint, run_dir, text):
    from megatron_masklm.evaluation.perplexity import evaluate
    from megatron_masklm.mcore import initialize_distributed
    from megatron_masklm.training.arguments import run_config_from_options
    from megatron_masklm.training.loop import train

    initialize_distributed(tensor_model_parallel_size=2, init_method=init_method, seed=7,
                           cuda_to_cpu_mode=True)
    options = {k: v for k, v in tiny_options(prefix).items() if k not in SHAPE_KEYS}
    options.update(tensor_model_parallel_size=2, pretrained_checkpoint=checkpoint, save=run_dir,
                   train_iters=3, eval_iters=0, lr=0.2)
    train(run_config_from_options(options))
    return evaluate(tool("eval_ppl").parse_job(_eval_argv(run_dir, text)))


def test_masked_run_at_tp2_equals_tp1_and_transformers(tmp_path, capsys):
    import json

    import transformers

    from megatron_masklm.convert import convert_hf_to_megatron, convert_megatron_to_hf
    main = tool("eval_ppl").main

    tiny_llama(tmp_path / "hf", seed=5)  # vocabulary 100, padded to 128 below
    convert_hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), tensor_model_parallel_size=2,
                           dtype="float32", make_vocab_size_divisible_by=16, progress=False)
    ids = torch.randint(0, 63, (150,), generator=torch.Generator().manual_seed(2)).tolist()
    text = tmp_path / "text.txt"
    text.write_text(" ".join(map(str, ids)))
    run_dir = str(tmp_path / "run")
    results = run_distributed(_train_then_evaluate, prefix=make_token_dataset(str(tmp_path)),
                              checkpoint=str(tmp_path / "mg"), run_dir=run_dir, text=str(text))
    assert results[0]["nll"] == results[1]["nll"]  # every rank has the whole result
    tp2 = results[0]
    assert tp2["pattern"] == "2:4" and tp2["exact_nm"] is True

    assert main(_eval_argv(run_dir, text)) == 0  # TP=1, this process
    tp1 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert tp1["scored_tokens"] == tp2["scored_tokens"] == 149
    assert tp1["nll"] == pytest.approx(tp2["nll"], rel=1e-6)

    convert_megatron_to_hf(run_dir, str(tmp_path / "sparse"), apply_masks=True)
    sparse = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "sparse").eval()
    dense = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    total, count = reference_nll(sparse, ids, max_length=32, stride=24, drop_last=False)
    assert count == 149 and tp1["nll"] == pytest.approx(total / count, rel=1e-5)
    dense_total, _ = reference_nll(dense, ids, max_length=32, stride=24, drop_last=False)
    assert abs(dense_total - total) / count > 1e-3  # the masks are in effect
