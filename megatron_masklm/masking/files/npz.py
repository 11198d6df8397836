"""The npz-bits mask format: hard masks <-> packed bits, one ``<name>.mask`` entry per
parameter in an .npz (the released format, SPEC section 5; no shapes stored)."""
import zipfile
import zlib
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
import torch

from ...fileio import atomic_savez

MASK_SUFFIX = ".mask"


def pack_mask(mask) -> np.ndarray:
    """np.packbits of the flattened boolean keep-mask (numpy's default big-endian bit order)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().bool().numpy()
    return np.packbits(np.asarray(mask).astype(bool).reshape(-1))


def unpack_mask(packed: np.ndarray, shape: Tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: unpack, truncate to numel, reshape; a bool tensor."""
    numel = int(np.prod(shape))
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != (numel + 7) // 8:
        raise ValueError(
            f"packed mask has {packed.size} bytes but shape {tuple(shape)} needs {(numel + 7) // 8}: "
            f"the mask file does not belong to this weight"
        )
    bits = np.unpackbits(packed)[:numel]
    return torch.from_numpy(bits.astype(bool).reshape(shape))


def save_masks_npz(path: str, masks: Dict[str, torch.Tensor]) -> None:
    """Write ``{param name: keep-mask}`` as ``<name>.mask`` packed entries, atomically."""
    entries = {name + MASK_SUFFIX: pack_mask(mask) for name, mask in masks.items()}
    atomic_savez(path, entries)

def load_masks_npz(path: str, shapes: Dict[str, Tuple[int, ...]], *,
                   only: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """Read the masks named in ``shapes`` from a mask .npz; missing or extra entries raise.

    The whole file is checked against ``shapes``; with ``only``, just those names are unpacked
    (a pipeline stage needs its own layers). Any unreadable file (empty, truncated, corrupt
    member) is a ValueError naming the path.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            packed = {key[: -len(MASK_SUFFIX)]: archive[key]
                      for key in archive.files if key.endswith(MASK_SUFFIX)}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"cannot read mask file {path!r}: {error}") from error
    missing = sorted(set(shapes) - set(packed))
    extra = sorted(set(packed) - set(shapes))
    if missing or extra:
        raise ValueError(
            f"mask file {path!r} does not match the model: missing {missing[:5]} "
            f"({len(missing)} in all), unexpected {extra[:5]} ({len(extra)} in all)"
        )
    for name, shape in shapes.items():
        needed = (int(np.prod(shape)) + 7) // 8
        if packed[name].size != needed:
            raise ValueError(f"mask file {path!r}: entry {name!r} has {packed[name].size} bytes but "
                             f"shape {tuple(shape)} needs {needed}: the mask file does not belong to this weight")
    names = shapes if only is None else list(only)
    return {name: unpack_mask(packed[name], shapes[name]) for name in names}
