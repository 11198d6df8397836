"""Applying masks to a sharded HF checkpoint and the verify_nm / apply_masks CLIs.

References: masked weights recomputed in the test as weight * mask, masks drawn per group from
itertools.combinations, unmasked tensors compared byte for byte, other files byte for byte.
"""
import importlib.util
import json
import os
import random
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from megatron_masklm.hf import apply_masks_to_hf_dir, verify_nm_path
from megatron_masklm.masking import save_masks_compact, save_masks_npz

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HIDDEN, KV, FFN, VOCAB = 16, 8, 24, 32
LINEARS = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV, HIDDEN),
           "self_attn.v_proj": (KV, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
           "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN)}
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
OTHER_FILES = {"config.json": '{"model_type": "llama"}', "tokenizer.json": '{"version": "1.0"}',
               "generation_config.json": "{}"}
Q0 = "model.layers.0.self_attn.q_proj.weight"


def layer_tensors(layer, dtype, gen):
    tensors = {f"model.layers.{layer}.{name}.weight": torch.randn(shape, generator=gen).to(dtype)
               for name, shape in LINEARS.items()}
    for norm in ("input_layernorm", "post_attention_layernorm"):
        tensors[f"model.layers.{layer}.{norm}.weight"] = torch.rand(HIDDEN, generator=gen).to(dtype)
    return tensors


def write_checkpoint(directory, shards):
    os.makedirs(directory)
    weight_map = {name: file for file, tensors in shards.items() for name in tensors}
    for file, tensors in shards.items():
        save_file(tensors, os.path.join(directory, file), metadata={"format": "pt"})
    total = sum(t.numel() * t.element_size() for tensors in shards.values() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as handle:
        json.dump(index, handle, indent=2)
    for name, text in OTHER_FILES.items():
        with open(os.path.join(directory, name), "w") as handle:
            handle.write(text)
    return str(directory)


def random_2_4(shape, rng):
    """Each group of 4 keeps one of the C(4,2) position pairs, drawn at random."""
    pairs = list(combinations(range(4), 2))
    mask = torch.zeros(shape, dtype=torch.bool)
    for row in range(shape[0]):
        for group in range(shape[1] // 4):
            for kept in rng.choice(pairs):
                mask[row, group * 4 + kept] = True
    return mask


@pytest.fixture
def ckpt(tmp_path):
    """A 2-layer LLaMA-shaped checkpoint in two shards (fp32 and bf16), its masks and files."""
    gen = torch.Generator().manual_seed(0)
    first = {"model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=gen),
             **layer_tensors(0, torch.float32, gen)}
    second = {**layer_tensors(1, torch.bfloat16, gen), "model.norm.weight": torch.rand(HIDDEN, generator=gen),
              "lm_head.weight": torch.randn(VOCAB, HIDDEN, generator=gen).bfloat16()}
    directory = write_checkpoint(tmp_path / "dense", dict(zip(SHARDS, (first, second))))
    rng = random.Random(0)
    masks = {name: random_2_4(t.shape, rng) for name, t in {**first, **second}.items()
             if ".layers." in name and "proj" in name}
    bits, compact = str(tmp_path / "bits.npz"), str(tmp_path / "compact.npz")
    save_masks_npz(bits, masks)
    save_masks_compact(compact, masks, n=2, m=4)
    return dict(dir=directory, tensors={**first, **second}, masks=masks, bits=bits,
                compact=compact, tmp=tmp_path)


def run_tool(tool, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verify(path, capsys, *args):
    """(exit status, stdout, stderr) of verify_nm.py run in-process."""
    status = tool("verify_nm").main([str(path), *args])
    return (status, *capsys.readouterr())


def read_all(directory):
    return {name: t for file in SHARDS for name, t in load_file(os.path.join(directory, file)).items()}


def same_bytes(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("fmt", ["bits", "compact"])
def test_apply_masks(ckpt, fmt):
    out = str(ckpt["tmp"] / "sparse")
    names = apply_masks_to_hf_dir(ckpt["dir"], ckpt[fmt], out)
    assert names == sorted(ckpt["masks"]) and len(names) == 14
    result = read_all(out)
    assert set(result) == set(ckpt["tensors"])
    for name, dense in ckpt["tensors"].items():
        if name in ckpt["masks"]:
            assert result[name].dtype == dense.dtype
            assert torch.equal(result[name], dense * ckpt["masks"][name].to(dense.dtype))
        else:
            assert same_bytes(result[name], dense), name
    for file in SHARDS:
        with safe_open(os.path.join(out, file), framework="pt") as handle:
            assert handle.metadata() == {"format": "pt"}
    assert sorted(os.listdir(out)) == sorted(os.listdir(ckpt["dir"]))
    for file in [*OTHER_FILES, "model.safetensors.index.json"]:
        assert open(os.path.join(out, file), "rb").read() == open(os.path.join(ckpt["dir"], file), "rb").read()
    assert sorted(os.listdir(ckpt["tmp"])) == ["bits.npz", "compact.npz", "dense", "sparse"]


def test_allow_missing_and_overwrite(ckpt):
    partial = {k: v for k, v in ckpt["masks"].items() if k != Q0}
    masks = str(ckpt["tmp"] / "partial.npz")
    save_masks_compact(masks, partial, n=2, m=4)
    out = ckpt["tmp"] / "sparse"
    out.mkdir()
    (out / "junk.txt").write_text("old")
    with pytest.raises(ValueError, match=rf"\['{Q0}'\] \(1 in all\) have no mask.*--allow-missing"):
        apply_masks_to_hf_dir(ckpt["dir"], masks, str(out), overwrite=True)
    with pytest.raises(ValueError, match="already exists: pass --overwrite"):
        apply_masks_to_hf_dir(ckpt["dir"], masks, str(out), allow_missing=True)
    apply_masks_to_hf_dir(ckpt["dir"], masks, str(out), allow_missing=True, overwrite=True)
    assert not (out / "junk.txt").exists()
    assert same_bytes(read_all(str(out))[Q0], ckpt["tensors"][Q0])
    assert sorted(os.listdir(ckpt["tmp"])) == ["bits.npz", "compact.npz", "dense", "partial.npz", "sparse"]


def corrupt_bits(ckpt):
    masks = dict(ckpt["masks"])
    masks[Q0] = masks[Q0].clone()
    masks[Q0][3, 4:8] = True
    path = str(ckpt["tmp"] / "corrupt.npz")
    save_masks_npz(path, masks)
    return path


def unknown_name(ckpt):
    path = str(ckpt["tmp"] / "unknown.npz")
    save_masks_npz(path, {**ckpt["masks"], "model.layers.9.mlp.up_proj.weight": ckpt["masks"][Q0]})
    return path


def wrong_shape(ckpt):
    path = str(ckpt["tmp"] / "shape.npz")
    masks = dict(ckpt["masks"], **{Q0: random_2_4((HIDDEN, 2 * HIDDEN), random.Random(1))})
    save_masks_compact(path, masks, n=2, m=4)
    return path


def bad_index(ckpt):
    path = str(ckpt["tmp"] / "index.npz")
    with np.load(ckpt["compact"]) as archive:
        entries = {key: archive[key] for key in archive.files}
    entries[Q0 + ".idx"] = np.full_like(entries[Q0 + ".idx"], 0xFF)
    np.savez_compressed(path, **entries)
    return path


@pytest.mark.parametrize("make,match", [
    (corrupt_bits, f"mask '{Q0}' in .* is not exactly 2:4: 1 of 64 groups"),
    (unknown_name, r"masks for \['model.layers.9.mlp.up_proj.weight'\] .* not parameters"),
    (wrong_shape, rf"'{Q0}' has shape \(16, 32\) but the weight has shape \(16, 16\)"),
    (bad_index, rf"entry '{Q0}': candidate index 7 at row 0, group 0 is out of range"),
])
def test_apply_errors_leave_nothing(ckpt, make, match):
    masks = make(ckpt)
    before = sorted(os.listdir(ckpt["tmp"]))
    with pytest.raises(ValueError, match=match):
        apply_masks_to_hf_dir(ckpt["dir"], masks, str(ckpt["tmp"] / "sparse"))
    assert sorted(os.listdir(ckpt["tmp"])) == before


def test_apply_refuses_to_write_into_the_source(ckpt):
    with pytest.raises(ValueError, match="overlaps --hf-dir .*would destroy the input"):
        apply_masks_to_hf_dir(ckpt["dir"], ckpt["bits"], ckpt["dir"], overwrite=True)
    os.makedirs(os.path.join(ckpt["dir"], "sub"))  # existing, inside: replacing it is refused
    with pytest.raises(ValueError, match="overlaps --hf-dir .*would destroy the input"):
        apply_masks_to_hf_dir(ckpt["dir"], ckpt["bits"], os.path.join(ckpt["dir"], "sub"),
                              overwrite=True)
    os.rmdir(os.path.join(ckpt["dir"], "sub"))
    assert len(read_all(ckpt["dir"])) == len(ckpt["tensors"])


def test_verify_counts_match_reference(ckpt):
    weight = torch.randn(4, 8)
    weight[0, :4] = 0  # 4 zeros: pruned, not a violation
    weight[1, 4:6] = 0  # 2 kept: fine
    path = str(ckpt["tmp"] / "one.safetensors")
    save_file({Q0: weight, "model.embed_tokens.weight": torch.randn(3, 5)}, path)
    report = verify_nm_path(path, pattern="2:4")
    (check,) = report.params
    over = sum(int((weight[r, g:g + 4] != 0).sum()) > 2 for r in range(4) for g in (0, 4))
    assert (check.name, check.shape, check.groups, check.over, check.pruned) == (Q0, (4, 8), 8, over, 6)
    assert over == 6 and not report.ok


def test_cli_apply(ckpt, capsys):
    out = str(ckpt["tmp"] / "sparse")
    argv = ["--hf-dir", ckpt["dir"], "--masks", ckpt["compact"], "--output", out]
    assert tool("apply_masks").main(argv) == 0
    assert "14 masked weights" in capsys.readouterr().out
    assert tool("apply_masks").main(argv) == 1
    assert capsys.readouterr().err.startswith("error: ") and verify(out, capsys)[0] == 0
    assert verify(out, capsys, "--quiet")[1].count("\n") == 1


def test_cli_verify_passes(ckpt, capsys):
    out = str(ckpt["tmp"] / "sparse")
    apply_masks_to_hf_dir(ckpt["dir"], ckpt["bits"], out)
    done = run_tool("verify_nm.py", out)  # one real process: the exit status reaches the shell
    assert done.returncode == 0, done.stdout + done.stderr
    results = {out: (done.stdout, "(16, 16)")}
    for path, shape in [(ckpt["compact"], "(16, 16)"), (ckpt["bits"], "(256,)")]:
        status, text, _ = verify(path, capsys)  # npz-bits stores no shape: the flat run is checked
        assert status == 0, text
        results[path] = (text, shape)
    for text, shape in results.values():
        lines = text.strip().splitlines()
        assert len(lines) == 15 and lines[-1].startswith("summary: 14 parameters")
        assert lines[-1].endswith("-> OK")
        assert f"{Q0}  shape={shape}  sparsity=50.00%  violations=0/64" in text


def test_cli_verify_fails(ckpt, capsys):
    corrupt = run_tool("verify_nm.py", corrupt_bits(ckpt), "--pattern", "2:4")
    assert corrupt.returncode == 1 and "violations=1/64  underfull=0" in corrupt.stdout
    assert corrupt.stdout.strip().splitlines()[-1].endswith("-> FAIL (not 2:4)")
    status, text, _ = verify(ckpt["dir"], capsys)
    assert status == 1
    assert f"{Q0}  shape=(16, 16)  sparsity=0.00%  violations=64/64" in text.splitlines()
    assert text.strip().splitlines()[-1].endswith("-> FAIL (not 2:4)")


def test_cli_verify_options(ckpt, capsys):
    status, text, _ = verify(ckpt["bits"], capsys, "--hf-dir", ckpt["dir"])
    assert status == 0 and f"{Q0}  shape=(16, 16)  sparsity=50.00%  violations=0/64  underfull=0" in text
    status, text, _ = verify(os.path.join(ckpt["dir"], SHARDS[1]), capsys)
    assert status == 1 and len(text.splitlines()) == 8  # one shard: layer 1 only
    status, text, err = verify(ckpt["compact"], capsys, "--pattern", "1:4")
    assert (status, text) == (1, "") and "disagrees with the mask file, which is 2:4" in err


def test_cli_verify_errors(ckpt, tmp_path, capsys):
    odd = str(tmp_path / "odd.safetensors")
    save_file({Q0: torch.ones(4, 6)}, odd)
    empty = str(tmp_path / "empty.safetensors")
    save_file({"model.embed_tokens.weight": torch.ones(4, 8)}, empty)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3)
    for path, message in [(odd, f"{Q0}: shape (4, 6) is not 2-D [rows, in] with in divisible by M=4"),
                          (empty, "has no masked LLaMA linear weights"),
                          (str(garbage), "cannot read safetensors file"),
                          (str(tmp_path / "missing"), "does not exist"),
                          (ckpt["tmp"] / "dense" / "config.json", "not an .npz (zip) archive")]:
        status, text, err = verify(path, capsys)
        assert status == 1 and text == "" and err.startswith("error: ") and message in err, err
