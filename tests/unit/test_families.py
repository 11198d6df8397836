"""Model families (LLaMA, Mistral, Qwen2/2.5, Qwen3) through one architecture description:
HF -> Megatron -> HF bit-identical, Megatron logits equal to transformers', a config written
from the shape alone loads in transformers, and what is not supported is refused by name."""
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")  # an install extra ([hf], [test]) in CI
from safetensors.torch import load_file  # noqa: E402

from hf_utils import tiny_model  # noqa: E402
from test_convert import megatron_logits  # noqa: E402

from megatron_masklm.architecture import FAMILY_SWITCHES, ModelShape, padded_vocab_size  # noqa: E402

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3"]
TOKENS = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))


def _convert(tmp_path, family, **variant):
    from megatron_masklm.convert import convert_hf_to_megatron

    reference = tiny_model(tmp_path / "hf", family, **variant)
    convert_hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), tensor_model_parallel_size=2,
                           dtype="float32", make_vocab_size_divisible_by=16, progress=False)
    with torch.no_grad():
        expected = reference(TOKENS).logits
    return expected


@pytest.mark.parametrize("family, tied", [(f, False) for f in FAMILIES] + [("qwen2", True)])
def test_round_trip_is_bit_identical_and_logits_match(tmp_path, family, tied):
    from megatron_masklm.convert import convert_megatron_to_hf

    expected = _convert(tmp_path, family, tied=tied)
    shape = json.load(open(tmp_path / "mg" / "model_shape.json"))
    assert shape["family"] == family
    assert shape["add_qkv_bias"] == (family == "qwen2")
    assert shape["qk_layernorm"] == (family in ("qwen3", "gemma3"))
    assert shape["kv_channels"] == (24 if family in ("qwen3", "gemma3") else 16)
    if family == "gemma3":  # every Gemma piece is in the shape, and each one changes the logits
        assert (shape["window_size"], shape["window_attn_skip_freq"], shape["rotary_base_local"],
                shape["rotary_base"], shape["softmax_scale"]) == (5, 2, 100.0, 5000.0, 20 ** -0.5)
        assert shape["post_sublayer_norms"] and shape["scale_embeddings"]
        assert shape["layernorm_zero_centered_gamma"] and shape["activation"] == "gelu_tanh"
    ours = megatron_logits(str(tmp_path / "mg"), TOKENS)[..., :100]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)

    convert_megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "back"))
    original = load_file(tmp_path / "hf" / "model.safetensors")
    returned = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(original) == sorted(returned)
    for name in original:
        assert torch.equal(original[name], returned[name]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_a_config_written_from_the_shape_alone_gives_the_same_model(tmp_path, family):
    """With no hf_config.json kept (a training run's checkpoint), export writes the family's
    own config.json, which transformers reads back into the same logits (over the padded
    vocabulary: without the original config the padding rows cannot be told apart)."""
    from megatron_masklm.convert import convert_megatron_to_hf

    expected = _convert(tmp_path, family)
    os.remove(tmp_path / "mg" / "hf_config.json")
    convert_megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "back"))
    config = json.load(open(tmp_path / "back" / "config.json"))
    assert config["architectures"] == [tiny_model.__globals__["FAMILY_CLASSES"][family][1]]
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS).logits[..., :100], expected, rtol=0, atol=0)


@pytest.mark.parametrize("family, overrides, message", [
    ("llama", dict(attention_bias=True), "attention_bias=True is not supported"),
    ("qwen3", dict(attention_bias=True), "attention_bias=True is not supported"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
     "sliding-window layers"),
    ("llama", dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    ("gemma3", dict(final_logit_softcapping=30.0), "final_logit_softcapping=30.0 is not supported"),
    ("gemma3", dict(layer_types=["full_attention", "sliding_attention"]),
     "not every 1th layer global"),
])
def test_what_megatron_would_compute_differently_is_refused(tmp_path, family, overrides, message):
    from megatron_masklm.convert import convert_hf_to_megatron

    tiny_model(tmp_path / "hf", family, **overrides)
    with pytest.raises(ValueError, match=message):
        convert_hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False)
    assert not (tmp_path / "mg").exists()


def test_an_unsupported_family_is_refused_by_name():
    from megatron_masklm.convert.hf_config import shape_from_hf_config

    config = {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2"}
    with pytest.raises(ValueError, match="'Gemma2ForCausalLM'.*soft-capping.*Gemma3ForCausalLM"):
        shape_from_hf_config(config)
    with pytest.raises(ValueError, match="'PhiForCausalLM' .* is not supported: convert one of"):
        shape_from_hf_config({"architectures": ["PhiForCausalLM"]})


def test_a_shape_takes_its_family_switches_unless_set():
    base = dict(num_layers=1, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
                vocab_size=128)
    old = ModelShape.from_dict({"family": "gpt", **base})  # a model_shape.json of before
    assert (old.normalization, old.gated_linear_unit, old.activation, old.add_bias_linear,
            old.position_embedding_type, old.kv_channels) == (
        "LayerNorm", False, "gelu", True, "learned_absolute", 16)
    qwen3 = ModelShape(family="qwen3", kv_channels=32, **base)
    assert qwen3.qk_layernorm and not qwen3.add_qkv_bias and qwen3.head_dim == 32
    assert ModelShape(family="qwen2", **base).qkv_bias
    assert ModelShape(family="llama", add_qkv_bias=True, **base).add_qkv_bias  # explicit wins
    assert set(FAMILY_SWITCHES["llama"]) == set(FAMILY_SWITCHES["gpt"])
    with pytest.raises(ValueError, match="'gemma2' is not one of"):
        ModelShape(family="gemma2", **base)
    gemma = ModelShape(family="gemma3", window_size=8, window_attn_skip_freq=3, **base)
    assert [gemma.is_window_layer(n) for n in range(1, 7)] == [True, True, False] * 2
    with pytest.raises(ValueError, match="post_sublayer_norms with add_bias_linear"):
        ModelShape(family="gemma3", add_bias_linear=True, **base)
    with pytest.raises(ValueError, match="activation 'relu2' is not one of"):
        ModelShape(activation="relu2", **base)
    with pytest.raises(ValueError, match="set kv_channels"):
        ModelShape(**{**base, "num_attention_heads": 5})
    with pytest.raises(ValueError, match=r"\['rope_kind'\] are not known"):
        ModelShape.from_dict({**base, "rope_kind": "x"})
    assert padded_vocab_size(49152, 128 * 3) == 49152 and padded_vocab_size(100, 32) == 128


def test_a_switch_apart_from_the_family_has_no_hf_layout():
    from megatron_masklm.convert.name_map import param_maps

    shape = ModelShape(family="llama", add_qkv_bias=True, num_layers=1, hidden_size=64,
                       ffn_hidden_size=96, num_attention_heads=4, vocab_size=128)
    with pytest.raises(ValueError, match="'llama' model with {'add_qkv_bias': True} has no Hugging"):
        param_maps(shape, hf_vocab_size=100)


def test_a_feature_megatron_core_cannot_build_is_an_error_not_dropped():
    from megatron_masklm.mcore import compat

    def spec(*, qk_layernorm=False):
        return qk_layernorm

    assert compat._supported_kwargs(spec, dict(qk_layernorm=True, timeout=3),
                                    may_drop=("timeout",)) == dict(qk_layernorm=True)
    with pytest.raises(ValueError, match=r"takes no \['qk_l2_norm'\] \(asked for qk_l2_norm=True\)"):
        compat._supported_kwargs(spec, dict(qk_layernorm=True, qk_l2_norm=True))


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma3"])
def test_masked_model_of_each_family_is_the_dense_one_with_its_masks_applied(family):
    """The masked builder takes the family's spec (QK-norm, QKV bias): every block linear is
    masked, only the logits train, and the output is the dense model's with each weight
    multiplied by its hard 2:4 mask (the bias and norms untouched)."""
    from megatron_masklm.convert.output import megatron_world_of_one
    from megatron_masklm.masking import MaskConfig

    gemma = dict(window_size=5, window_attn_skip_freq=2, rotary_base_local=100.0)
    shape = ModelShape(family=family, num_layers=2 if family == "gemma3" else 1, hidden_size=64,
                       ffn_hidden_size=96, num_attention_heads=4, num_query_groups=2,
                       kv_channels=24, vocab_size=128, **(gemma if family == "gemma3" else {}))
    with megatron_world_of_one() as (mcore, _):
        torch.manual_seed(0)
        dense = mcore.build_dense_gpt_model(shape).eval()
        with torch.no_grad():  # random norms and biases, so a misplaced one shows
            for name, param in dense.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    param.add_(torch.randn_like(param) * 0.1)
        masked = mcore.build_masked_gpt_model(shape, MaskConfig()).eval()
        mcore.load_model_tensors(masked, dense.state_dict(), may_lack=("mask_logits",))
        layers = dict(mcore.masked_linears(masked))
        trainable = [n for n, p in masked.named_parameters() if p.requires_grad]
        positions = torch.arange(16).expand(2, 16)
        with torch.no_grad():
            for name, layer in layers.items():
                layer.mask_logits.normal_()
                dense.get_parameter(name + ".weight").mul_(layer.hard_mask())
            torch.testing.assert_close(masked(TOKENS, positions, None),
                                       dense(TOKENS, positions, None), rtol=1e-6, atol=1e-6)
    extra = {"qwen2": "linear_qkv.bias", "qwen3": "q_layernorm",
             "gemma3": "linear_fc2.post_norm"}[family]
    assert any(extra in name for name, _ in dense.named_parameters())
    assert set(layers) == {f"decoder.layers.{i}.{p}" for i in range(shape.num_layers) for p in (
        "self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1",
        "mlp.linear_fc2")}
    assert trainable and all(n.endswith("mask_logits") for n in trainable)

