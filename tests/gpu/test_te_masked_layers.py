"""GPU only: masked Transformer Engine linears equal the local-spec masked linears (bf16, fp32
mask maths), also with gradient-accumulation fusion on and, on two GPUs, with sequence
parallelism at TP=2; the masked forward never syncs the host. Skipped without CUDA (conftest),
without TE, or (the TP=2 test) with fewer than two GPUs."""
import os
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_LLAMA as SHAPE

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dist"))
from harness import run_distributed  # noqa: E402  (tests/dist: spawned ranks with tracebacks)

pytestmark = pytest.mark.gpu
HIDDEN, FFN = 128, 256


def _configs(**overrides):
    """TransformerConfigs for the TE layers and for the local reference. Megatron's local
    linears refuse gradient-accumulation fusion without apex's fused_weight_gradient_mlp_cuda,
    and the masked ones switch it off in their GEMM anyway, so without apex the reference is
    built unfused."""
    from megatron.core.tensor_parallel import layers as tp_layers
    from megatron.core.transformer import TransformerConfig

    base = dict(num_layers=1, hidden_size=HIDDEN, num_attention_heads=4, bf16=True,
                params_dtype=torch.bfloat16, normalization="RMSNorm", **overrides)
    te_config = TransformerConfig(**base)
    if base.get("gradient_accumulation_fusion") and not tp_layers._grad_accum_fusion_available:
        base["gradient_accumulation_fusion"] = False
    return te_config, TransformerConfig(**base)


def _build(kind, config, mask_config, *, te):
    """One masked linear: "column" (HIDDEN -> FFN), "ln_column" (TE's fused RMSNorm + column; the
    local one is the plain column, fed a hand-normalised input) or "row" (FFN -> HIDDEN)."""
    from megatron_masklm.mcore import layers, te_layers

    common = dict(config=config, init_method=torch.nn.init.normal_, bias=False,
                  skip_bias_add=False, mask_config=mask_config)
    te_extra = dict(is_expert=False)
    if kind == "row":
        cls = te_layers.MaskedTERowParallelLinear if te else layers.MaskedRowParallelLinear
        return cls(FFN, HIDDEN, input_is_parallel=True, **common, **(te_extra if te else {}))
    if te:
        cls = (te_layers.MaskedTELayerNormColumnParallelLinear if kind == "ln_column"
               else te_layers.MaskedTEColumnParallelLinear)
        return cls(HIDDEN, FFN, gather_output=False, **common, **te_extra)
    return layers.MaskedColumnParallelLinear(HIDDEN, FFN, gather_output=False, **common)


def _rms_norm(x, gamma, eps):
    """RMSNorm as TE computes it: fp32 statistics and scaling, output in the input's dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * gamma.float()).to(x.dtype)


def _te_pair(mcore, kind, mask_config=None, **config_overrides):
    """A TE masked layer and a local one with the same weight shard, logits and (LN) gamma."""
    from megatron_masklm.masking import MaskConfig
    from megatron_masklm.mcore import compat

    if not compat.HAVE_TE:
        pytest.skip("Transformer Engine is not installed")
    config, local_config = _configs(**config_overrides)
    mask_config = mask_config or MaskConfig(gumbel_noise=False)
    te = _build(kind, config, mask_config, te=True).cuda()
    local = _build(kind, local_config, mask_config, te=False).cuda()
    with torch.no_grad():
        local.weight.copy_(te.weight)
        local.mask_logits.copy_(te.mask_logits)
        if kind == "ln_column":  # a gamma that is not all ones, so the norm's scale is tested
            te.layer_norm_weight.uniform_(0.5, 1.5)
    return SimpleNamespace(te=te, local=local, kind=kind, eps=config.layernorm_epsilon)


def _forward(pair, layer, x):
    if pair.kind == "ln_column" and layer is pair.local:
        x = _rms_norm(x, pair.te.layer_norm_weight.detach(), pair.eps)
    out, _ = layer(x)
    return out


@pytest.mark.parametrize("kind", ["column", "row", "ln_column"])
@pytest.mark.parametrize("training", [True, False])
def test_te_masked_linear_matches_local(mcore, kind, training):
    pair = _te_pair(mcore, kind)
    te, local = pair.te, pair.local
    assert te.mask_logits.dtype == torch.float32 and te.weight.dtype == torch.bfloat16
    x = torch.randn(8, 2, te.weight.shape[1], device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(8, 2, te.weight.shape[0], device="cuda", dtype=torch.bfloat16)
    outputs = []
    for layer in (te, local):
        layer.train(training)
        out = _forward(pair, layer, x)
        out.backward(grad)
        outputs.append((out.float(), layer.mask_logits.grad))
    # bf16 outputs of size ~10 (normal_ weights): tolerances relative to the largest value
    torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=2e-2,
                               atol=2e-2 * outputs[1][0].abs().max().item())
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


def test_te_spec_model_loads_a_local_spec_checkpoint_and_matches_it(mcore, tmp_path):
    """A bf16 masked model saved with the local spec (as CPU training saves it) loads into the TE
    spec through the evaluation/export loader: the same hard masks exactly (the fused fc1's
    gate/up logits included), and the same loss and logit gradients to bf16 accuracy."""
    import dataclasses

    from megatron.core import dist_checkpointing

    from megatron_masklm.mcore.loading import load_model
    from megatron_masklm.masking import MaskConfig, MaskState
    from megatron_masklm.mcore import (
        ModelShape, apply_mask_state, build_masked_gpt_model, build_transformer_config, compat,
        hard_masks, masked_linears)
    from megatron_masklm.mcore.te_layers import MaskedTEMixin

    if not compat.HAVE_TE:
        pytest.skip("Transformer Engine is not installed")
    shape = ModelShape(**SHAPE)
    torch.manual_seed(0)
    local = build_masked_gpt_model(shape, MaskConfig(), use_te=False,
                                   config=build_transformer_config(shape, bf16=True))
    with torch.no_grad():
        for _, layer in masked_linears(local):
            layer.mask_logits.normal_(0.0, 0.1)
    dist_checkpointing.save(local.sharded_state_dict(), str(tmp_path))
    te = load_model(str(tmp_path), shape=shape, nm=(2, 4))
    assert isinstance(te.decoder.layers[0].mlp.linear_fc1, MaskedTEMixin)
    assert te.embedding.word_embeddings.weight.dtype == torch.bfloat16
    want, got = hard_masks(local), hard_masks(te)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    tokens = torch.randint(0, SHAPE["vocab_size"], (2, 32), device="cuda")
    positions = torch.arange(32, device="cuda").expand(2, 32)
    results = []
    for model in (te, local):
        for _, layer in masked_linears(model):  # no noise: both see the same soft masks
            layer.mask_config = dataclasses.replace(layer.mask_config, gumbel_noise=False)
        apply_mask_state(model, MaskState(temperature=0.5, logit_scale=10.0, reg_weight=0.0))
        model.train()
        loss = model(tokens, positions, None, labels=tokens).float().mean()
        loss.backward()
        results.append((loss.item(), {name: layer.mask_logits.grad
                                      for name, layer in masked_linears(model)}))
    (te_loss, te_grads), (local_loss, local_grads) = results
    assert te_loss == pytest.approx(local_loss, rel=2e-2)
    for name, want in local_grads.items():
        assert te_grads[name].dtype == torch.float32
        torch.testing.assert_close(te_grads[name], want, rtol=1e-1,
                                   atol=1e-1 * want.abs().max().item(), msg=lambda m: f"{name}: {m}")


def _reference_logit_grad(weight, logits, candidates, xs, grads, *, tau, kappa):
    """d/d logits of sum_i <x_i (W * M~)^T, g_i> in float64, the mask written out by hand."""
    logits = logits.detach().double().requires_grad_(True)
    probs = torch.softmax(logits * kappa / tau, dim=-1)
    masked = weight.detach().double() * (probs @ candidates.double()).reshape(weight.shape)
    total = sum((x.double() @ masked.t() * g.double()).sum() for x, g in zip(xs, grads))
    total.backward()
    return logits.grad


@pytest.mark.parametrize("kind", ["column", "row", "ln_column"])
def test_te_masked_layers_with_gradient_accumulation_fusion(mcore, kind):
    """Fusion on in the config: TE's fused wgrad is off for masked layers, so two accumulated
    micro-batches give the logits (fp32) the same gradient as the local layers and a float64
    reference, and nothing is written into the frozen weight's main_grad."""
    from megatron_masklm.masking import MaskState

    pair = _te_pair(mcore, kind, gradient_accumulation_fusion=True)
    te, local = pair.te, pair.local
    assert te.config.gradient_accumulation_fusion and te.fuse_wgrad_accumulation is False
    tau, kappa = 0.5, 10.0
    with torch.no_grad():
        te.mask_logits.normal_(0.0, 0.1)
        local.mask_logits.copy_(te.mask_logits)
    for layer in (te, local):
        layer.set_mask_state(MaskState(temperature=tau, logit_scale=kappa, reg_weight=0.0))
        layer.train(True)
        # what Megatron's DDP attaches when fusion is on: the fused wgrad would land here
        layer.weight.main_grad = torch.zeros(layer.weight.shape, device="cuda", dtype=torch.float32)
    in_features, out_features = te.weight.shape[1], te.weight.shape[0]
    xs = [torch.randn(8, 2, in_features, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    grads = [torch.randn(8, 2, out_features, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    outputs = {}
    for name, layer in (("te", te), ("local", local)):
        outputs[name] = []
        for x, g in zip(xs, grads):  # two micro-batches, gradients accumulate
            out = _forward(pair, layer, x)
            out.backward(g)
            outputs[name].append(out.detach().float())
        assert layer.mask_logits.grad.dtype == torch.float32
        assert layer.weight.grad is None and not layer.weight.main_grad.any()
    for te_out, local_out in zip(outputs["te"], outputs["local"]):
        torch.testing.assert_close(te_out, local_out, rtol=2e-2, atol=2e-2 * local_out.abs().max().item())
    scale = local.mask_logits.grad.abs().max().item()
    torch.testing.assert_close(te.mask_logits.grad, local.mask_logits.grad, rtol=5e-2, atol=5e-2 * scale)
    inputs = xs
    if kind == "ln_column":
        inputs = [_rms_norm(x, te.layer_norm_weight.detach(), pair.eps) for x in xs]
    want = _reference_logit_grad(te.weight, te.mask_logits, te.mask_candidates, inputs, grads,
                                 tau=tau, kappa=kappa)
    torch.testing.assert_close(te.mask_logits.grad.double(), want, rtol=5e-2,
                               atol=5e-2 * want.abs().max().item())


def _sequence_parallel_rank(*, rank, init_method):
    """TP=2 with sequence parallelism and gradient-accumulation fusion: TE fc1-like (RMSNorm +
    column) -> row pair against the local masked pair on the same shards and sequence chunks."""
    from megatron.core import parallel_state

    from megatron_masklm.masking import MaskConfig, MaskState
    from megatron_masklm.mcore import initialize_distributed

    initialize_distributed(tensor_model_parallel_size=2, init_method=init_method, seed=11)
    assert parallel_state.get_tensor_model_parallel_world_size() == 2
    config, local_config = _configs(tensor_model_parallel_size=2, sequence_parallel=True,
                                    gradient_accumulation_fusion=True)
    mask_config = MaskConfig(gumbel_noise=False)
    te = [_build(k, config, mask_config, te=True).cuda() for k in ("ln_column", "row")]
    local = [_build(k, local_config, mask_config, te=False).cuda() for k in ("column", "row")]
    gen = torch.Generator(device="cuda").manual_seed(0)  # identical full tensors on both ranks
    with torch.no_grad():
        te[0].layer_norm_weight.uniform_(0.5, 1.5, generator=gen)
        for t, loc in zip(te, local):
            t.mask_logits.normal_(0.0, 0.1, generator=gen)
            loc.weight.copy_(t.weight)
            loc.mask_logits.copy_(t.mask_logits)
    x = torch.randn(16, 2, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
    g = torch.randn(16, 2, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
    x_chunk, g_chunk = x.chunk(2, 0)[rank], g.chunk(2, 0)[rank]  # sequence-parallel inputs
    results = {}
    for name, (fc1, fc2) in (("te", te), ("local", local)):
        for layer in (fc1, fc2):
            layer.set_mask_state(MaskState(temperature=0.5, logit_scale=10.0, reg_weight=0.0))
            layer.train(True)
            layer.weight.main_grad = torch.zeros(layer.weight.shape, device="cuda",
                                                 dtype=torch.float32)
        inp = x_chunk.clone().requires_grad_(True)
        h = inp if name == "te" else _rms_norm(inp, te[0].layer_norm_weight.detach(),
                                               config.layernorm_epsilon)
        h, _ = fc1(h)
        assert h.shape == (16, 2, FFN // 2)  # gathered sequence, this rank's columns
        y, _ = fc2(h)
        assert y.shape == x_chunk.shape  # reduce-scattered back to this rank's chunk
        y.backward(g_chunk)
        results[name] = dict(y=y.detach().float(), dx=inp.grad.float(),
                             fc1=fc1.mask_logits.grad, fc2=fc2.mask_logits.grad)
        for layer in (fc1, fc2):
            assert layer.weight.grad is None and not layer.weight.main_grad.any()
    for key, want in results["local"].items():
        got = results["te"][key]
        assert got.dtype == want.dtype and (key in ("y", "dx") or got.dtype == torch.float32)
        torch.testing.assert_close(got, want, rtol=5e-2, atol=5e-2 * want.abs().max().item(),
                                   msg=lambda m: f"rank {rank} {key}: {m}")
    return sorted(results["te"])


@pytest.mark.timeout(300)
def test_te_masked_layers_sequence_parallel_tp2_match_local():
    from megatron_masklm.mcore import compat

    if not compat.HAVE_TE:
        pytest.skip("Transformer Engine is not installed")
    if torch.cuda.device_count() < 2:
        pytest.skip("sequence parallelism needs TP=2: two GPUs")
    assert run_distributed(_sequence_parallel_rank) == [["dx", "fc1", "fc2", "y"]] * 2
