"""The compact mask-index format ("masklm-nm-index/1").

References: candidate indices by brute force over itertools.combinations, packed bytes from the
integer sum_k v_k * 2**(k*b) written little-endian (the documented bit order), bytes by hand.
"""
import os
from itertools import combinations
from math import comb

import numpy as np
import pytest
import torch

from megatron_masklm.masking import (
    COMPACT_FORMAT,
    detect_mask_format,
    index_bits,
    indices_to_mask,
    load_masks_any,
    load_masks_compact,
    mask_to_indices,
    pack_indices,
    save_masks_compact,
    save_masks_npz,
    unpack_indices,
)

PATTERNS = [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8)]
Q, DOWN = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"


def random_nm(rows, cols, n, m, seed):
    """An exactly N:M keep-mask: the N smallest of M random numbers per group are kept."""
    rng = np.random.default_rng(seed)
    order = rng.random((rows, cols // m, m)).argsort(-1)
    keep = np.zeros((rows, cols // m, m), dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return torch.from_numpy(keep.reshape(rows, cols))


def brute_indices(mask, n, m):
    table = list(combinations(range(m), n))
    groups = mask.numpy().reshape(mask.shape[0], -1, m)
    return torch.tensor([[table.index(tuple(np.flatnonzero(g))) for g in row] for row in groups])


def reference_pack(values, bits):
    total = sum(int(v) << (k * bits) for k, v in enumerate(values))
    return np.frombuffer(total.to_bytes((len(values) * bits + 7) // 8, "little"), dtype=np.uint8)


def write_npz(path, entries):
    np.savez_compressed(path, **entries)
    return str(path)


def compact_entries(n=2, m=4, shape=(4, 8), idx=None, fmt=COMPACT_FORMAT):
    """Raw entries of a valid (or deliberately broken) compact file with one parameter Q."""
    if idx is None:
        idx = reference_pack(brute_indices(random_nm(*shape, n, m, 0), n, m).reshape(-1), 3)
    return {"__format__": np.array(fmt), "__n__": np.array(n), "__m__": np.array(m),
            Q + ".idx": np.asarray(idx, dtype=np.uint8), Q + ".shape": np.array(shape)}


def test_bits_per_group():
    assert [index_bits(n, m) for n, m in [(1, 2), (1, 4), (2, 4), (4, 8), (3, 8)]] == [1, 2, 3, 7, 6]


def test_indices_hand_case_2_4():
    mask = torch.tensor([[1, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 1],
                         [0, 1, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1]], dtype=torch.bool)
    assert mask_to_indices(mask, 2, 4).tolist() == [[0, 5, 2], [3, 1, 4]]


@pytest.mark.parametrize("n,m", PATTERNS)
def test_indices_match_brute_force(n, m):
    mask = random_nm(5, 4 * m, n, m, seed=n * 10 + m)
    expected = brute_indices(mask, n, m)
    indices = mask_to_indices(mask, n, m)
    assert indices.dtype == torch.long and torch.equal(indices, expected)
    assert torch.equal(indices_to_mask(expected, n, m), mask)
    every = torch.arange(comb(m, n)).reshape(1, -1)  # each candidate once, in order
    rebuilt = indices_to_mask(every, n, m).reshape(-1, m)
    assert [tuple(np.flatnonzero(r)) for r in rebuilt.numpy()] == list(combinations(range(m), n))


def test_mask_to_indices_accepts_float_masks():
    mask = random_nm(3, 8, 2, 4, seed=1)
    assert torch.equal(mask_to_indices(mask.to(torch.bfloat16), 2, 4), brute_indices(mask, 2, 4))


def test_mask_to_indices_errors():
    mask = random_nm(3, 12, 2, 4, seed=2)
    mask[1, 8:12] = torch.tensor([True, True, True, False])
    with pytest.raises(ValueError, match=r"row 1, group 2 .*keeps 3 of 4"):
        mask_to_indices(mask, 2, 4)
    with pytest.raises(ValueError, match="divisible by M=4"):
        mask_to_indices(torch.ones(2, 6, dtype=torch.bool), 2, 4)
    with pytest.raises(ValueError, match="2-D"):
        mask_to_indices(torch.ones(8, dtype=torch.bool), 2, 4)


def test_indices_to_mask_errors():
    with pytest.raises(ValueError, match=r"index 6 at row 0, group 1 .*6 candidates"):
        indices_to_mask(torch.tensor([[0, 6]]), 2, 4)
    with pytest.raises(ValueError, match="out of range"):
        indices_to_mask(torch.tensor([[-1]]), 2, 4)


def test_pack_hand_cases():
    # 5=101, 1=001, 6=110 LSB first: stream 1 0 1 | 1 0 0 | 0 1 1 -> byte0 bits0..7, byte1 bit0
    assert pack_indices([5, 1, 6], 3).tolist() == [0b10001101, 0b00000001]
    assert pack_indices([1, 2, 3, 0], 2).tolist() == [0b00111001]
    assert pack_indices([70, 1], 7).tolist() == [0b11000110, 0b00000000]
    assert pack_indices([1, 0, 1, 1, 0, 0, 0, 0, 1], 1).tolist() == [0b00001101, 0b00000001]
    assert unpack_indices(np.array([0b10001101, 1], dtype=np.uint8), 3, 3).tolist() == [5, 1, 6]


@pytest.mark.parametrize("bits", range(1, 8))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 1001])
def test_pack_round_trip(bits, count):
    values = np.random.default_rng(bits * 1000 + count).integers(0, 1 << bits, count)
    packed = pack_indices(values, bits)
    assert packed.dtype == np.uint8 and packed.size == (count * bits + 7) // 8
    np.testing.assert_array_equal(packed, reference_pack(values, bits))
    unpacked = unpack_indices(packed, count, bits)
    assert unpacked.dtype == np.int64
    np.testing.assert_array_equal(unpacked, values)


def test_pack_errors():
    with pytest.raises(ValueError, match=r"\[0, 8\) to fit in 3 bits"):
        pack_indices([1, 8], 3)
    with pytest.raises(ValueError, match="1..16"):
        pack_indices([0], 0)
    with pytest.raises(ValueError, match="2 packed bytes, but 3 indices of 2 bits need 1"):
        unpack_indices(np.zeros(2, dtype=np.uint8), 3, 2)


def test_size_4096_square_2_4():
    indices = torch.randint(0, 6, (4096, 1024), generator=torch.Generator().manual_seed(0))
    mask = indices_to_mask(indices, 2, 4)
    packed = pack_indices(mask_to_indices(mask, 2, 4).numpy(), 3)
    assert packed.size == 4096 * 1024 * 3 // 8 == 1_572_864
    np.testing.assert_array_equal(unpack_indices(packed, 4096 * 1024, 3), indices.reshape(-1).numpy())


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_save_load_round_trip(tmp_path, n, m):
    masks = {Q: random_nm(6, 16, n, m, seed=1), DOWN: random_nm(3, 24, n, m, seed=2)}
    path = str(tmp_path / "masks.npz")
    save_masks_compact(path, masks, n=n, m=m)
    with np.load(path, allow_pickle=False) as raw:
        assert str(raw["__format__"]) == COMPACT_FORMAT
        assert (int(raw["__n__"]), int(raw["__m__"])) == (n, m)
        assert raw[Q + ".shape"].dtype == np.int64 and raw[Q + ".shape"].tolist() == [6, 16]
        expected = reference_pack(brute_indices(masks[DOWN], n, m).reshape(-1), index_bits(n, m))
        np.testing.assert_array_equal(raw[DOWN + ".idx"], expected)
    loaded, nm = load_masks_compact(path)
    assert nm == (n, m) and set(loaded) == set(masks)
    shapes = {name: tuple(mask.shape) for name, mask in masks.items()}
    loaded_with_shapes, _ = load_masks_compact(path, shapes)
    for name, mask in masks.items():
        assert loaded[name].dtype == torch.bool and torch.equal(loaded[name], mask)
        assert torch.equal(loaded_with_shapes[name], mask)
    assert os.listdir(tmp_path) == ["masks.npz"]


def test_save_rejects_non_nm_and_leaves_no_file(tmp_path):
    bad = random_nm(2, 8, 2, 4, seed=3)
    bad[0, :4] = True
    with pytest.raises(ValueError, match=rf"mask '{Q}': .*row 0, group 0"):
        save_masks_compact(str(tmp_path / "m.npz"), {Q: bad}, n=2, m=4)
    assert os.listdir(tmp_path) == []


def test_save_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "m.npz")
    save_masks_compact(path, {Q: random_nm(2, 8, 2, 4, seed=4)}, n=2, m=4)
    before = open(path, "rb").read()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError, match="disk full"):
        save_masks_compact(path, {Q: random_nm(2, 8, 2, 4, seed=5)}, n=2, m=4)
    assert os.listdir(tmp_path) == ["m.npz"] and open(path, "rb").read() == before


@pytest.mark.parametrize("entries,match", [
    (dict(fmt="masklm-nm-index/2"), "unsupported compact mask format version 'masklm-nm-index/2'"),
    (dict(fmt="something-else"), "not a compact mask file"),
    (dict(idx=[0, 0]), f"entry '{Q}' has 2 bytes .* needs 3"),
    (dict(idx=[0xFF] * 3), f"entry '{Q}': candidate index 7 at row 0, group 0 is out of range"),
    (dict(shape=(2, 6), idx=[0] * 2), "divisible by M=4"),
    (dict(n=4, m=4), "entries '__n__'/'__m__' are missing or invalid"),
])
def test_load_rejects_broken_files(tmp_path, entries, match):
    path = write_npz(tmp_path / "bad.npz", compact_entries(**entries))
    with pytest.raises(ValueError, match=match) as info:
        load_masks_compact(path)
    assert path in str(info.value)


def test_load_rejects_unpaired_entries(tmp_path):
    entries = compact_entries()
    del entries[Q + ".shape"]
    with pytest.raises(ValueError, match=rf"'{Q}' needs exactly '{Q}.idx' and '{Q}.shape'"):
        load_masks_compact(write_npz(tmp_path / "bad.npz", entries))


def test_load_checks_names_and_shapes(tmp_path):
    path = write_npz(tmp_path / "m.npz", compact_entries())
    with pytest.raises(ValueError, match=rf"missing \['{DOWN}'\].*unexpected \[\]"):
        load_masks_compact(path, {Q: (4, 8), DOWN: (2, 8)})
    with pytest.raises(ValueError, match=rf"missing \[\].*unexpected \['{Q}'\]"):
        load_masks_compact(path, {})
    with pytest.raises(ValueError, match=rf"'{Q}' has shape \(4, 8\) but the weight has shape \(8, 4\)"):
        load_masks_compact(path, {Q: (8, 4)})


def test_load_rejects_other_files(tmp_path):
    npz_bits = str(tmp_path / "bits.npz")
    save_masks_npz(npz_bits, {Q: random_nm(2, 8, 2, 4, seed=6)})
    with pytest.raises(ValueError, match="not a compact mask file .*npz-bits"):
        load_masks_compact(npz_bits)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read mask file"):
        load_masks_compact(str(garbage))
    other = write_npz(tmp_path / "other.npz", {"weights": np.zeros(3)})
    with pytest.raises(ValueError, match="is not a mask file"):
        detect_mask_format(other)


def test_detect_and_load_any(tmp_path):
    masks = {Q: random_nm(4, 8, 2, 4, seed=7), DOWN: random_nm(2, 16, 2, 4, seed=8)}
    shapes = {name: tuple(mask.shape) for name, mask in masks.items()}
    bits, compact = str(tmp_path / "bits.npz"), str(tmp_path / "compact.npz")
    save_masks_npz(bits, masks)
    save_masks_compact(compact, masks, n=2, m=4)
    assert detect_mask_format(bits) == "npz-bits" and detect_mask_format(compact) == "compact"
    for path in (bits, compact):
        loaded = load_masks_any(path, shapes)
        assert all(torch.equal(loaded[name], masks[name]) for name in masks)
    assert all(torch.equal(load_masks_any(compact)[name], masks[name]) for name in masks)
    with pytest.raises(ValueError, match="npz-bits mask file, which stores no shapes"):
        load_masks_any(bits)
    with pytest.raises(ValueError, match="missing"):
        load_masks_any(bits, {Q: shapes[Q]} | {"extra.weight": (2, 8)})
