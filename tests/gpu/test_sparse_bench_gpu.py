"""GPU only: a 2:4 linear swapped to torch's semi-structured kernels gives the dense masked
linear's output (bf16), at decode sizes that need padding too, on each backend torch has; a
swapped HF model gives the dense model's logits. Skipped without CUDA (conftest) or on GPUs
older than compute capability 8.0."""
import pytest
import torch
import torch.nn.functional as F

from script_modules import benchmark

sb = benchmark("sparse_speed")

pytestmark = pytest.mark.gpu


def _backends():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < sb.MIN_COMPUTE_CAPABILITY:
        pytest.skip("semi-structured sparse kernels need compute capability >= 8.0")
    found = ["cutlass"]
    if sb.resolve_backend("auto") == "cusparselt":
        found.append("cusparselt")
    return found


def _assert_bf16_close(got, want):
    scale = want.float().abs().max().item()
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * scale)


@pytest.mark.parametrize("tokens", [1, 3, 8, 17, 64, 512])
def test_swapped_linear_equals_the_dense_masked_linear(tokens):
    torch.manual_seed(0)
    for backend in _backends():
        multiple = sb.backend_constraints(backend).token_multiple
        weight = sb.apply_2of4(torch.randn(256, 512, device="cuda", dtype=torch.bfloat16))
        bias = torch.randn(256, device="cuda", dtype=torch.bfloat16)
        with sb.semi_structured_backend(backend):
            sparse = sb.SemiStructuredLinear(weight, bias, token_multiple=multiple)
            no_bias = sb.SemiStructuredLinear(weight, token_multiple=multiple)
        assert type(sparse.weight).__name__.endswith(backend.upper())
        x = torch.randn(2, tokens, 512, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            _assert_bf16_close(sparse(x), F.linear(x, weight, bias))
            _assert_bf16_close(no_bias(x[0]), F.linear(x[0], weight))


def test_swapped_masked_megatron_layer_equals_its_eval_output(mcore):
    """The project's own masked layer in eval mode (hard 2:4 mask) against its weight times
    mask held semi-structured."""
    from megatron.core.model_parallel_config import ModelParallelConfig

    from megatron_masklm.masking import MaskConfig
    from megatron_masklm.mcore import MaskedColumnParallelLinear

    backends = _backends()
    config = ModelParallelConfig(params_dtype=torch.bfloat16, bf16=True)
    layer = MaskedColumnParallelLinear(512, 384, config=config, init_method=torch.nn.init.normal_,
                                       bias=False, gather_output=False,
                                       mask_config=MaskConfig()).cuda().eval()
    with torch.no_grad():
        layer.mask_logits.normal_()
    x = torch.randn(7, 2, 512, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        want, _ = layer(x)
        masked = layer.masked_weight()
    for backend in backends:
        with sb.semi_structured_backend(backend):
            sparse = sb.SemiStructuredLinear(
                masked, token_multiple=sb.backend_constraints(backend).token_multiple)
        with torch.inference_mode():
            _assert_bf16_close(sparse(x), want)


def test_swapped_hf_model_gives_the_dense_logits():
    import transformers

    backends = _backends()
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    for backend in backends:
        model = transformers.LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and name.startswith("model.layers."):
                    module.weight.copy_(sb.apply_2of4(module.weight))
        ids = torch.randint(0, 256, (3, 40), device="cuda")
        with torch.inference_mode():
            dense = model(ids).logits
        constraints = sb.backend_constraints(backend)
        selected, skipped = sb.select_semi_structured_linears(model, constraints=constraints)
        assert len(selected) == 14 and list(skipped) == ["lm_head"]
        with sb.semi_structured_backend(backend):
            sb.apply_semi_structured(model, selected, token_multiple=constraints.token_multiple)
        with torch.inference_mode():
            sparse = model(ids).logits
            step = model(ids[:, :1]).logits  # 3 tokens: a padded decode-sized batch
        _assert_bf16_close(sparse, dense)
        _assert_bf16_close(step, dense[:, :1])
