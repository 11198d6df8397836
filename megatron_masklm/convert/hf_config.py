"""Hugging Face config.json <-> ModelShape for the families that convert (no megatron import).

What differs between families (which keys each reads and writes, what it refuses) is in its
module of :mod:`megatron_masklm.families`; this module looks the family up and pads the
vocabulary.
"""
from typing import Any, Dict

from .. import families
from ..architecture import ModelShape, padded_vocab_size


def shape_from_hf_config(config: Dict[str, Any], *, vocab_multiple: int = 1) -> ModelShape:
    """The ModelShape of a HF config of a supported family; anything Megatron would compute
    differently is refused with the value that is not supported."""
    arch = (config.get("architectures") or ["?"])[0]
    family = families.by_architecture(arch)
    if family is None:
        not_yet = families.not_yet()
        missing = f" ({not_yet[arch]})" if arch in not_yet else ""
        raise ValueError(f"architecture {arch!r} (model_type {config.get('model_type')!r}) is not "
                         f"supported{missing}: convert one of "
                         f"{families.supported_architectures()}")
    options = family.read_hf_config(arch, config)
    options["vocab_size"] = padded_vocab_size(options["vocab_size"], vocab_multiple)
    return ModelShape(family=family.name, **options)


def hf_config_from_shape(shape: ModelShape, *, vocab_size: int, torch_dtype: str) -> Dict[str, Any]:
    """A config.json of ``shape``'s family (used when no original config was kept)."""
    family = families.hf_family(shape.family)
    if family is None:
        raise ValueError(f"a {shape.family!r} model has no Hugging Face layout: only "
                         f"{sorted(families.hf_families())} convert")
    return {**families.layout_keys(shape, family, vocab_size),
            **family.write_hf_config(shape, torch_dtype=torch_dtype)}
