"""Apply N:M masks to a Hugging Face safetensors checkpoint, and verify the N:M pattern.

Everything streams tensor by tensor (``safetensors.safe_open``): verifying holds one tensor at a
time, applying holds one shard. Mask files are either format of
:mod:`megatron_masklm.masking.files` ("npz-bits" or "compact"), keyed by HF parameter names;
reading them and applying them to the tensors is that module's.
"""
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import safetensors
import torch
from safetensors import safe_open

from ..cli_errors import refuse_overlap
from ..fileio import atomic_output_dir, check_output_dir, save_safetensors
from ..masking.candidates import parse_nm
from ..masking.files import (MASKED_WEIGHT_RE, PackedMasks, apply_masks_to_state_dict,
                             is_masked_weight, match_masks, read_packed_masks, resolve_pattern)
from ..masking.nm import group_counts

__all__ = ["MASKED_WEIGHT_RE", "NMReport", "ParamCheck", "apply_masks_to_hf_dir",
           "check_param", "is_masked_weight", "iter_safetensors", "safetensors_files",
           "tensor_shapes", "verify_nm_path"]
_SAFETENSORS_ERRORS = (OSError, getattr(safetensors, "SafetensorError", OSError))
Shape = Tuple[int, ...]


def safetensors_files(path: str) -> List[str]:
    """Every ``*.safetensors`` in a checkpoint directory (sorted), or the one file given."""
    if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise ValueError(f"{path!r} holds no *.safetensors files: is it a HF checkpoint?")
        return [os.path.join(path, f) for f in files]
    if os.path.isfile(path) and path.endswith(".safetensors"):
        return [path]
    raise ValueError(f"{path!r} is neither a checkpoint directory nor a .safetensors file")


def _tensor_handles(path: str) -> Iterator[Tuple[str, Any]]:
    """(name, open shard handle) for every tensor; unreadable shards and duplicates raise."""
    seen = set()
    for file in safetensors_files(path):
        try:
            with safe_open(file, framework="pt") as handle:
                for name in handle.keys():
                    if name in seen:
                        raise ValueError(f"tensor {name!r} is in more than one shard of {path!r}")
                    seen.add(name)
                    yield name, handle
        except _SAFETENSORS_ERRORS as error:
            raise ValueError(f"cannot read safetensors file {file!r}: {error}") from error


def iter_safetensors(path: str, *, select: Optional[Callable[[str], bool]] = None
                     ) -> Iterator[Tuple[str, torch.Tensor]]:
    """(name, tensor) one at a time over all shards; ``select`` skips loading other names."""
    for name, handle in _tensor_handles(path):
        if select is None or select(name):
            try:
                tensor = handle.get_tensor(name)
            except _SAFETENSORS_ERRORS as error:
                raise ValueError(f"cannot read tensor {name!r} of {path!r}: {error}") from error
            yield name, tensor


def tensor_shapes(path: str) -> Dict[str, Shape]:
    """Every tensor's shape, read from the safetensors headers only."""
    return {name: tuple(handle.get_slice(name).get_shape())
            for name, handle in _tensor_handles(path)}


# ----------------------------------------------------------------------------- verification
@dataclass
class ParamCheck:
    """N:M statistics of one weight or mask (zeros / masked-out entries count as pruned)."""

    name: str
    shape: Shape
    numel: int
    pruned: int
    groups: int
    over: int
    """Groups keeping more than N: a violation for weights and masks alike."""
    under: int
    """Groups keeping fewer than N: a violation only for mask files (which must be exact)."""

    @property
    def sparsity(self) -> float:
        """Fraction of entries that are zero / masked out."""
        return self.pruned / self.numel if self.numel else 0.0

    def line(self, *, exact: bool) -> str:
        """One human-readable report line."""
        text = (f"{self.name}  shape={self.shape}  sparsity={self.sparsity:.2%}  "
                f"violations={self.over}/{self.groups}")
        return text + (f"  underfull={self.under}" if exact else "")


@dataclass
class NMReport:
    """The result of :func:`verify_nm_path`: one check per parameter."""

    path: str
    kind: str
    """"checkpoint", "npz-bits" or "compact"."""
    n: int
    m: int
    params: List[ParamCheck] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Mask files must keep exactly N per group; weights at most N."""
        return self.kind != "checkpoint"

    @property
    def ok(self) -> bool:
        """True when every parameter follows the pattern."""
        return all(p.over == 0 and (p.under == 0 or not self.exact) for p in self.params)

    def summary(self) -> str:
        """The final one-line verdict."""
        numel = sum(p.numel for p in self.params)
        over = sum(p.over for p in self.params)
        groups = sum(p.groups for p in self.params)
        sparsity = sum(p.pruned for p in self.params) / max(numel, 1)
        text = (f"summary: {len(self.params)} parameters in {self.kind} {self.path!r} at "
                f"{self.n}:{self.m}: sparsity {sparsity:.2%}, "
                f"{over}/{groups} groups keep more than {self.n}")
        if self.exact:
            text += f", {sum(p.under for p in self.params)} keep fewer"
        return text + (" -> OK" if self.ok else f" -> FAIL (not {self.n}:{self.m})")


def check_param(name: str, tensor_RI: torch.Tensor, n: int, m: int, *,
                shape: Optional[Shape] = None) -> ParamCheck:
    """Count pruned entries and over/under-full groups of one [R, I] weight or mask."""
    shape = tuple(tensor_RI.shape) if shape is None else shape
    if tensor_RI.dim() != 2 or tensor_RI.shape[1] % m:
        raise ValueError(f"{name}: shape {shape} is not 2-D [rows, in] with in divisible by "
                         f"M={m}, so it cannot be {n}:{m}")
    counts = group_counts(tensor_RI, m)
    return ParamCheck(name, shape, tensor_RI.numel(), tensor_RI.numel() - int(counts.sum()),
                      counts.numel(), int((counts > n).sum()), int((counts < n).sum()))


def verify_nm_path(path: str, *, pattern: Optional[str] = None,
                   shapes_from: Optional[str] = None, allow_missing: bool = False) -> NMReport:
    """Check a HF checkpoint (dir or .safetensors) or a mask file (either format) for N:M; a
    mask file checked against a checkpoint (``shapes_from``) must also cover every masked weight
    of it, unless ``allow_missing``. ``pattern``: "N:M" (tools/verify_nm.py's --pattern),
    default a compact file's own, else 2:4."""
    nm = parse_nm(pattern) if pattern is not None else None
    if not os.path.exists(path):
        raise ValueError(f"{path!r} does not exist")
    if os.path.isdir(path) or path.endswith(".safetensors"):
        return _verify_weights(path, resolve_pattern(nm, None))
    return _verify_mask_file(path, nm=nm, shapes_from=shapes_from, allow_missing=allow_missing)


def _verify_weights(path: str, nm: Tuple[int, int]) -> NMReport:
    report = NMReport(path, "checkpoint", *nm)
    for name, weight in iter_safetensors(path, select=is_masked_weight):
        report.params.append(check_param(name, weight, *nm))
    if not report.params:
        raise ValueError(f"{path!r} has no masked LLaMA linear weights "
                         f"(model.layers.N.self_attn.*_proj / mlp.*_proj .weight)")
    return report


def _verify_mask_file(path: str, *, nm: Optional[Tuple[int, int]], shapes_from: Optional[str],
                      allow_missing: bool = False) -> NMReport:
    masks = read_packed_masks(path)
    if not masks.packed:
        raise ValueError(f"mask file {path!r} holds no masks")
    nm = resolve_pattern(nm, masks.nm)
    report = NMReport(path, masks.format, *nm)
    shapes = tensor_shapes(shapes_from) if shapes_from else dict(masks.shapes)
    missing = sorted(n for n in shapes if shapes_from and is_masked_weight(n)
                     and n not in masks.packed)
    if missing and not allow_missing:
        raise ValueError(f"mask file {path!r} has no mask for {missing[:5]} ({len(missing)} "
                         f"masked weights of {shapes_from!r} in all): a partial mask file would "
                         "leave them dense; pass --allow-missing if that is intended")
    for name in sorted(masks.packed):
        if name in shapes:
            report.params.append(check_param(name, masks.unpack(name, shapes[name]), *nm))
        elif shapes_from:
            raise ValueError(f"mask {name!r} of {path!r} is not a tensor of {shapes_from!r}")
        else:  # npz-bits stores no shape: check the flat bit run (exact when numel % 8 == 0)
            flat = masks.unpack(name, (masks.packed[name].size * 8,))
            check = check_param(name, flat.reshape(1, -1), *nm, shape=tuple(flat.shape))
            report.params.append(check)
    return report


# ----------------------------------------------------------------------------- applying
def apply_masks_to_hf_dir(hf_dir: str, masks_path: str, output: str, *,
                          nm: Optional[Tuple[int, int]] = None, allow_missing: bool = False,
                          overwrite: bool = False) -> List[str]:
    """Write ``output``: a copy of ``hf_dir`` whose masked weights are weight * mask, each mask
    exactly ``nm`` (default: a compact file's own N:M, else 2:4).

    Returns the masked parameter names. Nothing is left at ``output`` (or beside it) on error.
    """
    _check_output(hf_dir, output, overwrite=overwrite)
    shapes = tensor_shapes(hf_dir)
    masks = read_packed_masks(masks_path)
    nm = resolve_pattern(nm, masks.nm)
    match_masks(masks, shapes, allow_missing=allow_missing, allow_missing_flag="--allow-missing")
    with atomic_output_dir(output, overwrite=True) as tmp:  # _check_output refused the rest
        _copy_other_files(hf_dir, tmp)
        for file in safetensors_files(hf_dir):
            _write_masked_shard(file, os.path.join(tmp, os.path.basename(file)), masks, nm)
    return sorted(masks.packed)


def _check_output(hf_dir: str, output: str, *, overwrite: bool) -> None:
    if not os.path.isdir(hf_dir):
        raise ValueError(f"--hf-dir {hf_dir!r} is not a directory")
    refuse_overlap(inputs={"--hf-dir": hf_dir}, outputs={"--output": output})
    if os.path.lexists(output) and not overwrite:
        raise ValueError(f"output {output!r} already exists: pass --overwrite to replace it")
    if not os.path.isdir(os.path.dirname(os.path.realpath(output))):
        raise ValueError(f"the parent directory of output {output!r} does not exist")
    check_output_dir(output, overwrite=True)  # a file in its place, a read-only directory


def _copy_other_files(hf_dir: str, target: str) -> None:
    for entry in sorted(os.listdir(hf_dir)):
        source = os.path.join(hf_dir, entry)
        if entry.endswith(".safetensors") and os.path.isfile(source):
            continue  # rewritten shard by shard
        if os.path.isdir(source):
            shutil.copytree(source, os.path.join(target, entry))
        else:
            shutil.copy2(source, os.path.join(target, entry))


def _write_masked_shard(source: str, target: str, masks: PackedMasks, nm: Tuple[int, int]) -> None:
    with safe_open(source, framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_safetensors(target, apply_masks_to_state_dict(tensors, masks, nm), metadata=metadata)
