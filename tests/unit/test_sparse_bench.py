"""tools/bench_sparse.py (and benchmarks/sparse_speed.py, its measurements) on the CPU: shapes,
padding, arguments, the refusal without a capable GPU, and which linears of a HF LLaMA get
swapped (the kernels themselves: tests/gpu)."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from megatron_masklm.masking.nm import is_exact_nm
from script_modules import benchmark, tool

sb = benchmark("sparse_speed")
cli = tool("bench_sparse")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_llama2_shapes_add_up_to_the_published_parameter_counts():
    # LLaMA-2: 7B = 32 layers, 13B = 40 layers, vocab 32000, untied embeddings; 6.74 B / 13.02 B
    for model, layers, hidden, total in (("7b", 32, 4096, 6_738_415_616),
                                         ("13b", 40, 5120, 13_015_864_320)):
        shapes = sb.llama2_linear_shapes(model)
        assert [(s.name, s.count) for s in shapes] == [("q/k/v/o", 4), ("gate/up", 2), ("down", 1)]
        per_layer = sum(s.count * s.out_features * s.in_features for s in shapes)
        norms = layers * 2 * hidden + hidden
        assert layers * per_layer + 2 * 32000 * hidden + norms == total
    assert [(s.out_features, s.in_features) for s in sb.llama2_linear_shapes("13b")] == [
        (5120, 5120), (13824, 5120), (5120, 13824)]
    with pytest.raises(ValueError, match="70b"):
        sb.llama2_linear_shapes("70b")


def test_every_llama2_linear_fits_both_backends():
    for backend in ("cusparselt", "cutlass"):
        constraints = sb.backend_constraints(backend)
        for model in sb.LLAMA2:
            for s in sb.llama2_linear_shapes(model):
                assert sb.shape_problem(s.out_features, s.in_features, constraints) is None


def test_backend_constraints_are_torchs_bf16_minimums():
    assert sb.backend_constraints("cusparselt") == sb.Constraints(16, 16, 8)
    assert sb.backend_constraints("cutlass") == sb.Constraints(32, 64, 8)
    assert "64" in sb.shape_problem(96, 96, sb.backend_constraints("cutlass"))


def test_padding_rule():
    assert [sb.padded_tokens(t, 8) for t in (1, 2, 7, 8, 9, 16, 17, 32, 512)] == [
        8, 8, 8, 8, 16, 16, 24, 32, 512]
    with pytest.raises(ValueError):
        sb.padded_tokens(0, 8)


def test_semi_structured_linear_pads_tokens_and_drops_them(monkeypatch):
    """With the compression stubbed out (CPU), the layer feeds F.linear a padded token count
    and returns exactly the unpadded rows."""
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda w: w.clone())
    seen = []
    real_linear = F.linear
    monkeypatch.setattr(sb.F, "linear", lambda x, w, b=None: seen.append(x.shape[0]) or real_linear(x, w, b))
    weight, bias = torch.randn(12, 16), torch.randn(12)
    layer = sb.SemiStructuredLinear(weight, bias, token_multiple=8)
    for shape in ((1, 16), (3, 5, 16), (8, 16), (2, 9, 16)):
        x = torch.randn(shape)
        out = layer(x)
        assert out.shape == (*shape[:-1], 12)
        torch.testing.assert_close(out, x @ weight.t() + bias)
    assert seen == [8, 16, 8, 24]


def test_apply_2of4_keeps_the_two_largest_of_every_four():
    w = torch.randn(8, 32)
    pruned = sb.apply_2of4(w)
    assert is_exact_nm(pruned, 2, 4)
    for r in range(8):
        for g in range(0, 32, 4):
            kept = sorted(w[r, g:g + 4].abs().tolist())[2:]
            assert sorted(pruned[r, g:g + 4].abs()[pruned[r, g:g + 4] != 0].tolist()) == kept


def _tiny_llama(**overrides):
    import transformers

    config = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=False)
    config.update(overrides)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))


def _prune_all_but(model, dense_names):
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.") \
                    and name not in dense_names:
                module.weight.copy_(sb.apply_2of4(module.weight))


def test_selection_swaps_exactly_the_2of4_decoder_linears():
    model = _tiny_llama()
    _prune_all_but(model, {"model.layers.1.mlp.down_proj"})
    selected, skipped = sb.select_semi_structured_linears(
        model, constraints=sb.Constraints(16, 16, 8))
    expected = [f"model.layers.{i}.{kind}" for i in range(2) for kind in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    expected.remove("model.layers.1.mlp.down_proj")
    assert sorted(selected) == sorted(expected)
    assert set(skipped) == {"lm_head", "model.layers.1.mlp.down_proj"}
    assert "LM head" in skipped["lm_head"] and "not 2:4" in skipped["model.layers.1.mlp.down_proj"]


def test_selection_leaves_shapes_the_kernel_cannot_take_dense():
    model = _tiny_llama(tie_word_embeddings=True)
    _prune_all_but(model, set())
    # CUTLASS needs 64-multiples of inputs: down_proj has 96 inputs
    selected, skipped = sb.select_semi_structured_linears(
        model, constraints=sb.Constraints(32, 64, 8))
    assert len(selected) == 12 and not any("down_proj" in name for name in selected)
    assert all("multiple of 32 x 64" in skipped[f"model.layers.{i}.mlp.down_proj"] for i in range(2))


def test_apply_replaces_only_the_named_modules(monkeypatch):
    made = []

    def fake(linear, *, token_multiple):
        made.append((tuple(linear.weight.shape), token_multiple))
        return torch.nn.Identity()

    monkeypatch.setattr(sb.SemiStructuredLinear, "from_linear", staticmethod(fake))
    model = _tiny_llama()
    names = ["model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj"]
    sb.apply_semi_structured(model, names, token_multiple=8)
    replaced = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Identity)}
    assert replaced == set(names) and made == [((32, 64), 8), ((64, 96), 8)]
    assert isinstance(model.model.layers[0].self_attn.q_proj, torch.nn.Linear)


def test_arguments():
    args = cli.parse_args([])
    assert args.models == ["7b", "13b"] and args.prefill == [512, 1024, 2048, 4096, 8192]
    assert args.decode == [1, 2, 4, 8, 16, 32] and args.backend == "auto" and not args.json
    args = cli.parse_args(["--models", "13B", "--prefill", "512,2048", "--decode", "1,16",
                          "--backend", "cutlass", "--json", "--repeats", "5"])
    assert (args.models, args.prefill, args.decode, args.repeats) == (["13b"], [512, 2048], [1, 16], 5)
    for bad in (["--models", "70b"], ["--prefill", "512,x"], ["--decode", "0"],
                ["--no-gemm"], ["--repeats", "0"], ["--backend", "cublas"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_args(bad)
        assert exit_info.value.code == 2


def test_layer_row_weighs_the_linears_like_a_decoder_layer():
    rows = [{"model": "7b", "linear": name, "count": count, "out_features": 1, "in_features": 1,
             "tokens": 8, "dense_ms": dense, "sparse_ms": sparse, "ratio": dense / sparse}
            for name, count, dense, sparse in (("q/k/v/o", 4, 1.0, 0.5), ("gate/up", 2, 3.0, 2.0),
                                               ("down", 1, 2.0, 1.0))]
    (layer,) = sb.layer_rows(rows)
    assert layer["ratio"] == pytest.approx((4 * 1 + 2 * 3 + 2) / (4 * 0.5 + 2 * 2 + 1))
    table = sb.format_gemm_table(rows, backend="cutlass")
    assert "layer" in table.splitlines()[-1] and f"{layer['ratio']:.2f}" in table


def _fake_gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")


def test_refuses_without_a_capable_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["--models", "7b"]) == 2
    err = capsys.readouterr().err
    assert "CUDA GPU with compute capability >= 8.0" in err and "no CUDA device" in err
    _fake_gpu(monkeypatch, (7, 5))
    assert cli.main([]) == 2
    assert "Tesla T4 has compute capability 7.5" in capsys.readouterr().err


def test_tool_exits_2_with_the_message_without_cuda():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "bench_sparse.py"),
                           "--models", "7b"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "needs a CUDA GPU with compute capability >= 8.0" in proc.stderr
    assert proc.stdout == ""
