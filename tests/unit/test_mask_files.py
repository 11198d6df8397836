"""masking.files, the one home of mask files: writing either format, --pattern resolution, and
applying a HF-named file to a state dict and to a model (references: weights times hand-made
masks)."""
from types import SimpleNamespace

import pytest
import torch

from megatron_masklm.masking.files import (apply_masks_to_hf_model, apply_masks_to_state_dict,
                                           load_masks_any, read_packed_masks, resolve_pattern,
                                           save_masks)

Q, DOWN = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"


def nm_mask(shape, n=2, m=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.rand(shape, generator=gen).reshape(shape[0], -1, m)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep.scatter_(-1, scores.topk(n, dim=-1).indices, True)
    return keep.reshape(shape)


class TinyHF(torch.nn.Module):
    """Parameters under HF names, and the config flag a tied head sets."""

    def __init__(self, tied=False):
        super().__init__()
        self.config = SimpleNamespace(tie_word_embeddings=tied)
        torch.manual_seed(0)
        self.params = torch.nn.ParameterDict({
            name.replace(".", "/"): torch.nn.Parameter(torch.randn(shape))
            for name, shape in ((Q, (8, 16)), (DOWN, (4, 8)), ("model.norm.weight", (16,)))})

    def named_parameters(self, *args, **kwargs):
        for name, param in self.params.items():
            yield name.replace("/", "."), param


def test_save_masks_writes_either_format(tmp_path):
    masks = {Q: nm_mask((8, 16)), DOWN: nm_mask((4, 8), seed=1)}
    save_masks(str(tmp_path / "bits.npz"), masks)
    save_masks(str(tmp_path / "index.npz"), masks, fmt="compact", nm=(2, 4))
    shapes = {name: tuple(mask.shape) for name, mask in masks.items()}
    for path, fmt in (("bits.npz", "npz-bits"), ("index.npz", "compact")):
        assert read_packed_masks(str(tmp_path / path)).format == fmt
        loaded = load_masks_any(str(tmp_path / path), shapes)
        assert all(torch.equal(loaded[name], masks[name]) for name in masks)
    with pytest.raises(ValueError, match="not one of"):
        save_masks(str(tmp_path / "x.npz"), masks, fmt="bits")
    with pytest.raises(ValueError, match="stores N:M: pass nm"):
        save_masks(str(tmp_path / "x.npz"), masks, fmt="compact")


def test_resolve_pattern():
    assert resolve_pattern(None, None) == (2, 4)
    assert resolve_pattern(None, (1, 4)) == (1, 4)
    assert resolve_pattern((4, 8), None) == (4, 8)
    assert resolve_pattern((2, 4), (2, 4)) == (2, 4)
    with pytest.raises(ValueError, match="--pattern 2:4 disagrees with the mask file, which is "
                                         "1:4"):
        resolve_pattern((2, 4), (1, 4))


def test_apply_to_a_state_dict_masks_only_the_masked_tensors(tmp_path):
    mask = nm_mask((8, 16))
    save_masks(str(tmp_path / "m.npz"), {Q: mask})
    packed = read_packed_masks(str(tmp_path / "m.npz"))
    weight, other = torch.randn(8, 16), torch.randn(3)
    tensors = {Q: weight, "model.norm.weight": other}
    out = apply_masks_to_state_dict(tensors, packed, (2, 4))
    assert out is tensors and torch.equal(out[Q], weight * mask)
    assert out["model.norm.weight"] is other
    save_masks(str(tmp_path / "dense.npz"), {Q: torch.ones(8, 16, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"is not exactly 2:4: 32 of 32 groups"):
        apply_masks_to_state_dict({Q: weight}, read_packed_masks(str(tmp_path / "dense.npz")),
                                  (2, 4))


def test_apply_to_a_model_in_place_and_strictly(tmp_path):
    model = TinyHF()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    masks = {Q: nm_mask((8, 16), n=1), DOWN: nm_mask((4, 8), n=1, seed=2)}
    save_masks(str(tmp_path / "m.npz"), masks, fmt="compact", nm=(1, 4))
    assert apply_masks_to_hf_model(model, str(tmp_path / "m.npz")) == (1, 4)  # the file's N:M
    params = dict(model.named_parameters())
    for name in masks:
        assert torch.equal(params[name], before[name] * masks[name])
    assert torch.equal(params["model.norm.weight"], before["model.norm.weight"])
    with pytest.raises(ValueError, match="disagrees"):
        apply_masks_to_hf_model(TinyHF(), str(tmp_path / "m.npz"), (2, 4))
    save_masks(str(tmp_path / "partial.npz"), {Q: masks[Q]})
    with pytest.raises(ValueError, match=rf"does not match the model: no mask for \['{DOWN}'\]"):
        apply_masks_to_hf_model(TinyHF(), str(tmp_path / "partial.npz"), (1, 4))
    save_masks(str(tmp_path / "extra.npz"), {**masks, "lm_head.weight": nm_mask((4, 8))})
    with pytest.raises(ValueError, match=r"\['lm_head.weight'\] .* not parameters of the model"):
        apply_masks_to_hf_model(TinyHF(tied=True), str(tmp_path / "extra.npz"), (1, 4))
