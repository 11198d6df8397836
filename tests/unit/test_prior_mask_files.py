"""--prior-mask files in every form a run writes: {npz-bits, compact} x {global Megatron names,
HF names}, all read to the same per-layer masks; and every way a file can fail to fit the run.

The reference is built independently of the name map: random exact 2:4 masks drawn per HF
weight, fused into Megatron's layout by hand ([q heads of group g; k_g; v_g] per query group,
fc1 as [gate; up]).
"""
import os
import re
import subprocess
import sys

import pytest
import torch

from megatron_masklm.masking import MaskConfig, save_masks_compact, save_masks_npz

from conftest import TINY_LLAMA as SHAPE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HIDDEN, FFN, HEADS, GROUPS = SHAPE["hidden_size"], SHAPE["ffn_hidden_size"], 4, 2
HEAD_DIM = HIDDEN // HEADS
HF_SHAPES = {"self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN),
             "self_attn.k_proj": (GROUPS * HEAD_DIM, HIDDEN),
             "self_attn.v_proj": (GROUPS * HEAD_DIM, HIDDEN),
             "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (FFN, HIDDEN),
             "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN)}
FC2 = "decoder.layers.1.mlp.linear_fc2.weight"


def exact_nm(shape, n, m, seed):
    """A random keep-mask keeping exactly n of every m consecutive inputs."""
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(shape[0], shape[1] // m, m, generator=gen).argsort(-1)[..., :n]
    mask = torch.zeros(shape[0], shape[1] // m, m, dtype=torch.bool)
    return mask.scatter_(-1, keep, True).reshape(shape)


def hf_masks(n=2, m=4, seed=0):
    return {f"model.layers.{i}.{name}.weight": exact_nm(shape, n, m, seed + 10 * i + k)
            for i in range(SHAPE["num_layers"]) for k, (name, shape) in enumerate(HF_SHAPES.items())}


def megatron_layout(hf):
    """The same masks under global Megatron names, fused by hand."""
    out = {}
    for i in range(SHAPE["num_layers"]):
        pre = f"model.layers.{i}."
        q, k, v = (hf[f"{pre}self_attn.{p}_proj.weight"] for p in "qkv")
        rows, per_group = [], HEADS // GROUPS
        for g in range(GROUPS):
            rows.append(q[g * per_group * HEAD_DIM:(g + 1) * per_group * HEAD_DIM])
            rows += [k[g * HEAD_DIM:(g + 1) * HEAD_DIM], v[g * HEAD_DIM:(g + 1) * HEAD_DIM]]
        mg = f"decoder.layers.{i}."
        out[mg + "self_attention.linear_qkv.weight"] = torch.cat(rows)
        out[mg + "self_attention.linear_proj.weight"] = hf[pre + "self_attn.o_proj.weight"]
        out[mg + "mlp.linear_fc1.weight"] = torch.cat([hf[pre + "mlp.gate_proj.weight"],
                                                      hf[pre + "mlp.up_proj.weight"]])
        out[mg + "mlp.linear_fc2.weight"] = hf[pre + "mlp.down_proj.weight"]
    return out


@pytest.fixture(scope="module")
def model(mcore):
    torch.manual_seed(0)
    return mcore.build_masked_gpt_model(mcore.ModelShape(**SHAPE), MaskConfig(n=2, m=4))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The four forms of one mask, and the reference (global Megatron name -> mask)."""
    tmp = tmp_path_factory.mktemp("masks")
    hf = hf_masks()
    reference = megatron_layout(hf)
    paths = {"megatron-npz": str(tmp / "mg.npz"), "megatron-compact": str(tmp / "mg.idx.npz"),
             "hf-npz": str(tmp / "hf.npz"), "hf-compact": str(tmp / "hf.idx.npz")}
    save_masks_npz(paths["megatron-npz"], reference)
    save_masks_compact(paths["megatron-compact"], reference, n=2, m=4)
    save_masks_npz(paths["hf-npz"], hf)
    save_masks_compact(paths["hf-compact"], hf, n=2, m=4)
    return paths, hf, reference


def _load(mcore, path, model, **kwargs):
    from megatron_masklm.convert.masks import load_global_masks

    return load_global_masks(path, model, shape=mcore.ModelShape(**SHAPE), **kwargs)


@pytest.mark.parametrize("form", ["megatron-compact", "hf-npz", "hf-compact"])
def test_every_form_loads_like_the_megatron_npz(mcore, model, files, form):
    paths, _, reference = files
    expected = _load(mcore, paths["megatron-npz"], model)
    assert sorted(expected) == sorted(name for name, _ in mcore.masked_linears(model))
    for name, mask in expected.items():  # a world of one: the shard is the whole mask
        assert torch.equal(mask, reference[f"{name}.weight"]), name
    got = _load(mcore, paths[form], model)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name].dtype == torch.bool and torch.equal(got[name], expected[name]), name


def test_a_shape_that_is_not_the_models_is_refused(mcore, model, files):
    from megatron_masklm.convert.masks import load_global_masks

    paths, _, _ = files
    with pytest.raises(ValueError, match="not the one the model was built with"):
        load_global_masks(paths["hf-compact"], model,
                          shape=mcore.ModelShape(**{**SHAPE, "num_query_groups": 4}))


def test_the_prior_from_an_hf_file_wins_the_argmax(mcore, files):
    torch.manual_seed(1)
    fresh = mcore.build_masked_gpt_model(mcore.ModelShape(**SHAPE), MaskConfig(n=2, m=4))
    paths, _, reference = files
    mcore.apply_prior_masks(fresh, _load(mcore, paths["hf-compact"], fresh), strength=10.0)
    for name, mask in mcore.hard_masks(fresh).items():
        assert torch.equal(mask.cpu(), reference[f"{name}.weight"]), name


# --- files that do not fit: ValueError naming the file, the entry and the fix ---

def _raises(mcore, model, path, *needles):
    with pytest.raises(ValueError) as info:
        _load(mcore, path, model)
    message = str(info.value)
    for needle in (repr(path), *needles):
        assert needle in message, message
    return message


@pytest.mark.parametrize("fmt", ["npz", "compact"])
def test_a_group_keeping_four_of_four_is_refused(mcore, model, files, tmp_path, fmt):
    _, hf, reference = files
    bad = {k: v.clone() for k, v in reference.items()}
    bad[FC2][3, 4:8] = True  # row 3, group 1 keeps 4 of 4
    path = str(tmp_path / "four_of_four.npz")
    if fmt == "npz":
        save_masks_npz(path, bad)
        _raises(mcore, model, path, FC2, "not an exact 2:4", "row 3, group 1", "keeps 4 of 4",
                "--pattern 2:4")
    else:  # the compact format cannot even hold it
        with pytest.raises(ValueError, match="not exactly 2:4"):
            save_masks_compact(path, bad, n=2, m=4)


def test_a_4_of_8_mask_in_a_2_4_run_is_refused(mcore, model, files, tmp_path):
    compact, bits = str(tmp_path / "48.idx.npz"), str(tmp_path / "48.npz")
    masks = hf_masks(n=4, m=8, seed=5)
    save_masks_compact(compact, masks, n=4, m=8)
    _raises(mcore, model, compact, "holds 4:8 masks but this run learns 2:4",
            "--pattern 4:8")
    save_masks_npz(bits, masks)
    message = _raises(mcore, model, bits, "not an exact 2:4", "--pattern 2:4")
    assert "model.layers." in message  # the entry, under the file's own (HF) name


@pytest.mark.parametrize("naming", ["megatron", "hf"])
def test_a_missing_layer_is_refused(mcore, model, files, tmp_path, naming):
    _, hf, reference = files
    masks = dict(reference if naming == "megatron" else hf)
    dropped = FC2 if naming == "megatron" else "model.layers.1.mlp.down_proj.weight"
    del masks[dropped]
    path = str(tmp_path / "missing.idx.npz")
    save_masks_compact(path, masks, n=2, m=4)
    _raises(mcore, model, path, "has no mask for", dropped, "1 of the model's",
            "tools/export_masks.py")


@pytest.mark.parametrize("naming", ["megatron", "hf"])
def test_an_unknown_extra_layer_is_refused(mcore, model, files, tmp_path, naming):
    _, hf, reference = files
    masks = dict(reference if naming == "megatron" else hf)
    extra = ("decoder.layers.2.mlp.linear_fc2.weight" if naming == "megatron"
             else "model.layers.2.mlp.down_proj.weight")
    masks[extra] = exact_nm((HIDDEN, FFN), 2, 4, 99)
    path = str(tmp_path / "extra.npz")
    save_masks_npz(path, masks)
    _raises(mcore, model, path, extra, "not masked weights of this 2-layer model",
            "made for this model")


@pytest.mark.parametrize("fmt", ["npz", "compact"])
def test_a_wrong_shape_is_refused(mcore, model, files, tmp_path, fmt):
    _, hf, _ = files
    masks = dict(hf)
    name = "model.layers.0.mlp.gate_proj.weight"
    masks[name] = exact_nm((FFN + 8, HIDDEN), 2, 4, 7)  # another model's ffn size
    path = str(tmp_path / f"shape.{fmt}.npz")
    (save_masks_npz(path, masks) if fmt == "npz"
     else save_masks_compact(path, masks, n=2, m=4))
    needle = "has shape (56, 32) but the weight has shape (48, 32)" if fmt == "compact" \
        else "bytes but shape (48, 32) needs"
    _raises(mcore, model, path, name, needle, "made for this model")


def test_mixed_or_unknown_names_are_refused(mcore, model, files, tmp_path):
    _, hf, reference = files
    mixed = {**{k: v for k, v in reference.items() if ".layers.0." in k},
             **{k: v for k, v in hf.items() if ".layers.1." in k}}
    path = str(tmp_path / "mixed.npz")
    save_masks_npz(path, mixed)
    _raises(mcore, model, path, "mixes Megatron names", "and HF names",
            "decoder.layers.0.", "model.layers.1.")
    unknown = {f"blocks.{i}.ffn.weight": v for i, v in enumerate(hf.values())}
    path = str(tmp_path / "unknown.idx.npz")
    save_masks_compact(path, unknown, n=2, m=4)
    _raises(mcore, model, path, "are not parameter names", "blocks.0.ffn.weight",
            "decoder.layers.<i>.", "model.layers.<i>.")


def test_the_train_cli_prints_the_error_and_exits_1(files, tmp_path):
    _, hf, _ = files
    masks = dict(hf)
    masks["model.layers.0.mlp.up_proj.weight"] = masks["model.layers.0.mlp.up_proj.weight"] | True
    path = str(tmp_path / "dense_group.npz")
    save_masks_npz(path, masks)
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in SHAPE.items()]
    cmd = [sys.executable, "-m", "megatron_masklm.train", *flags, "--mock-data",
           "--seq-length=16", "--micro-batch-size=1", "--global-batch-size=1",
           "--train-iters=1", "--eval-iters=0", f"--prior-mask={path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert error and path in error[0] and "model.layers.0.mlp.up_proj.weight" in error[0]
    assert re.search(r"not an exact 2:4 mask: row 0, group 0 .* keeps 4 of 4", error[0]), error
