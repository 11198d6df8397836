"""Choosing the layer implementation (--transformer-impl, --gradient-accumulation-fusion) and
loading a checkpoint across implementations: Megatron saves the local norms under TE's fused-norm
names, and TE modules add ``_extra_state`` objects where the local ones have none (TE's norm);
on CPU a local norm given TE-like extra state stands in for them."""
import pytest
import torch

from megatron_masklm.masking import MaskConfig

from conftest import TINY_LLAMA

CLI_SHAPE = ["--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128",
             "--num-attention-heads", "4", "--vocab-size", "128", "--mock-data"]


def test_transformer_impl_choice(monkeypatch):
    from megatron_masklm.mcore import compat, model, use_transformer_engine

    assert use_transformer_engine("local") is False
    monkeypatch.setattr(model.torch.cuda, "is_available", lambda: False)
    assert use_transformer_engine("auto") is False
    monkeypatch.setattr(compat, "HAVE_TE", False)
    with pytest.raises(ValueError, match="needs Transformer Engine.*use 'local'"):
        use_transformer_engine("transformer_engine")
    monkeypatch.setattr(compat, "HAVE_TE", True)
    assert use_transformer_engine("auto") is False  # TE imports, but no GPU
    with pytest.raises(ValueError, match="needs a CUDA GPU: use 'local'"):
        use_transformer_engine("transformer_engine")
    monkeypatch.setattr(model.torch.cuda, "is_available", lambda: True)
    assert use_transformer_engine("auto") is True and use_transformer_engine("transformer_engine")
    with pytest.raises(ValueError, match="'te' is not one of"):
        use_transformer_engine("te")


def test_options_on_the_command_line():
    from megatron_masklm.training.arguments import run_config_from_args

    parallel = run_config_from_args(CLI_SHAPE).parallel
    assert (parallel.transformer_impl, parallel.gradient_accumulation_fusion) == ("local", False)
    parallel = run_config_from_args(CLI_SHAPE + ["--transformer-impl", "local",
                                                 "--gradient-accumulation-fusion"]).parallel
    assert (parallel.transformer_impl, parallel.gradient_accumulation_fusion) == ("local", True)
    with pytest.raises((ValueError, SystemExit)):
        run_config_from_args(CLI_SHAPE + ["--transformer-impl", "te"])


def test_builder_refuses_what_cannot_run_here(mcore):
    from megatron_masklm.training.arguments import run_config_from_args
    from megatron_masklm.training.builders import build_model_and_optimizer

    if mcore.compat.grad_accum_fusion_available():
        pytest.skip("apex's fused_weight_gradient_mlp_cuda is installed")
    config = run_config_from_args(CLI_SHAPE + ["--gradient-accumulation-fusion"])
    with pytest.raises(ValueError,
                       match="--gradient-accumulation-fusion needs apex.*drop the flag"):
        build_model_and_optimizer(config)
    if not mcore.compat.HAVE_TE:
        config = run_config_from_args(CLI_SHAPE + ["--transformer-impl", "transformer_engine"])
        with pytest.raises(ValueError, match="needs Transformer Engine"):
            build_model_and_optimizer(config)


def test_local_checkpoint_keys_are_the_transformer_engine_ones(mcore):
    """Megatron saves the local spec's separate norms under TE's fused-norm names, and the mask
    logits sit under the linear's name in both: the keys a TE model asks for."""
    model = mcore.build_masked_gpt_model(mcore.ModelShape(**TINY_LLAMA), MaskConfig(), use_te=False)
    state = model.sharded_state_dict()
    keys = mcore.compat.sharded_tensor_keys(state)
    layer, stacked = "decoder.layers.0.", "decoder.layers."  # layers are stacked on save
    for local, te in (("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"),
                      ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight")):
        assert state[layer + local].key == stacked + te
    for linear in ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1",
                   "mlp.linear_fc2"):
        assert {stacked + linear + ".weight", stacked + linear + ".mask_logits"} <= keys
    assert not any("input_layernorm" in key or "pre_mlp_layernorm" in key for key in keys)


@pytest.fixture
def te_like_extra_state(mcore, monkeypatch):
    """Give the final norm's class (torch's RMSNorm, or apex's where it is installed) the
    ``_extra_state`` TE's norm saves and the local norm lacks (the local linears already save a
    placeholder under the linears' names). Returns (the class, the key)."""
    model = mcore.build_dense_gpt_model(mcore.ModelShape(**TINY_LLAMA))
    norm_class = type(model.decoder.final_layernorm)

    def get_extra_state(self):
        return torch.zeros(0)

    def set_extra_state(self, state):
        raise AssertionError("extra state is never loaded")

    monkeypatch.setattr(norm_class, "get_extra_state", get_extra_state, raising=False)
    monkeypatch.setattr(norm_class, "set_extra_state", set_extra_state, raising=False)
    return norm_class, "decoder.final_layernorm._extra_state"


def _save(mcore, model, directory):
    from megatron.core import dist_checkpointing

    directory.mkdir()
    dist_checkpointing.save(model.sharded_state_dict(), str(directory))
    return str(directory)


def _saved_without_extra_state(mcore, build, directory, extra_state):
    """A checkpoint of ``build()`` made while the final norm had no extra state."""
    norm_class, key = extra_state
    with pytest.MonkeyPatch.context() as plain:
        plain.delattr(norm_class, "get_extra_state")
        plain.delattr(norm_class, "set_extra_state")
        model = build()
        assert key not in model.state_dict()
        return model, _save(mcore, model, directory)


def test_masked_checkpoint_loads_into_a_model_with_more_extra_state(mcore, tmp_path,
                                                                    te_like_extra_state):
    from megatron_masklm.mcore.loading import load_model

    shape = mcore.ModelShape(**TINY_LLAMA)
    torch.manual_seed(0)
    saved, directory = _saved_without_extra_state(
        mcore, lambda: mcore.build_masked_gpt_model(shape, MaskConfig(), use_te=False),
        tmp_path / "ckpt", te_like_extra_state)
    # the stand-in is a local norm
    loaded = load_model(directory, shape=shape, nm=(2, 4), use_te=False)
    state, key = loaded.state_dict(), te_like_extra_state[1]
    assert key in state and key in loaded.sharded_state_dict()
    for key, value in saved.state_dict().items():
        if not key.endswith("_extra_state"):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_dense_pretrained_checkpoint_loads_into_a_model_with_more_extra_state(
        mcore, tmp_path, te_like_extra_state):
    from megatron_masklm.mcore.loading import load_dense_weights

    shape = mcore.ModelShape(**TINY_LLAMA)
    torch.manual_seed(1)
    dense, directory = _saved_without_extra_state(
        mcore, lambda: mcore.build_dense_gpt_model(shape), tmp_path / "dense", te_like_extra_state)
    masked = mcore.build_masked_gpt_model(shape, MaskConfig(), use_te=False)
    load_dense_weights(directory, model=masked)
    for key, value in dense.state_dict().items():
        if not key.endswith("_extra_state"):
            torch.testing.assert_close(masked.state_dict()[key], value, rtol=0, atol=0)


def test_load_model_tensors_is_strict_about_everything_else(mcore):
    model = mcore.build_masked_gpt_model(mcore.ModelShape(**TINY_LLAMA), MaskConfig(), use_te=False)
    tensors = dict(model.state_dict())
    mcore.load_model_tensors(model, tensors)
    logits = [key for key in tensors if key.endswith("mask_logits")]
    without_logits = {key: value for key, value in tensors.items() if key not in logits}
    with pytest.raises(RuntimeError, match="mask_logits"):
        mcore.load_model_tensors(model, without_logits)
    mcore.load_model_tensors(model, without_logits, may_lack=("mask_logits",))
    with pytest.raises(RuntimeError, match="unused"):
        mcore.load_model_tensors(model, {**tensors, "decoder.extra.weight": torch.zeros(1)})
