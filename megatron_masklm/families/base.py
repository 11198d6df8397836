"""What a model family is (:class:`Family`), and the Hugging Face config pieces families share.

No megatron, and no other module of the package: :mod:`megatron_masklm.architecture` (a leaf
module) reads the registry, so a family describes a shape through its fields' names (``shape``
arguments are :class:`~megatron_masklm.architecture.ModelShape` objects, read by attribute)
and hands back plain option dicts that the generic code turns into a ``ModelShape``.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

SWITCH_NAMES = ("normalization", "gated_linear_unit", "activation", "add_bias_linear",
                "add_qkv_bias", "qk_layernorm", "position_embedding_type",
                "layernorm_zero_centered_gamma", "post_sublayer_norms", "scale_embeddings")
"""The ModelShape switches a family sets (a shape's switch left None takes its family's)."""

OPTIONAL_HF_FIELDS = ("window_size", "softmax_scale", "rotary_base_local")
"""ModelShape fields that only some families' HF layouts can express; a family lists the ones
its layout has in :attr:`Family.hf_shape_fields`, and a shape of another family with one set
has no HF layout."""

HF_SUFFIX = "ForCausalLM"


@dataclass(frozen=True)
class Family:
    """Everything that sets one model family apart; the generic code (ModelShape, the HF config
    reader and writer, the name map, the memory estimator) reads only this."""

    name: str
    """The ``family`` of a ModelShape and of ``model_shape.json``."""
    switches: Dict[str, Any]
    """A value for each of :data:`SWITCH_NAMES`: what the family's layers compute (the Megatron
    builder reads the switches, never the family's name)."""
    summary: str = ""
    """The models it covers, said in a few words."""
    hf_architectures: Tuple[str, ...] = ()
    """config.json ``architectures`` read as this family; the first is the one written. Empty:
    no Hugging Face layout (no conversion, no HF-named mask files)."""
    hf_model_type: Optional[str] = None
    """config.json ``model_type`` written (None: the architecture less ForCausalLM, lower case)."""
    read_hf_config: Optional[Callable[[str, Dict[str, Any]], Dict[str, Any]]] = None
    """``(architecture, config.json) -> ModelShape options`` (the vocabulary unpadded, no
    ``family``); refuses with ValueError what Megatron would compute differently."""
    write_hf_config: Optional[Callable[..., Dict[str, Any]]] = None
    """``(shape, torch_dtype=...) -> config.json keys`` beyond :func:`layout_keys` (for a model
    whose original config.json was not kept)."""
    hf_shape_fields: Tuple[str, ...] = ()
    """The :data:`OPTIONAL_HF_FIELDS` its HF layout expresses (the name map's exceptions)."""
    hf_not_yet: Mapping[str, str] = field(default_factory=dict)
    """Architectures near this family that users ask for but do not convert yet -> why."""
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Named shapes of released models (ModelShape options without ``family``), as the memory
    estimator, the sparse bench and ``examples/configs`` use them."""

    def __post_init__(self):
        unset = [name for name in SWITCH_NAMES if name not in self.switches]
        unknown = sorted(set(self.switches) - set(SWITCH_NAMES))
        if unset or unknown:
            raise ValueError(f"family {self.name!r}: switches {unset} unset, {unknown} unknown "
                             f"(a family sets exactly {SWITCH_NAMES})")
        if self.hf_architectures and not (self.read_hf_config and self.write_hf_config):
            raise ValueError(f"family {self.name!r} names HF architectures but cannot read or "
                             "write their config.json")
        bad = sorted(set(self.hf_shape_fields) - set(OPTIONAL_HF_FIELDS))
        if bad:
            raise ValueError(f"family {self.name!r}: hf_shape_fields {bad} are not among "
                             f"{OPTIONAL_HF_FIELDS}")
        for preset, options in self.presets.items():
            if "family" in options:
                raise ValueError(f"family {self.name!r}: preset {preset!r} names a family; the "
                                 "module it is in is its family")

    @property
    def converts(self) -> bool:
        """Whether it has a Hugging Face layout."""
        return bool(self.hf_architectures)

    @property
    def hf_architecture(self) -> str:
        """The architecture written to config.json."""
        return self.hf_architectures[0]

    @property
    def model_type(self) -> str:
        """The model_type written to config.json."""
        return self.hf_model_type or self.hf_architecture[:-len(HF_SUFFIX)].lower()


def check_values(arch: str, checks: Mapping[str, Tuple[Any, Any]]) -> None:
    """Refuse the first config.json key whose value (first) is not the wanted one (second)."""
    for key, (value, wanted) in checks.items():
        if value != wanted:
            raise ValueError(f"{arch} with {key}={value!r} is not supported (needs {wanted!r})")


def layout_keys(shape, family: Family, vocab_size: int) -> Dict[str, Any]:
    """The config.json keys every family writes the same way."""
    return {"architectures": [family.hf_architecture], "model_type": family.model_type,
            "hidden_size": shape.hidden_size, "intermediate_size": shape.ffn_hidden_size,
            "num_hidden_layers": shape.num_layers,
            "num_attention_heads": shape.num_attention_heads,
            "num_key_value_heads": shape.groups, "head_dim": shape.kv_channels,
            "vocab_size": vocab_size}
