"""Final keep-masks of a Megatron checkpoint, written under HF parameter names; and whole-model
mask files (either naming, either format) read back under global Megatron names, and onto a
model's shards (``load_global_masks``: megatron is imported when it runs)."""
import os
import re
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from ..masking import group_counts, is_exact_nm
from ..masking.files import FORMATS, PackedMasks, read_packed_masks, save_masks
from ..architecture import HF_FAMILIES, ModelShape
from ..fileio import check_writable
from .megatron_to_hf import load_megatron_checkpoint
from .name_map import ParamMap, masked_hf_names, param_maps

Shape = Tuple[int, ...]
MEGATRON_NAMES, HF_NAMES = "megatron", "hf"
_MEGATRON_KEY = re.compile(r"^(decoder|embedding|output_layer)\.")
_HF_KEY = re.compile(r"^(model|lm_head)\.")
_NAMING_HINT = ("global Megatron names (decoder.layers.<i>.mlp.linear_fc1.weight) or HF names "
                "(model.layers.<i>.mlp.gate_proj.weight)")


def export_masks(checkpoint: str, path: str, *, fmt: str = "npz", overwrite: bool = False,
                 trust: bool = False) -> Dict[str, torch.Tensor]:
    """Write the argmax masks of ``checkpoint`` (read at TP=1 from any TP/PP) to ``path``.

    ``npz``: the released per-parameter packed-bit format (SPEC section 5); ``compact``: one
    candidate index per group (``megatron_masklm.masking.files``). Returns the masks. An existing
    ``path`` is replaced only with ``overwrite``; ``trust``: see ``load_megatron_checkpoint``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"mask format {fmt!r} is not one of {FORMATS}")
    if os.path.isdir(path):
        raise ValueError(f"--output {path!r} is a directory: name the mask file to write, "
                         f"e.g. {os.path.join(path, 'masks.npz')!r} (--overwrite replaces files, "
                         "never directories)")
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"--output {path!r} already exists: pass --overwrite to replace it, or "
                         "choose another path")
    check_writable(path)  # before the checkpoint is read
    loaded = load_megatron_checkpoint(checkpoint, trust=trust)
    if not loaded.masks:
        raise ValueError(f"{checkpoint!r} has no mask logits: it is a dense checkpoint")
    save_masks(path, loaded.masks, fmt=fmt, nm=loaded.nm)
    return loaded.masks


def mask_file_naming(path: str, keys: Iterable[str], *, megatron: Iterable[str] = (),
                     hf: Iterable[str] = ()) -> str:
    """``"megatron"`` or ``"hf"``: how a mask file names its entries, told from its keys.

    A key counts as Megatron when it is in ``megatron`` or starts like a Megatron parameter
    (``decoder.``, ...), as HF when it is in ``hf`` or starts like a HF one (``model.``, ...).
    A file that mixes both, or has keys that are neither, is a ValueError naming a few of them.
    """
    megatron, hf = set(megatron), set(hf)
    found = {MEGATRON_NAMES: [], HF_NAMES: [], None: []}
    for key in sorted(keys, key=_natural):
        if key in megatron or (key not in hf and _MEGATRON_KEY.match(key)):
            found[MEGATRON_NAMES].append(key)
        elif key in hf or _HF_KEY.match(key):
            found[HF_NAMES].append(key)
        else:
            found[None].append(key)
    neither = found[None]
    if neither:
        raise ValueError(f"mask file {path!r}: entries {neither[:3]} ({len(neither)} in all) are "
                         f"not parameter names; a mask file names its entries by {_NAMING_HINT} "
                         f"(tools/export_masks.py and tools/prune_oneshot.py write them)")
    if found[MEGATRON_NAMES] and found[HF_NAMES]:
        raise ValueError(f"mask file {path!r} mixes Megatron names ({found[MEGATRON_NAMES][:2]}) "
                         f"and HF names ({found[HF_NAMES][:2]}): use one naming for every entry, "
                         f"{_NAMING_HINT}")
    return HF_NAMES if found[HF_NAMES] else MEGATRON_NAMES


def hf_mask_maps(shapes: Dict[str, Shape], shape: ModelShape) -> Tuple[Dict[str, ParamMap],
                                                                      Dict[str, Shape]]:
    """The name map's masked entries for the Megatron weights in ``shapes`` (global name ->
    unsharded shape): Megatron name -> ParamMap, and the shape of each HF weight they split into."""
    if shape.family not in HF_FAMILIES:
        raise ValueError(f"HF-named mask files map onto {HF_FAMILIES} models only; this model is "
                         f"{shape.family!r}: pass a mask file under global Megatron names")
    maps = {pm.megatron: pm for pm in param_maps(shape, hf_vocab_size=shape.vocab_size)
            if pm.masked}
    unmapped = sorted(set(shapes) - set(maps))
    if unmapped:
        raise ValueError(f"this model ({shape.family}) has masked weights {unmapped[:3]} without "
                         "a HF name: pass a mask file under global Megatron names")
    maps = {name: maps[name] for name in shapes}
    hf_shapes = {}
    for name, pm in maps.items():  # the map's own split, on meta tensors: the HF shapes
        parts = pm.to_hf(torch.empty(shapes[name], device="meta"))
        hf_shapes.update((hf, tuple(part.shape)) for hf, part in zip(pm.hf, parts))
    return maps, hf_shapes


def read_global_masks(path: str, shapes: Dict[str, Shape], *, n: int, m: int,
                      shape: Optional[ModelShape] = None,
                      only: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """A whole-model mask file as bool keep-masks under global Megatron names.

    ``path``: either format (npz-bits or compact, read by ``masking.files``), under global
    Megatron names (``tools/prune_oneshot.py --output-mask``) or HF names
    (``tools/export_masks.py``, ``prune_oneshot.py --hf-masks``), told from its keys. HF masks
    are fused into Megatron's layout (q/k/v per query group, fc1 as [gate; up]) with the
    project's name map, which needs the model's ``shape``. ``shapes``: global Megatron name ->
    unsharded shape of every masked weight of the model; the file must hold exactly those
    weights, shaped so, each exactly ``n``:``m``. With ``only``, just those Megatron names are
    unpacked (a pipeline stage needs its own layers); the names and shapes of the whole file
    are checked regardless. Every mismatch is a ValueError naming the file, the entry and the fix.
    """
    packed = read_packed_masks(path)
    hf_names: Dict[str, str] = {}
    if shape is not None and shape.family in HF_FAMILIES:
        hf_names = masked_hf_names(param_maps(shape, hf_vocab_size=shape.vocab_size))
    naming = mask_file_naming(path, packed.packed, megatron=shapes, hf=hf_names)
    if naming == HF_NAMES and shape is None:
        raise ValueError(f"mask file {path!r} is under HF names: mapping it onto Megatron's "
                         f"fused layout needs the model's shape (pass shape=ModelShape)")
    maps, expected = hf_mask_maps(shapes, shape) if naming == HF_NAMES else ({}, dict(shapes))
    _check_pattern(packed, n, m)
    _check_entries(packed, expected, naming, num_layers=_num_layers(shapes))
    masks = {}
    for name in (shapes if only is None else list(only)):
        parts = maps[name].hf if naming == HF_NAMES else (name,)
        unpacked = [_unpack_exact(packed, part, expected[part], n, m) for part in parts]
        mask = maps[name].to_megatron(*unpacked) if naming == HF_NAMES else unpacked[0]
        assert tuple(mask.shape) == tuple(shapes[name]), (name, mask.shape, shapes[name])
        masks[name] = mask
    return masks


def load_global_masks(path: str, model: torch.nn.Module, *, shape: ModelShape,
                      num_layers: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Read a whole-model mask file; return this rank's shards keyed by local module name.

    The file (npz-bits or compact, under global Megatron or HF names: see
    :func:`read_global_masks`) must hold exactly the model's masked weights (all layers,
    unsharded shapes), each exactly the model's N:M. ``shape`` is the run's ModelShape
    (``RunConfig.model``), which maps HF q/k/v onto Megatron's fused layout (and is checked
    against the built model).
    """
    from ..mcore.global_masks import (all_global_shapes, check_shape_fits, global_layer_names,
                                      model_pattern, shard_global_mask)
    from ..mcore.model import masked_linears

    check_shape_fits(shape, model)
    num_layers = num_layers or model.config.num_layers
    shapes = all_global_shapes(model, num_layers)
    names = global_layer_names(model)
    wanted = [f"{names[name]}.weight" for name in names]
    n, m = model_pattern(model)
    masks = read_global_masks(path, shapes, n=n, m=m, shape=shape, only=wanted)
    layers = dict(masked_linears(model))
    return {name: shard_global_mask(masks[f"{names[name]}.weight"], layers[name]) for name in names}


def _num_layers(shapes: Dict[str, Shape]) -> int:
    layers = {int(match.group(1)) for name in shapes
              for match in [re.search(r"layers\.(\d+)\.", name)] if match}
    return max(layers) + 1 if layers else 0


def _check_pattern(packed: PackedMasks, n: int, m: int) -> None:
    if packed.format == "compact" and tuple(packed.nm) != (n, m):
        a, b = packed.nm
        raise ValueError(f"mask file {packed.path!r} holds {a}:{b} masks but this run learns "
                         f"{n}:{m} masks: pass a {n}:{m} mask file, or train with --pattern {a}:{b}")


def _check_entries(packed: PackedMasks, expected: Dict[str, Shape], naming: str, *,
                   num_layers: int) -> None:
    names = "HF" if naming == HF_NAMES else "global Megatron"
    fix = ("pass a mask made for this model (same layers and shapes), e.g. exported from a run of "
           "it with tools/export_masks.py or computed with tools/prune_oneshot.py")
    missing = sorted(set(expected) - set(packed.packed), key=_natural)
    if missing:
        raise ValueError(f"mask file {packed.path!r} has no mask for {missing[:3]} ({len(missing)} "
                         f"of the model's {len(expected)} masked weights missing, {names} names): "
                         f"{fix}")
    extra = sorted(set(packed.packed) - set(expected), key=_natural)
    if extra:
        raise ValueError(f"mask file {packed.path!r} holds masks for {extra[:3]} ({len(extra)} in "
                         f"all), which are not masked weights of this {num_layers}-layer model: "
                         f"{fix}")
    for name, shape in expected.items():
        try:
            packed.check_shape(name, shape)
        except ValueError as error:
            raise ValueError(f"{error}; {fix}") from None


def _unpack_exact(packed: PackedMasks, name: str, shape: Shape, n: int, m: int) -> torch.Tensor:
    mask = packed.unpack(name, shape)
    if not is_exact_nm(mask, n, m):
        counts = group_counts(mask, m)
        bad = (counts != n).nonzero()
        row, group = (int(v) for v in bad[0])
        raise ValueError(
            f"mask file {packed.path!r}: {name!r} is not an exact {n}:{m} mask: row {row}, group "
            f"{group} (inputs {group * m}..{group * m + m - 1}) keeps {int(counts[row, group])} "
            f"of {m} ({len(bad)} bad groups in all). A prior mask must be exactly the run's "
            f"{n}:{m}: pass a {n}:{m} mask (tools/prune_oneshot.py --pattern {n}:{m}, or "
            f"tools/export_masks.py of a {n}:{m} run), or train with --pattern set to the "
            f"mask's own N:M")
    return mask


def _natural(name: str) -> List:
    """Sort key that orders layer 2 before layer 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
