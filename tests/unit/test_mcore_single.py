"""Masked Megatron-Core layers and model in one process (world of 1, CPU backend)."""
import os
import sys

import pytest
import torch

from megatron_masklm.masking import MaskConfig, MaskState, hard_mask, is_exact_nm, nm_candidates

from conftest import TINY_LLAMA as SHAPE


def _config(**kwargs):
    from megatron.core.model_parallel_config import ModelParallelConfig

    return ModelParallelConfig(use_cpu_initialization=True, params_dtype=torch.float32, **kwargs)


def _column(mcore, in_features=16, out_features=8, mask_config=None, **kwargs):
    return mcore.MaskedColumnParallelLinear(
        in_features, out_features, config=_config(**kwargs), init_method=torch.nn.init.normal_,
        bias=True, gather_output=False, mask_config=mask_config or MaskConfig())


def _model(mcore, mask_config=None, **kwargs):
    shape = mcore.ModelShape(**{**SHAPE, **kwargs})
    torch.manual_seed(0)
    return mcore.build_masked_gpt_model(shape, mask_config or MaskConfig())


def test_spec_masks_every_block_linear_and_nothing_else(mcore):
    model = _model(mcore)
    names = [name for name, _ in mcore.masked_linears(model)]
    expected = [f"decoder.layers.{i}.{sub}" for i in range(2) for sub in (
        "self_attention.linear_proj", "self_attention.linear_qkv", "mlp.linear_fc1", "mlp.linear_fc2")]
    assert sorted(names) == sorted(expected)
    assert not isinstance(model.output_layer, mcore.MaskedLinearMixin)
    assert model.decoder.layers[0].mlp.linear_fc1.glu_fc1
    assert not model.decoder.layers[0].self_attention.linear_qkv.glu_fc1


def test_mask_only_mode_trains_only_logits(mcore):
    model = _model(mcore)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith("mask_logits") for n in trainable)
    assert len(trainable) == 8
    joint = _model(mcore, MaskConfig(train_weights=True))
    assert all(p.requires_grad for p in joint.parameters())


def test_logits_layout_dtype_and_tp_attributes(mcore):
    layer = _column(mcore, 16, 8, MaskConfig(n=1, m=4))
    assert layer.mask_logits.shape == (8, 4, 4) and layer.mask_logits.dtype == torch.float32
    assert layer.mask_logits.tensor_model_parallel and layer.mask_logits.partition_dim == 0
    row = mcore.MaskedRowParallelLinear(16, 8, config=_config(), init_method=torch.nn.init.normal_,
                                        bias=False, input_is_parallel=True, skip_bias_add=False,
                                        mask_config=MaskConfig())
    assert row.mask_logits.shape == (8, 4, 6) and row.mask_logits.partition_dim == 1
    std = layer.mask_logits.std().item()
    assert 0.005 < std < 0.02  # Normal(0, 0.01) init


def test_bf16_cast_keeps_logits_fp32(mcore):
    layer = _column(mcore)
    before = layer.mask_logits.detach().clone()
    layer.bfloat16()
    assert layer.weight.dtype == torch.bfloat16
    assert layer.mask_logits.dtype == torch.float32
    assert torch.equal(layer.mask_logits.detach(), before)  # no round trip through bf16
    layer.train()
    out, _ = layer(torch.randn(3, 2, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.mask_logits.grad.dtype == torch.float32


def test_eval_mode_uses_the_argmax_mask(mcore):
    layer = _column(mcore)
    layer.eval()
    x = torch.randn(5, 2, 16)
    with torch.no_grad():
        out, _ = layer(x)
    mask = hard_mask(layer.mask_logits, nm_candidates(2, 4)).reshape(8, 16)
    assert is_exact_nm(mask, 2, 4)
    torch.testing.assert_close(out, x @ (layer.weight * mask).t() + layer.bias)


def test_training_noise_is_fresh_and_reseedable(mcore):
    layer = _column(mcore)
    layer.train()
    mcore.seed_mask_noise(9, iteration=4)
    first, second = layer.masked_weight().detach(), layer.masked_weight().detach()
    assert not torch.equal(first, second)  # fresh noise every forward
    mcore.seed_mask_noise(9, iteration=4)
    assert torch.equal(layer.masked_weight().detach(), first)  # reproducible from (seed, iteration)
    mcore.seed_mask_noise(9, iteration=5)
    assert not torch.equal(layer.masked_weight().detach(), first)


def test_noise_seeds_differ_across_parallel_ranks():
    from megatron_masklm.mcore.parallel import mask_noise_seed

    seeds = {mask_noise_seed(1, iteration=i, tp_rank=t, pp_rank=p, dp_rank=d)
             for i in range(3) for t in range(2) for p in range(2) for d in range(4)}
    assert len(seeds) == 3 * 2 * 2 * 4


def test_schedule_state_reaches_every_layer(mcore):
    model = _model(mcore)
    state = MaskState(temperature=0.5, logit_scale=321.0, reg_weight=2e-6)
    mcore.apply_mask_state(model, state)
    for _, layer in mcore.masked_linears(model):
        assert (layer.temperature, layer.logit_scale, layer.reg_weight) == (0.5, 321.0, 2e-6)


def test_forward_has_no_host_sync_and_keeps_no_weight_sized_state(mcore, monkeypatch):
    layer = _column(mcore, 16, 8)
    attributes_before = set(vars(layer))

    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__bool__")}

    def forbid(name):
        def call(tensor, *args, **kwargs):
            # Megatron's RNG-tracker fork compares CPU RNG states (a host-only check, no device
            # sync); everything else on the forward path must stay on the device.
            # (Skips the frame of a torch-function mode a tool run earlier in this process may
            # have left on, so the check sees the real caller.)
            frame = sys._getframe(1)
            while frame.f_code.co_filename.endswith(os.path.join("mcore", "cpu_backend.py")):
                frame = frame.f_back
            if frame.f_code.co_filename.endswith(os.path.join("tensor_parallel", "random.py")):
                return originals[name](tensor, *args, **kwargs)
            raise AssertionError(f"Tensor.{name}() (a host sync) on the masked forward path")
        return call

    for mode in (True, False):
        layer.train(mode)
        with monkeypatch.context() as patch:
            for name in originals:
                patch.setattr(torch.Tensor, name, forbid(name))
            out, _ = layer(torch.randn(4, 2, 16))
        out.sum().backward()
    assert set(vars(layer)) - attributes_before == set()
    tensors = [*layer.parameters(), *layer.buffers()]
    weight_sized = [t for t in tensors if t.numel() >= layer.weight.numel()]
    assert len(weight_sized) == 2  # the weight and the logits themselves, nothing cached
    assert [name for name, _ in layer.named_buffers()] == ["mask_candidates"]


def test_input_dimension_not_divisible_by_m_is_a_clear_error(mcore):
    with pytest.raises(ValueError, match=r"input dimension 18 .* not divisible by M=4"):
        _column(mcore, 18, 8)
    with pytest.raises(ValueError, match="needs mask_config"):
        mcore.MaskedColumnParallelLinear(16, 8, config=_config(), init_method=torch.nn.init.normal_,
                                         bias=False, gather_output=False)


def test_builder_rejects_bad_shapes(mcore):
    with pytest.raises(ValueError, match="num_query_groups 3 is not divisible by tensor-parallel"):
        mcore.build_transformer_config(mcore.ModelShape(**{**SHAPE, "num_query_groups": 3,
                                                            "num_attention_heads": 3, "hidden_size": 33}),
                                       tensor_model_parallel_size=2)
    with pytest.raises(ValueError, match="hidden_size 30 is not divisible"):
        mcore.ModelShape(**{**SHAPE, "hidden_size": 30})
    with pytest.raises(ValueError, match="family"):
        mcore.ModelShape(**{**SHAPE, "family": "bert"})


def test_prior_masks_win_the_argmax(mcore):
    model = _model(mcore)
    priors = {}
    gen = torch.Generator().manual_seed(1)
    for name, layer in mcore.masked_linears(model):
        random_logits = torch.randn(layer.mask_logits.shape, generator=gen)
        priors[name] = hard_mask(random_logits, nm_candidates(2, 4)).reshape(layer.weight.shape)
    # alpha=3 is a soft prior (a 1-std shift loses to init noise in ~7% of groups); alpha=10
    # shifts the prior candidate 10 logit-stds above its rivals, so it must win everywhere.
    mcore.apply_prior_masks(model, priors, strength=10.0)
    for name, mask in mcore.hard_masks(model).items():
        assert torch.equal(mask.cpu(), priors[name].bool()), name
    with pytest.raises(ValueError, match="missing"):
        mcore.apply_prior_masks(model, {}, strength=3.0)


def test_gpt_family_model_runs_and_is_exact_nm(mcore):
    model = _model(mcore, family="gpt", num_query_groups=None)
    model.eval()
    device = next(model.parameters()).device
    tokens = torch.randint(0, 64, (2, 8), device=device)
    with torch.no_grad():
        loss = model(tokens, torch.arange(8, device=device).expand(2, 8), None, labels=tokens)
    assert torch.isfinite(loss).all()
    assert all(mcore.check_nm(model).values())
    assert model.decoder.layers[0].mlp.linear_fc1.bias is not None  # biases kept


def test_cpu_backend_reports_active_without_cuda():
    from megatron_masklm.mcore import enable_cpu_backend

    assert enable_cpu_backend() is (not torch.cuda.is_available())


def test_activation_recompute_redraws_the_same_noise(mcore):
    """Full recompute re-runs the forward in backward; the Gumbel noise must come back identical
    (it is drawn from Megatron's RNG tracker, which checkpointing restores)."""
    grads = []
    for recompute in ({}, dict(recompute_granularity="full", recompute_method="uniform",
                               recompute_num_layers=1)):
        shape = mcore.ModelShape(**SHAPE)
        mcore.set_random_seeds(0)  # Megatron's tracker too: on GPU it draws the initial weights
        model = mcore.build_masked_gpt_model(
            shape, MaskConfig(), config=mcore.build_transformer_config(shape, **recompute))
        model.train()
        mcore.seed_mask_noise(5, iteration=2)
        device = next(model.parameters()).device
        tokens = torch.arange(16, device=device).remainder(64).view(2, 8)
        model(tokens, torch.arange(8, device=device).expand(2, 8), None,
              labels=tokens).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_spec_transform_reaches_partial_mlp_specs_and_refuses_dense_leftovers(mcore):
    """0.19+ writes the MLP as functools.partial(MLP.as_mlp_submodule, submodules=...)."""
    import functools

    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    class PartialMLP(MLP):
        @classmethod
        def as_submodule(cls, **kwargs):
            return cls(**kwargs)

    spec = ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        mlp=functools.partial(PartialMLP.as_submodule, submodules=MLPSubmodules(
            linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear))))
    masked = mcore.apply_masking_to_spec(spec, MaskConfig()).submodules.mlp
    fc1, fc2 = masked.keywords["submodules"].linear_fc1, masked.keywords["submodules"].linear_fc2
    assert fc1.module is mcore.MaskedColumnParallelLinear and fc1.params["glu_fc1"] is True
    assert fc2.module is mcore.MaskedRowParallelLinear and "glu_fc1" not in fc2.params
    assert masked.func == PartialMLP.as_submodule

    from megatron.core.models.gpt import GPTModel
    from megatron_masklm.mcore import compat, model as model_module

    shape = mcore.ModelShape(**SHAPE)
    dense = GPTModel(config=mcore.build_transformer_config(shape),
                     transformer_layer_spec=compat.gpt_layer_spec(use_te=False, normalization="RMSNorm"),
                     vocab_size=64, max_sequence_length=32)
    with pytest.raises(RuntimeError, match="left unmasked: .*linear_proj"):
        model_module._check_every_block_linear_is_masked(dense)


def test_tied_embeddings_model_shares_and_freezes_the_embedding(mcore):
    model = _model(mcore, tied_embeddings=True)
    assert model.share_embeddings_and_output_weights
    shared = model.shared_embedding_or_output_weight()
    assert shared is model.embedding.word_embeddings.weight and not shared.requires_grad
    device = shared.device
    tokens = torch.randint(0, 64, (2, 8), device=device)
    model(tokens, torch.arange(8, device=device).expand(2, 8), None, labels=tokens).mean().backward()
    assert shared.grad is None
    assert all(p.grad is not None for n, p in model.named_parameters() if n.endswith("mask_logits"))


def test_sdpa_attention_equals_megatrons_local_attention(mcore):
    """The fused core attention is the same maths: causal GQA logits match Megatron's own
    DotProductAttention; an explicit mask sends it down Megatron's path (equal again)."""
    from megatron_masklm.mcore.attention import SDPADotProductAttention

    shape = mcore.ModelShape(**SHAPE)
    torch.manual_seed(0)
    local = mcore.build_dense_gpt_model(shape).eval()
    torch.manual_seed(0)
    fused = mcore.build_dense_gpt_model(shape, sdpa_attention=True).eval()
    assert sum(isinstance(m, SDPADotProductAttention) for m in fused.modules()) == 2
    assert not any(isinstance(m, SDPADotProductAttention) for m in local.modules())
    fused.load_state_dict(local.state_dict())
    tokens = torch.randint(0, 64, (3, 24), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(24).expand_as(tokens)
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                      lambda *a, **k: calls.append(1) or original(*a, **k))
        expected = local(tokens, positions, None)
        torch.testing.assert_close(fused(tokens, positions, None), expected, rtol=1e-5, atol=1e-5)
        assert len(calls) == 2  # one per layer
        causal = torch.ones(1, 1, 24, 24, dtype=torch.bool).triu(1)  # True = masked out
        torch.testing.assert_close(fused(tokens, positions, causal), expected, rtol=1e-5, atol=1e-5)
        assert len(calls) == 2  # the explicit mask took Megatron's path


def test_a_fixed_mask_trains_the_kept_weights_only(mcore):
    """Weight recovery's layer: frozen logits at a given mask, every other parameter trains,
    the forward is W * mask in training mode too (no noise), the pruned weights start at 0 and
    their gradient is exactly 0."""
    model = _model(mcore, MaskConfig(frozen=True))
    assert model.decoder.layers[0].mlp.linear_fc1.mask_config.train_weights
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.endswith("mask_logits") for n in trainable)
    assert "embedding.word_embeddings.weight" in trainable
    masks, gen = {}, torch.Generator().manual_seed(4)
    for name, layer in mcore.masked_linears(model):
        masks[name] = hard_mask(torch.randn(layer.mask_logits.shape, generator=gen),
                                nm_candidates(2, 4)).reshape(layer.weight.shape).bool()
    originals = {name: layer.weight.detach().clone() for name, layer in mcore.masked_linears(model)}
    mcore.apply_fixed_masks(model, masks)
    model.train()
    tokens = torch.randint(0, SHAPE["vocab_size"], (2, 8), generator=gen)
    positions = torch.arange(8).expand(2, 8)
    model(tokens, positions, None).float().pow(2).mean().backward()
    for name, layer in mcore.masked_linears(model):
        mask = masks[name]
        assert torch.equal(layer.hard_mask(), mask), name
        assert torch.equal(layer.weight.detach(), originals[name] * mask), name
        assert torch.equal(layer.masked_weight(), layer.weight * mask)  # no noise in training
        assert not layer.weight.grad[~mask].any() and layer.weight.grad[mask].any(), name
        assert layer.mask_logits.grad is None
    with pytest.raises(ValueError, match="missing"):
        mcore.apply_fixed_masks(model, {})
