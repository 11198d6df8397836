"""Reading a mask file of either format into memory still packed, and writing one.

``read_packed_masks`` tells the format from the archive (a compact file has ``__format__``,
an npz-bits file only ``<name>.mask`` entries), checks it, and unpacks one entry at a time.
"""
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .compact import Shape, parse_compact, save_masks_compact, unpack_compact
from .npz import MASK_SUFFIX, save_masks_npz, unpack_mask

FORMATS = ("npz", "compact")
"""What ``save_masks`` writes: "npz" (npz-bits, SPEC section 5) or "compact" (index format)."""
DEFAULT_NM = (2, 4)


def save_masks(path: str, masks: Dict[str, torch.Tensor], *, fmt: str = "npz",
               nm: Optional[Tuple[int, int]] = None) -> None:
    """Write ``{param name: keep-mask}`` in format ``fmt`` (the compact one needs ``nm``)."""
    if fmt not in FORMATS:
        raise ValueError(f"mask format {fmt!r} is not one of {FORMATS}")
    if fmt == "npz":
        save_masks_npz(path, masks)
    elif nm is None:
        raise ValueError("the compact mask format stores N:M: pass nm=(n, m)")
    else:
        save_masks_compact(path, masks, n=nm[0], m=nm[1])


def resolve_pattern(nm: Optional[Tuple[int, int]], file_nm: Optional[Tuple[int, int]]
                    ) -> Tuple[int, int]:
    """The N:M masks are checked against: ``nm`` (a parsed ``--pattern``), else the file's own
    (compact files store it), else 2:4; a ``nm`` that disagrees with the file is a ValueError."""
    if nm is None:
        return tuple(file_nm) if file_nm is not None else DEFAULT_NM
    n, m = nm
    if file_nm is not None and (n, m) != tuple(file_nm):
        raise ValueError(f"--pattern {n}:{m} disagrees with the mask file, which is "
                         f"{file_nm[0]}:{file_nm[1]}: drop --pattern or use the right file")
    return n, m


@dataclass
class PackedMasks:
    """A mask file read into memory still packed; unpack one parameter at a time."""

    path: str
    format: str
    """"compact" or "npz-bits"."""
    packed: Dict[str, np.ndarray]
    shapes: Dict[str, Shape] = field(default_factory=dict)
    """Stored shapes (compact files only; npz-bits files do not record shapes)."""
    nm: Optional[Tuple[int, int]] = None
    """(n, m) of a compact file; None for npz-bits."""

    def check_shape(self, name: str, shape: Shape) -> None:
        """ValueError naming the entry when ``name`` cannot be a mask of this shape."""
        shape = tuple(int(s) for s in shape)
        if self.format == "compact":
            if self.shapes[name] != shape:
                raise ValueError(f"mask file {self.path!r}: entry {name!r} has shape "
                                 f"{self.shapes[name]} but the weight has shape {shape}")
            return
        needed = (int(np.prod(shape)) + 7) // 8
        if self.packed[name].size != needed:
            raise ValueError(f"mask file {self.path!r}: entry {name!r} has "
                             f"{self.packed[name].size} bytes but shape {shape} needs {needed}: "
                             f"it does not belong to this weight")

    def unpack(self, name: str, shape: Optional[Shape] = None) -> torch.Tensor:
        """Bool keep-mask of one parameter (``shape`` required for npz-bits files)."""
        if name not in self.packed:
            raise ValueError(f"mask file {self.path!r} has no entry {name!r}")
        if shape is None and self.format == "npz-bits":
            raise ValueError(f"mask file {self.path!r} is npz-bits, which stores no shapes: "
                             f"give the shape of {name!r}")
        shape = tuple(int(s) for s in (shape if shape is not None else self.shapes[name]))
        self.check_shape(name, shape)
        if self.format == "npz-bits":
            return unpack_mask(self.packed[name], shape)
        try:
            return unpack_compact(self.packed[name], shape, *self.nm)
        except ValueError as error:
            raise ValueError(f"mask file {self.path!r}: entry {name!r}: {error}") from None


def read_packed_masks(path: str) -> PackedMasks:
    """Read either mask format (detected by ``__format__``), validated but still packed."""
    if not os.path.isfile(path):
        raise ValueError(f"mask file {path!r} does not exist")
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle anything else
        raise ValueError(f"cannot read mask file {path!r}: not an .npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"cannot read mask file {path!r}: {error}") from error
    if "__format__" in arrays:
        packed, shapes, nm = parse_compact(path, arrays)
        return PackedMasks(path, "compact", packed, shapes, nm)
    bad = sorted(key for key in arrays if not key.endswith(MASK_SUFFIX))
    if bad or not arrays:
        raise ValueError(f"{path!r} is not a mask file: no '__format__' entry (compact) and "
                         f"{'no entries' if not arrays else f'entries {bad[:3]} lack'} "
                         f"the '{MASK_SUFFIX}' suffix (npz-bits)")
    packed = {key[: -len(MASK_SUFFIX)]: value for key, value in arrays.items()}
    return PackedMasks(path, "npz-bits", packed)


def load_masks_compact(path: str, shapes: Optional[Dict[str, Shape]] = None
                       ) -> Tuple[Dict[str, torch.Tensor], Tuple[int, int]]:
    """All masks of a compact file and its (n, m); with ``shapes``, names and shapes must match."""
    masks = read_packed_masks(path)
    if masks.format != "compact":
        raise ValueError(f"{path!r} is not a compact mask file (no '__format__' entry; it looks "
                         f"like an npz-bits file: use load_masks_npz or load_masks_any)")
    if shapes is not None:
        _check_names(masks, shapes)
    names = masks.packed if shapes is None else shapes
    return {name: masks.unpack(name, None if shapes is None else shapes[name])
            for name in names}, masks.nm


def _check_names(masks: PackedMasks, shapes: Dict[str, Shape]) -> None:
    missing = sorted(set(shapes) - set(masks.packed))
    extra = sorted(set(masks.packed) - set(shapes))
    if missing or extra:
        raise ValueError(f"mask file {masks.path!r} does not match the model: missing "
                         f"{missing[:5]} ({len(missing)} in all), unexpected {extra[:5]} "
                         f"({len(extra)} in all)")


def detect_mask_format(path: str) -> str:
    """"compact" (has a ``__format__`` entry) or "npz-bits" (only ``<name>.mask`` entries)."""
    return read_packed_masks(path).format


def load_masks_any(path: str, shapes: Optional[Dict[str, Shape]] = None) -> Dict[str, torch.Tensor]:
    """Masks from either format; ``shapes`` (required for npz-bits) must match the file's names."""
    masks = read_packed_masks(path)
    if shapes is None and masks.format == "npz-bits":
        raise ValueError(f"{path!r} is an npz-bits mask file, which stores no shapes: pass shapes")
    if shapes is not None:
        _check_names(masks, shapes)
    names = masks.packed if shapes is None else shapes
    return {name: masks.unpack(name, None if shapes is None else shapes[name]) for name in names}
