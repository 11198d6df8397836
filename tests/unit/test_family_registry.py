"""A model family is one module (megatron_masklm/families/): the generic code names none, presets
are defined once (the memory estimator, the sparse bench and examples/configs agree with them),
and a new LLaMA-like family, defined in this file alone, converts HF -> Megatron -> HF
bit-identically and builds the model its switches say, with no other file edited."""
import ast
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_masklm import families
from megatron_masklm.architecture import FAMILY_SWITCHES, ModelShape
from megatron_masklm.families.llama import llama_like

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "megatron_masklm"
EXAMPLES = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
NOT_A_PRESET = {"tiny_cpu"}  # the CPU demo's toy shape

# --- a new family: this module plays the part of megatron_masklm/families/olmo_like.py ----------
# LLaMA in every way but one switch (a per-head RMSNorm on queries and keys), under HF names of its
# own; its HF parameters are those of its switches (q_norm / k_norm, as Qwen3 names them).
FAMILY = llama_like(
    "olmo_like", "OlmoLikeForCausalLM", summary="a LLaMA with QK-norm (test only)",
    switches={"qk_layernorm": True},
    presets={"olmo-like-1b": dict(num_layers=16, hidden_size=2048, ffn_hidden_size=8192,
                                  num_attention_heads=16, num_query_groups=16,
                                  vocab_size=50304)})
TINY = dict(architectures=["OlmoLikeForCausalLM"], model_type="olmolike", vocab_size=100,
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
            rope_theta=5000.0, tie_word_embeddings=False, torch_dtype="float32")


@pytest.fixture
def olmo_like():
    # modules that take a snapshot of the registry when they load (the memory estimator's
    # PRESETS, the sparse bench's LLAMA2) load first, so the test family does not outlive the test
    import megatron_masklm.training.memory  # noqa: F401
    from script_modules import benchmark

    benchmark("sparse_speed")  # benchmarks/sparse_speed.py

    families.register(FAMILY)
    try:
        yield FAMILY
    finally:
        families.unregister(FAMILY.name)


def _tiny_checkpoint(directory: Path, config: dict, seed: int = 0) -> dict:
    """A random HF checkpoint of ``config``'s family: the tensors its name map asks for, shaped
    as config.json says (norms and biases random too, so a misplaced one shows)."""
    from megatron_masklm.convert.hf_config import shape_from_hf_config
    from megatron_masklm.convert.name_map import param_maps

    shape = shape_from_hf_config(config)
    heads, groups, width = shape.num_attention_heads, shape.groups, shape.kv_channels
    hidden, ffn = shape.hidden_size, shape.ffn_hidden_size
    rows = {"q_proj": (heads * width, hidden), "k_proj": (groups * width, hidden),
            "v_proj": (groups * width, hidden), "o_proj": (hidden, heads * width),
            "gate_proj": (ffn, hidden), "up_proj": (ffn, hidden), "down_proj": (hidden, ffn),
            "q_norm": (width,), "k_norm": (width,), "embed_tokens": (config["vocab_size"], hidden),
            "lm_head": (config["vocab_size"], hidden)}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in (hf for pm in param_maps(shape, hf_vocab_size=config["vocab_size"]) for hf in pm.hf):
        kind = name.split(".")[-2]
        size = rows.get(kind, (hidden,))
        tensors[name] = torch.randn(*size, generator=generator) * (0.1 if len(size) == 1 else 0.05)
        if len(size) == 1:
            tensors[name] += 1.0
    directory.mkdir()
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "tokenizer.json").write_text('{"fake": "tokenizer"}')
    return tensors


def _logits(checkpoint: Path, tokens: torch.Tensor) -> torch.Tensor:
    from megatron.core import dist_checkpointing

    from megatron_masklm.convert.output import megatron_world_of_one

    with megatron_world_of_one() as (mcore, _):
        shape = mcore.ModelShape.from_dict(json.loads((checkpoint / "model_shape.json").read_text()))
        model = mcore.build_dense_gpt_model(shape)
        state = dist_checkpointing.load(model.sharded_state_dict(), str(checkpoint / "release"))
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            return model.eval()(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)


# --- the new family through every generic piece ---------------------------------------------

def test_a_new_family_is_read_written_and_mapped_by_the_generic_code(olmo_like):
    from megatron_masklm.convert.hf_config import hf_config_from_shape, shape_from_hf_config
    from megatron_masklm.convert.name_map import masked_hf_names, param_maps
    from megatron_masklm.training import memory

    assert "olmo_like" in families.names() and "olmo_like" in families.hf_families()
    assert FAMILY_SWITCHES["olmo_like"] == {**FAMILY_SWITCHES["llama"], "qk_layernorm": True}
    shape = shape_from_hf_config(TINY, vocab_multiple=16)
    assert (shape.family, shape.qk_layernorm, shape.add_qkv_bias, shape.vocab_size) == (
        "olmo_like", True, False, 112)
    written = hf_config_from_shape(shape, vocab_size=100, torch_dtype="float32")
    assert (written["architectures"], written["model_type"]) == (["OlmoLikeForCausalLM"], "olmolike")
    assert shape_from_hf_config(written, vocab_multiple=16) == shape
    with pytest.raises(ValueError, match="OlmoLikeForCausalLM with attention_bias=True"):
        shape_from_hf_config({**TINY, "attention_bias": True})

    maps = {pm.megatron: pm.hf for pm in param_maps(shape, hf_vocab_size=100)}
    assert maps["decoder.layers.1.self_attention.q_layernorm.weight"] == (
        "model.layers.1.self_attn.q_norm.weight",)
    assert len(masked_hf_names(param_maps(shape, hf_vocab_size=100))) == 2 * 7
    with pytest.raises(ValueError, match="'olmo_like' model with {'qk_layernorm': False}"):
        param_maps(dataclasses.replace(shape, qk_layernorm=False), hf_vocab_size=100)
    with pytest.raises(ValueError, match="'olmo_like' model with {'window_size': 8}"):
        param_maps(dataclasses.replace(shape, window_size=8), hf_vocab_size=100)

    preset = ModelShape(**families.preset_options()["olmo-like-1b"])
    assert preset.family == "olmo_like" and preset.qk_layernorm
    report = memory.estimate(preset, memory.Setup(tensor_model_parallel_size=2))
    assert report.peak.total > 0


def test_a_new_family_converts_bit_identically_and_builds_its_switches(olmo_like, tmp_path):
    """Its checkpoint round-trips bit-identically, and the model Megatron builds from its
    switches is the one of the family it copies (Qwen3: LLaMA + QK-norm): the same logits."""
    from megatron_masklm.convert import convert_hf_to_megatron, convert_megatron_to_hf

    original = _tiny_checkpoint(tmp_path / "hf", TINY)
    convert_hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), progress=False,
                           make_vocab_size_divisible_by=16)
    assert json.loads((tmp_path / "mg" / "model_shape.json").read_text())["family"] == "olmo_like"
    convert_megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "back"))
    returned = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(returned) == sorted(original)
    assert all(torch.equal(returned[name], original[name]) for name in original)

    qwen3 = tmp_path / "qwen3"
    qwen3.mkdir()
    (qwen3 / "model.safetensors").write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes())
    (qwen3 / "config.json").write_text(json.dumps({**TINY, "architectures": ["Qwen3ForCausalLM"],
                                                   "model_type": "qwen3"}))
    convert_hf_to_megatron(str(qwen3), str(tmp_path / "mg3"), progress=False,
                           make_vocab_size_divisible_by=16)
    tokens = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    ours = _logits(tmp_path / "mg", tokens)
    assert torch.equal(ours, _logits(tmp_path / "mg3", tokens))
    assert ours.abs().max() > 0


def test_the_registry_refuses_a_clash_and_an_incomplete_family(olmo_like):
    with pytest.raises(ValueError, match="'olmo_like' is already registered"):
        families.register(FAMILY)
    twin = dataclasses.replace(FAMILY, name="twin")
    with pytest.raises(ValueError, match=r"\['OlmoLikeForCausalLM', 'olmo-like-1b'\] already "
                                         "belong to 'olmo_like'"):
        families.register(twin)
    with pytest.raises(ValueError, match=r"switches \['qk_layernorm'\] unset"):
        dataclasses.replace(FAMILY, switches={k: v for k, v in FAMILY.switches.items()
                                              if k != "qk_layernorm"})
    with pytest.raises(ValueError, match="preset 'x' names a family"):
        dataclasses.replace(FAMILY, presets={"x": dict(family="llama")})
    with pytest.raises(ValueError, match="'nope' is not one of"):
        families.get("nope")


def test_after_a_test_family_is_gone_nothing_of_it_is_left():
    assert "olmo_like" not in families.names() and "olmo_like" not in FAMILY_SWITCHES
    assert families.by_architecture("OlmoLikeForCausalLM") is None
    with pytest.raises(ValueError, match="'olmo_like' is not one of"):
        ModelShape(family="olmo_like", num_layers=1, hidden_size=8, ffn_hidden_size=8,
                   num_attention_heads=1, vocab_size=8)


# --- the registry is the one place -----------------------------------------------------------

def test_the_switches_are_the_model_shapes_optional_fields():
    defaults = {f.name: f.default for f in dataclasses.fields(ModelShape)}
    assert all(defaults[name] is None for name in families.SWITCH_NAMES)
    assert all(name in defaults and defaults[name] is None for name in families.OPTIONAL_HF_FIELDS)
    assert families.names() == ("llama", "mistral", "qwen2", "qwen3", "gemma3", "gpt")
    assert families.hf_families() == families.names()[:-1]


def _string_constants(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_no_module_outside_the_families_names_a_family():
    """A family name or HF architecture as a string outside megatron_masklm/families/ is a
    branch on the family that belongs in its module (a preset name such as llama2-7b is not)."""
    named = set(families.names()) | set(families.supported_architectures())
    named |= {families.get(name).model_type for name in families.hf_families()}
    found = [f"{path.relative_to(ROOT)}:{line}: {value!r}"
             for path in sorted(PACKAGE.rglob("*.py")) if "families" not in path.parts
             for line, value in _string_constants(path) if value in named]
    assert not found, "\n".join(found)


def test_the_memory_estimator_and_the_sparse_bench_read_the_presets():
    from megatron_masklm.training import memory
    from script_modules import benchmark

    sparse_bench = benchmark("sparse_speed")

    options = families.preset_options()
    assert memory.PRESET_OPTIONS == options
    assert {name: vars(shape) for name, shape in memory.PRESETS.items()} == {
        name: vars(ModelShape(**values)) for name, values in options.items()}
    assert sparse_bench.LLAMA2 == {
        size: dict(hidden=options[f"llama2-{size}"]["hidden_size"],
                   ffn=options[f"llama2-{size}"]["ffn_hidden_size"]) for size in ("7b", "13b")}


def _preset_of(config_path: Path) -> str:
    """examples/configs/qwen2_5_7b.yaml -> qwen2.5-7b: the preset a config is named after."""
    names = {name.replace(".", "_").replace("-", "_"): name for name in families.preset_options()}
    assert config_path.stem in names, (f"{config_path.name} is named after no preset: add its "
                                       "shape to its family's module")
    return names[config_path.stem]


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.stem not in NOT_A_PRESET],
                         ids=lambda p: p.name)
def test_each_example_config_has_its_presets_shape(path):
    """The YAML files users pass to train keep their model keys; this keeps them equal to the
    preset they are named after, so a shape is defined once (its family's module)."""
    from megatron_masklm.training.arguments import load_yaml_options, run_config_from_options

    options = load_yaml_options(str(path))
    options.setdefault("data_path", ["corpus_text_document"])
    model = run_config_from_options(options).model
    assert model == ModelShape(**families.preset_options()[_preset_of(path)])
