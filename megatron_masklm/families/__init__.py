"""Model families, one module each, and the registry the generic code reads.

A family module (``llama.py``, ``qwen2.py``, ``gemma3.py``, ...) defines ``FAMILY``, a
:class:`Family`: its switches (what the Megatron builder computes differently), its Hugging Face
architecture names, its config.json reader and writer, the shape fields its HF layout has beyond
the switches (the name map's exceptions), and its presets (the shapes of released models).
ModelShape, the HF config reader and writer (``convert.hf_config``), the name map
(``convert.name_map``), the memory estimator and the sparse bench read this registry and name no
family. Adding a family: a module here, its line in :data:`MODULES`, and its test
(``tests/unit/test_family_registry.py`` adds one without touching any other file).

A leaf of the package: no megatron, no other module of the package (``architecture`` reads it).
"""
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple

from . import gemma3, gpt, llama, mistral, qwen2, qwen3
from .base import OPTIONAL_HF_FIELDS, SWITCH_NAMES, Family, check_values, layout_keys

MODULES = (llama, mistral, qwen2, qwen3, gemma3, gpt)
"""The family modules, in the order families are listed (in messages and CLI choices)."""
DEFAULT_FAMILY = llama.FAMILY.name
"""The family of a shape that names none (a ``model_shape.json`` written before families)."""

_FAMILIES: Dict[str, Family] = {}
_SWITCHES: Dict[str, Dict[str, Any]] = {}
SWITCHES: Mapping[str, Dict[str, Any]] = MappingProxyType(_SWITCHES)
"""Family name -> its switches (a read-only view that follows :func:`register`)."""


def register(family: Family) -> Family:
    """Add ``family``; its name, HF architectures and preset names must be new."""
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered")
    for other in _FAMILIES.values():
        taken = sorted(set(family.hf_architectures) & set(other.hf_architectures))
        taken += sorted(set(family.presets) & set(other.presets))
        if taken:
            raise ValueError(f"family {family.name!r}: {taken} already belong to {other.name!r}")
    _FAMILIES[family.name] = family
    _SWITCHES[family.name] = family.switches
    return family


def unregister(name: str) -> Family:
    """Remove the family ``name`` (a test's, or one registered by mistake)."""
    _SWITCHES.pop(name, None)
    return _FAMILIES.pop(name)


def names() -> Tuple[str, ...]:
    """Every registered family."""
    return tuple(_FAMILIES)


def get(name: str) -> Family:
    """The family ``name``; ValueError naming the registered ones if there is none."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"family {name!r} is not one of {names()}") from None


def hf_families() -> Tuple[str, ...]:
    """The families with a Hugging Face layout (conversion, HF-named mask files)."""
    return tuple(name for name, family in _FAMILIES.items() if family.converts)


def hf_family(name: str) -> Optional[Family]:
    """The family ``name`` if it is registered and has a Hugging Face layout, else None."""
    family = _FAMILIES.get(name)
    return family if family is not None and family.converts else None


def by_architecture(arch: str) -> Optional[Family]:
    """The family a config.json ``architectures`` entry is read as (None: not supported)."""
    for family in _FAMILIES.values():
        if arch in family.hf_architectures:
            return family
    return None


def supported_architectures() -> Tuple[str, ...]:
    """Every HF architecture that converts."""
    return tuple(arch for family in _FAMILIES.values() for arch in family.hf_architectures)


def not_yet() -> Dict[str, str]:
    """Architectures users ask for that do not convert yet -> what is missing for each."""
    return {arch: why for family in _FAMILIES.values() for arch, why in family.hf_not_yet.items()}


def preset_options() -> Dict[str, Dict[str, Any]]:
    """Preset name -> its ModelShape options, ``family`` included."""
    return {preset: {"family": family.name, **options}
            for family in _FAMILIES.values() for preset, options in family.presets.items()}


for _module in MODULES:
    register(_module.FAMILY)

__all__ = ["DEFAULT_FAMILY", "Family", "MODULES", "OPTIONAL_HF_FIELDS", "SWITCHES", "SWITCH_NAMES", "by_architecture",
           "check_values", "get", "hf_families", "hf_family", "layout_keys", "names", "not_yet",
           "preset_options", "register", "supported_architectures", "unregister"]
