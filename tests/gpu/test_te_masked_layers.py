"""GPU only: masked Transformer Engine linears equal the local-spec masked linears (bf16, TP=1),
and the masked forward never syncs the host. Skipped without CUDA (conftest) or without TE."""
import pytest
import torch

from conftest import TINY_LLAMA as SHAPE

pytestmark = pytest.mark.gpu


def _te_pair(mcore, kind):
    from megatron.core.transformer import TransformerConfig

    from megatron_masklm.masking import MaskConfig
    from megatron_masklm.mcore import compat, layers, te_layers

    if not compat.HAVE_TE:
        pytest.skip("Transformer Engine is not installed")
    config = TransformerConfig(num_layers=1, hidden_size=128, num_attention_heads=4, bf16=True,
                               params_dtype=torch.bfloat16, normalization="RMSNorm")
    mc = MaskConfig(gumbel_noise=False)
    common = dict(config=config, init_method=torch.nn.init.normal_, bias=False,
                  skip_bias_add=False, mask_config=mc)
    if kind == "column":
        te = te_layers.MaskedTEColumnParallelLinear(128, 256, gather_output=False, is_expert=False, **common)
        local = layers.MaskedColumnParallelLinear(128, 256, gather_output=False, **common)
    else:
        te = te_layers.MaskedTERowParallelLinear(256, 128, input_is_parallel=True, is_expert=False, **common)
        local = layers.MaskedRowParallelLinear(256, 128, input_is_parallel=True, **common)
    with torch.no_grad():
        local.weight.copy_(te.weight)
        local.mask_logits.copy_(te.mask_logits)
    return te.cuda(), local.cuda()


@pytest.mark.parametrize("kind", ["column", "row"])
@pytest.mark.parametrize("training", [True, False])
def test_te_masked_linear_matches_local(mcore, kind, training):
    te, local = _te_pair(mcore, kind)
    assert te.mask_logits.dtype == torch.float32 and te.weight.dtype == torch.bfloat16
    x = torch.randn(8, 2, te.weight.shape[1], device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(8, 2, te.weight.shape[0], device="cuda", dtype=torch.bfloat16)
    outputs = []
    for layer in (te, local):
        layer.train(training)
        out, _ = layer(x)
        out.backward(grad)
        outputs.append((out.float(), layer.mask_logits.grad))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=5e-2, atol=5e-2 * outputs[1][1].abs().max().item())
    assert isinstance(te._parameters["weight"], torch.nn.Parameter)  # the real weight is back
    assert te._parameters["mask_logits"] is te.mask_logits and te.mask_logits.grad is not None


def test_masked_forward_never_syncs_the_host(mcore):
    from megatron_masklm.masking import MaskConfig
    from megatron_masklm.mcore import ModelShape, build_masked_gpt_model, build_transformer_config

    shape = ModelShape(**SHAPE)
    model = build_masked_gpt_model(shape, MaskConfig(), use_te=False,
                                   config=build_transformer_config(shape, bf16=True)).cuda()
    layers = [layer for layer in model.modules() if hasattr(layer, "mask_logits")]
    x = torch.randn(16, 2, SHAPE["hidden_size"], device="cuda", dtype=torch.bfloat16)
    layer = model.decoder.layers[0].mlp.linear_fc1
    for training in (True, False):
        layer.train(training)
        layer(x)  # warm-up: allocator and cuBLAS set-up may sync once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = layer(x)[0]
            layer.masked_weight()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert out.dtype == torch.bfloat16 and all(l.mask_logits.dtype == torch.float32 for l in layers)


def test_te_spec_model_trains_logits_in_bf16(mcore):
    from megatron_masklm.masking import MaskConfig
    from megatron_masklm.mcore import (
        ModelShape, build_masked_gpt_model, build_transformer_config, check_nm, compat)

    if not compat.HAVE_TE:
        pytest.skip("Transformer Engine is not installed")
    shape = ModelShape(**SHAPE)
    model = build_masked_gpt_model(shape, MaskConfig(), config=build_transformer_config(shape, bf16=True),
                                   use_te=True).cuda()
    tokens = torch.randint(0, SHAPE["vocab_size"], (2, 32), device="cuda")
    positions = torch.arange(32, device="cuda").expand(2, 32)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(5):
        loss = model(tokens, positions, None, labels=tokens).float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    assert all(check_nm(model).values())
