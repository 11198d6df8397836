"""Compact N:M mask files: one candidate index per group, bit-packed ("masklm-nm-index/1").

Shape legend: R rows (outputs), I inputs, G = I/M groups per row, C = C(M, N) candidates.

Format (the spec other tools read). One ``.npz`` (np.savez_compressed, no pickles) holding:

- ``__format__``: the unicode string ``"masklm-nm-index/1"`` (a 0-d numpy ``<U`` array);
- ``__n__``, ``__m__``: the pattern N and M as 0-d int64 arrays (same for every parameter);
- per masked parameter (HF name, e.g. ``model.layers.0.self_attn.q_proj.weight``):
  ``<name>.shape``: int64 ``[R, I]`` (I divisible by M), and ``<name>.idx``: uint8 packed indices.

Index of a group: the group is the M consecutive keep-bits ``mask[r, g*M:(g+1)*M]``; its index
is the position of that keep-vector among the C candidates in lexicographic order of the kept
positions (:func:`nm_candidates`; 2:4 -> (0,1)=0 (0,2)=1 (0,3)=2 (1,2)=3 (1,3)=4 (2,3)=5).

Bit order: b = ceil(log2 C) bits per group (1:4 -> 2, 2:4 -> 3, 4:8 -> 7). Groups are taken in
row-major order, k = r*G + g. Index v_k fills stream bits k*b .. k*b+b-1, least significant bit
first; stream bit s is bit (s mod 8) of byte s // 8, bit 0 being the byte's least significant
bit; the last byte is zero padded. Equivalently, the bytes are the little-endian encoding of the
integer sum_k v_k * 2**(k*b), i.e. ``np.packbits(bits, bitorder="little")`` of the LSB-first
bits. ``.idx`` thus has exactly ceil(R*G*b / 8) bytes; every index must be < C.

A 2:4 mask costs 3 bits per 4 weights (0.75 bits/weight, vs log2(6)/4 = 0.65 in theory and
1 bit/weight for the released "npz-bits" format of :mod:`.npz`).
"""
from math import ceil, log2
from typing import Dict, Tuple

import numpy as np
import torch

from ...fileio import atomic_savez
from ..candidates import nm_candidates, num_candidates, validate_nm

COMPACT_FORMAT = "masklm-nm-index/1"
_FORMAT_PREFIX = "masklm-nm-index/"
META_KEYS = ("__format__", "__n__", "__m__")
Shape = Tuple[int, ...]


def index_bits(n: int, m: int) -> int:
    """b = ceil(log2 C(M, N)), the bits stored per group (at least 1)."""
    return max(1, ceil(log2(num_candidates(n, m))))


def _code_table(n: int, m: int) -> torch.Tensor:
    """Candidate index for each of the 2**M keep-bit codes (bit j = position j), -1 if not N:M."""
    table = torch.full((1 << m,), -1, dtype=torch.long)
    codes = (nm_candidates(n, m, dtype=torch.long) << torch.arange(m)).sum(-1)
    table[codes] = torch.arange(codes.numel())
    return table


def mask_to_indices(mask_RI: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Candidate index per group, LongTensor [R, I/M]; ValueError unless exactly N:M."""
    n, m = validate_nm(n, m)
    if mask_RI.dim() != 2 or mask_RI.shape[1] % m != 0:
        raise ValueError(f"expected a 2-D [rows, in] mask with in divisible by M={m}, "
                         f"got shape {tuple(mask_RI.shape)}")
    bits_RGM = (mask_RI.detach().cpu() != 0).reshape(mask_RI.shape[0], mask_RI.shape[1] // m, m)
    codes_RG = torch.zeros(bits_RGM.shape[:2], dtype=torch.uint8)
    for j in range(m):  # a loop over M, not over groups: keeps memory at ~1 byte per group
        codes_RG |= bits_RGM[..., j].to(torch.uint8) << j
    indices_RG = _code_table(n, m)[codes_RG.long()]
    bad = (indices_RG < 0).nonzero()
    if bad.numel():
        row, group = (int(v) for v in bad[0])
        kept = int(bits_RGM[row, group].sum())
        raise ValueError(f"mask is not exactly {n}:{m}: row {row}, group {group} (inputs "
                         f"{group * m}..{group * m + m - 1}) keeps {kept} of {m} "
                         f"({len(bad)} bad groups in all)")
    return indices_RG


def indices_to_mask(indices_RG: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool keep-mask [R, G*M] from candidate indices [R, G]; ValueError on an index >= C."""
    candidates_CM = nm_candidates(n, m, dtype=torch.bool)
    indices_RG = torch.as_tensor(indices_RG).long()
    if indices_RG.dim() != 2:
        raise ValueError(f"expected 2-D [rows, groups] indices, got {tuple(indices_RG.shape)}")
    bad = ((indices_RG < 0) | (indices_RG >= len(candidates_CM))).nonzero()
    if bad.numel():
        row, group = (int(v) for v in bad[0])
        raise ValueError(f"candidate index {int(indices_RG[row, group])} at row {row}, group "
                         f"{group} is out of range: {n}:{m} has {len(candidates_CM)} candidates")
    return candidates_CM[indices_RG].reshape(indices_RG.shape[0], -1)


def pack_indices(indices, bits: int) -> np.ndarray:
    """Fixed-width packing of non-negative ints < 2**bits, LSB first (module docstring)."""
    _check_bits(bits)
    values = np.asarray(indices).reshape(-1)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"indices must lie in [0, {1 << bits}) to fit in {bits} bits, "
                         f"got range [{values.min()}, {values.max()}]")
    values = values.astype(np.uint16)
    stream = (values[:, None] >> np.arange(bits, dtype=np.uint16)) & 1
    return np.packbits(stream.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_indices(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: ``count`` int64 values; ValueError on a wrong byte count."""
    _check_bits(bits)
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    needed = packed_size(count, bits)
    if packed.size != needed:
        raise ValueError(f"{packed.size} packed bytes, but {count} indices of {bits} bits "
                         f"need {needed}")
    stream = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    values = np.zeros(count, dtype=np.int64)
    for j in range(bits):  # a loop over bit positions, vectorised over all groups
        values |= stream[:, j].astype(np.int64) << j
    return values


def packed_size(count: int, bits: int) -> int:
    """Bytes used by ``count`` packed indices of ``bits`` bits."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise ValueError(f"bits per index must be an int in 1..16, got {bits!r}")


def save_masks_compact(path: str, masks: Dict[str, torch.Tensor], *, n: int, m: int) -> None:
    """Write ``{param name: [R, I] keep-mask}`` as a compact index file, atomically."""
    n, m = validate_nm(n, m)
    bits = index_bits(n, m)
    entries = {"__format__": np.array(COMPACT_FORMAT), "__n__": np.array(n, dtype=np.int64),
               "__m__": np.array(m, dtype=np.int64)}
    for name, mask in masks.items():
        try:
            indices = mask_to_indices(torch.as_tensor(mask), n, m)
        except ValueError as error:
            raise ValueError(f"mask {name!r}: {error}") from None
        entries[name + ".idx"] = pack_indices(indices.numpy(), bits)
        entries[name + ".shape"] = np.array(tuple(mask.shape), dtype=np.int64)
    atomic_savez(path, entries)


def parse_compact(path: str, arrays: Dict[str, np.ndarray]
                  ) -> Tuple[Dict[str, np.ndarray], Dict[str, Shape], Tuple[int, int]]:
    """The packed indices, shapes and (n, m) of a compact file's arrays (it has ``__format__``),
    each checked against this spec; a ValueError names the file and the entry otherwise."""
    fmt = arrays["__format__"]
    fmt = str(fmt.item()) if fmt.dtype.kind == "U" and fmt.size == 1 else repr(fmt)
    if not fmt.startswith(_FORMAT_PREFIX):
        raise ValueError(f"{path!r}: entry '__format__' is {fmt!r}, not a compact mask file")
    if fmt != COMPACT_FORMAT:
        raise ValueError(f"{path!r}: unsupported compact mask format version {fmt!r}; this "
                         f"reader understands {COMPACT_FORMAT!r} (upgrade megatron_masklm)")
    try:
        n, m = validate_nm(int(arrays["__n__"]), int(arrays["__m__"]))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path!r}: entries '__n__'/'__m__' are missing or invalid: "
                         f"{error}") from None
    names = {key.rsplit(".", 1)[0] for key in arrays if key not in META_KEYS}
    packed, shapes = {}, {}
    for name in sorted(names):
        idx, shape = arrays.get(name + ".idx"), arrays.get(name + ".shape")
        if idx is None or shape is None or len(arrays) - len(META_KEYS) != 2 * len(names):
            raise ValueError(f"{path!r}: entry {name!r} needs exactly '{name}.idx' and "
                             f"'{name}.shape' (found keys {sorted(arrays)[:6]})")
        shape = tuple(int(s) for s in np.asarray(shape).reshape(-1))
        if len(shape) != 2 or min(shape) < 0 or shape[1] % m:
            raise ValueError(f"{path!r}: entry {name!r} has shape {shape}; compact masks "
                             f"are 2-D [rows, in] with in divisible by M={m}")
        needed = packed_size(shape[0] * (shape[1] // m), index_bits(n, m))
        if idx.dtype != np.uint8 or idx.size != needed:
            raise ValueError(f"{path!r}: entry {name!r} has {idx.size} bytes ({idx.dtype}) but "
                             f"shape {shape} at {n}:{m} needs {needed} uint8 bytes")
        packed[name], shapes[name] = idx, shape
    return packed, shapes, (n, m)


def unpack_compact(packed: np.ndarray, shape: Shape, n: int, m: int) -> torch.Tensor:
    """Bool keep-mask of one entry: its packed indices unpacked to ``shape`` ([R, I])."""
    rows, groups = shape[0], shape[1] // m
    indices = unpack_indices(packed, rows * groups, index_bits(n, m))
    return indices_to_mask(torch.from_numpy(indices).reshape(rows, groups), n, m)
