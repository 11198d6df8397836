"""Bit packing and the released-mask .npz format (SPEC section 5).

References: bytes assembled by hand from the flattened bits (big-endian within a byte, zero
padded), np.packbits, and the raw .npz read back with numpy / zipfile.
"""
import os
import zipfile

import numpy as np
import pytest
import torch

from megatron_masklm.masking import load_masks_npz, pack_mask, save_masks_npz, unpack_mask

SHAPES = [(3, 5), (7, 8), (1, 1), (13,), (2, 3, 7), (64, 64)]
NAMES = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
         "model.layers.1.mlp.gate_proj.weight"]


def random_mask(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5


def hand_packed(mask):
    bits = [int(b) for b in np.asarray(mask).reshape(-1)]
    bits += [0] * (-len(bits) % 8)
    return np.array([sum(bit << (7 - i) for i, bit in enumerate(bits[k:k + 8]))
                     for k in range(0, len(bits), 8)], dtype=np.uint8)


def test_pack_hand_case():
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    assert pack_mask(mask).tolist() == [0b10110000, 0b10000000]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_matches_reference_and_round_trips(shape):
    mask = random_mask(shape, seed=sum(shape))
    packed = pack_mask(mask)
    assert packed.dtype == np.uint8
    np.testing.assert_array_equal(packed, hand_packed(mask.numpy()))
    np.testing.assert_array_equal(packed, np.packbits(mask.numpy().reshape(-1)))
    unpacked = unpack_mask(packed, shape)
    assert unpacked.dtype == torch.bool and tuple(unpacked.shape) == shape
    assert torch.equal(unpacked, mask)


def test_pack_accepts_float_masks_and_numpy():
    mask = random_mask((4, 6), seed=1)
    expected = hand_packed(mask.numpy())
    np.testing.assert_array_equal(pack_mask(mask.float()), expected)
    np.testing.assert_array_equal(pack_mask(mask.numpy()), expected)


def test_pack_accepts_bf16_mask():
    mask = random_mask((4, 6), seed=1)
    np.testing.assert_array_equal(pack_mask(mask.to(torch.bfloat16)), hand_packed(mask.numpy()))


# Only the byte count is checkable: a shape of 9..16 elements, e.g. (2, 5), would be accepted.
@pytest.mark.parametrize("wrong_shape", [(3, 6), (1,), (2, 4), (100,)], ids=str)
def test_unpack_with_wrong_shape_raises(wrong_shape):
    packed = pack_mask(random_mask((3, 5), seed=2))  # 15 bits -> 2 bytes
    with pytest.raises(ValueError, match="does not belong to this weight"):
        unpack_mask(packed, wrong_shape)


def make_masks():
    return {name: random_mask((8, 12 + 4 * i), seed=10 + i) for i, name in enumerate(NAMES)}


def shapes_of(masks):
    return {name: tuple(mask.shape) for name, mask in masks.items()}


def test_save_load_round_trip_and_file_layout(tmp_path):
    masks = make_masks()
    path = tmp_path / "masks.npz"
    save_masks_npz(str(path), masks)

    assert os.listdir(tmp_path) == ["masks.npz"]  # no temp file left behind
    with zipfile.ZipFile(path) as archive:  # np.savez_compressed: deflated .npy members
        assert sorted(archive.namelist()) == sorted(n + ".mask.npy" for n in NAMES)
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
    with np.load(path, allow_pickle=False) as raw:
        assert sorted(raw.files) == sorted(n + ".mask" for n in NAMES)
        for name, mask in masks.items():
            np.testing.assert_array_equal(raw[name + ".mask"], hand_packed(mask.numpy()))

    loaded = load_masks_npz(str(path), shapes_of(masks))
    assert set(loaded) == set(masks)
    for name, mask in masks.items():
        assert loaded[name].dtype == torch.bool
        assert torch.equal(loaded[name], mask)


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "masks.npz"
    masks = make_masks()
    save_masks_npz(str(path), {NAMES[0]: ~masks[NAMES[0]]})
    save_masks_npz(str(path), masks)
    assert os.listdir(tmp_path) == ["masks.npz"]
    assert torch.equal(load_masks_npz(str(path), shapes_of(masks))[NAMES[0]], masks[NAMES[0]])


def test_reads_a_file_written_by_plain_numpy(tmp_path):
    # A released mask written the reference way, not by save_masks_npz.
    mask = random_mask((6, 16), seed=3)
    path = tmp_path / "released.npz"
    np.savez_compressed(path, **{NAMES[0] + ".mask": np.packbits(mask.numpy().reshape(-1))})
    assert torch.equal(load_masks_npz(str(path), {NAMES[0]: (6, 16)})[NAMES[0]], mask)


def test_missing_name_raises_naming_it(tmp_path):
    masks = make_masks()
    path = tmp_path / "masks.npz"
    save_masks_npz(str(path), {n: m for n, m in masks.items() if n != NAMES[1]})
    with pytest.raises(ValueError, match=NAMES[1].replace(".", r"\.")):
        load_masks_npz(str(path), shapes_of(masks))


def test_extra_name_raises_naming_it(tmp_path):
    masks = make_masks()
    path = tmp_path / "masks.npz"
    save_masks_npz(str(path), masks)
    wanted = {n: s for n, s in shapes_of(masks).items() if n != NAMES[2]}
    with pytest.raises(ValueError, match=NAMES[2].replace(".", r"\.")):
        load_masks_npz(str(path), wanted)


def test_wrong_shape_on_load_raises(tmp_path):
    masks = make_masks()
    path = tmp_path / "masks.npz"
    save_masks_npz(str(path), masks)
    shapes = shapes_of(masks)
    shapes[NAMES[0]] = (16, 12)
    with pytest.raises(ValueError, match="does not belong"):
        load_masks_npz(str(path), shapes)


@pytest.mark.parametrize("keep", [0.5, 0.9], ids=["half", "most"])
def test_truncated_file_raises_value_error(tmp_path, keep):
    masks = make_masks()
    path = tmp_path / "masks.npz"
    save_masks_npz(str(path), masks)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="masks.npz"):
        load_masks_npz(str(path), shapes_of(masks))


def test_missing_file_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="nope.npz"):
        load_masks_npz(str(tmp_path / "nope.npz"), {NAMES[0]: (2, 4)})


def test_empty_file_raises_value_error(tmp_path):
    path = tmp_path / "masks.npz"
    path.write_bytes(b"")
    with pytest.raises(ValueError):
        load_masks_npz(str(path), {NAMES[0]: (2, 4)})


def test_corrupt_member_raises_value_error(tmp_path):
    masks = make_masks()
    path = tmp_path / "masks.npz"
    save_masks_npz(str(path), masks)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(NAMES[0] + ".mask.npy")
    data = bytearray(path.read_bytes())
    # Local header: 30 bytes, then the name and extra field (lengths at bytes 26 and 28), then
    # the deflated data. Flip one byte in the middle of it; the central directory stays intact.
    offset = info.header_offset
    start = offset + 30 + int.from_bytes(data[offset + 26:offset + 28], "little") + int.from_bytes(
        data[offset + 28:offset + 30], "little")
    data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        load_masks_npz(str(path), shapes_of(masks))


def test_saved_file_follows_the_umask_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "masks.npz"
        save_masks_npz(str(path), make_masks())
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_only_unpacks_the_named_masks_but_checks_the_whole_file(tmp_path):
    masks = make_masks()
    path = tmp_path / "masks.npz"
    save_masks_npz(str(path), masks)
    shapes = shapes_of(masks)
    got = load_masks_npz(str(path), shapes, only=[NAMES[1]])
    assert list(got) == [NAMES[1]] and torch.equal(got[NAMES[1]], masks[NAMES[1]].bool())
    shapes[NAMES[0]] = (16, 12)  # a stage that does not load NAMES[0] still sees it is wrong
    with pytest.raises(ValueError, match="does not belong"):
        load_masks_npz(str(path), shapes, only=[NAMES[1]])
