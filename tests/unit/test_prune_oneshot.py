"""tools/prune_oneshot.py in one process, against an independent sequential reference written
on transformers' LlamaForCausalLM (its own hooks, per-module statistics, loop-coded N:M
selection), plus the outputs' contracts and clear errors that leave nothing behind."""
import hashlib
import os
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")  # an install extra ([hf], [test]) in CI
from safetensors.torch import load_file  # noqa: E402

from hf_utils import tiny_llama  # noqa: E402
from megatron_masklm.masking import is_exact_nm, load_masks_npz  # noqa: E402
from megatron_masklm.oneshot import sparsegpt  # noqa: E402

WINDOWS, SEQ = 16, 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random LLaMA (2 layers, GQA 4/2, SwiGLU 96) and 16 calibration windows of 32."""
    root = tmp_path_factory.mktemp("prune")
    tiny_llama(root / "hf", seed=3)
    tokens = torch.randint(0, 100, (WINDOWS, SEQ), generator=torch.Generator().manual_seed(5))
    (root / "calib.txt").write_text(" ".join(str(int(t)) for t in tokens.reshape(-1)))
    return root, tokens


def _run(argv):
    from script_modules import tool

    return tool("prune_oneshot").main([str(a) for a in argv])


def _common(root, method, out, *extra):
    return ["--hf-checkpoint", root / "hf", "--method", method, "--calib-text", root / "calib.txt",
            "--tokenizer-type", "NullTokenizer", "--calib-samples", WINDOWS, "--seq-length", SEQ,
            "--micro-batch-size", 4, "--output-mask", out / "prior.npz",
            "--hf-masks", out / "hf_masks.npz", "--no-progress", *extra]


def _keep_n_per_group(scores, n, m):
    """Loop-coded N:M selection: in each group keep the N largest, the lower index on ties."""
    rows, cols = scores.shape
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    for r in range(rows):
        for g in range(0, cols, m):
            group = scores[r, g:g + m].tolist()
            order = sorted(range(m), key=lambda j: (-group[j], j))
            for j in order[:n]:
                keep[r, g + j] = True
    return keep


@torch.no_grad()
def reference_prune(hf_dir, tokens, method, *, sequential=True, n=2, m=4, fixed=None):
    """Layer by layer on the HF model: hooks gather every linear's inputs over all windows,
    each linear is pruned (SparseGPT: the pure maths, fed a Hessian summed here in fp64), and
    the next layer's inputs come from the pruned layer (or, with ``sequential=False``, from the
    dense model: the shortcut this driver must not take). ``fixed``: HF name -> the keep-mask
    SparseGPT prunes that linear by instead of choosing."""
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    dense = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    layers = model.model.layers
    captured = []

    def catch(module, args, kwargs):
        captured.append((args, kwargs))
        raise StopIteration

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        model(tokens, use_cache=False)  # a KV cache would make the second call attend to the first
    except StopIteration:
        pass
    handle.remove()
    args, kwargs = captured[0]

    def call(layer, hidden):
        out = layer(hidden, *args[1:], **{k: v for k, v in kwargs.items() if k != "hidden_states"})
        return out[0] if isinstance(out, tuple) else out

    hidden = kwargs.get("hidden_states", args[0] if args else None)
    masks, weights = {}, {}
    for i, layer in enumerate(layers):
        linears = {name: mod for name, mod in layer.named_modules()
                   if isinstance(mod, torch.nn.Linear)}
        inputs = {name: [] for name in linears}
        hooks = [mod.register_forward_pre_hook(
            lambda mod, a, name=name: inputs[name].append(a[0].reshape(-1, a[0].shape[-1])))
            for name, mod in linears.items()]
        call(layer, hidden)
        for h in hooks:
            h.remove()
        for name, mod in linears.items():
            X, W = torch.cat(inputs[name]).double(), mod.weight.detach().clone()
            if method == "magnitude":
                keep = _keep_n_per_group(W.abs(), n, m)
                new = W * keep
            elif method == "wanda":
                keep = _keep_n_per_group(W.abs().double() * X.pow(2).sum(0).sqrt(), n, m)
                new = W * keep
            else:
                H = (2.0 / X.shape[0]) * X.t() @ X
                key = f"model.layers.{i}.{name}.weight"
                keep, new = sparsegpt(W, H.float(), n, m,
                                      keep_RI=None if fixed is None else fixed[key])
            mod.weight.copy_(new)
            key = f"model.layers.{i}.{name}.weight"
            masks[key], weights[key] = keep, new
        hidden = call(layer, hidden) if sequential else call(dense.model.layers[i], hidden)
    return masks, weights


def _load_hf_masks(path, reference):
    return load_masks_npz(str(path), {k: tuple(v.shape) for k, v in reference.items()})


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_masks_and_weights_equal_the_sequential_reference(setup, tmp_path, method):
    root, tokens = setup
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "hf").iterdir()}
    extra = ["--update-weights"] if method == "sparsegpt" else []
    assert _run(_common(root, method, tmp_path, "--save-hf", tmp_path / "pruned", *extra)) == 0
    masks, weights = reference_prune(root / "hf", tokens, method)
    ours = _load_hf_masks(tmp_path / "hf_masks.npz", masks)
    assert sorted(ours) == sorted(masks) and len(masks) == 14  # q k v o gate up down x 2 layers
    for name in masks:
        assert torch.equal(ours[name], masks[name]), name
        assert is_exact_nm(ours[name], 2, 4)
    pruned = load_file(tmp_path / "pruned" / "model.safetensors")
    original = load_file(root / "hf" / "model.safetensors")
    for name, tensor in pruned.items():
        if name in weights:  # pruned (SparseGPT: updated) weights, exact zeros off the mask
            torch.testing.assert_close(tensor, weights[name], rtol=1e-4, atol=1e-5)
            assert not tensor[~masks[name]].any()
        else:  # embeddings, norms: untouched
            assert torch.equal(tensor, original[name]), name
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "hf").iterdir()}
    assert after == before  # the source is only read


@pytest.mark.parametrize("naming", ["hf", "megatron"])
def test_a_fixed_mask_gets_sparsegpts_weights_for_it(setup, tmp_path, naming):
    """--fixed-mask: Wanda's masks (not what SparseGPT would choose), given under HF or Megatron
    names, pruned by with SparseGPT's update, calibrated layer by layer on the updated layers:
    the sequential reference with the same masks given."""
    root, tokens = setup
    wanda = tmp_path / "wanda"
    wanda.mkdir()
    assert _run(_common(root, "wanda", wanda)) == 0
    given = wanda / ("hf_masks.npz" if naming == "hf" else "prior.npz")
    out = tmp_path / "fixed"
    out.mkdir()
    assert _run(["--hf-checkpoint", root / "hf", "--method", "sparsegpt", "--calib-text",
                 root / "calib.txt", "--tokenizer-type", "NullTokenizer", "--calib-samples",
                 WINDOWS, "--seq-length", SEQ, "--micro-batch-size", 4, "--fixed-mask", given,
                 "--hf-masks", out / "hf_masks.npz", "--save-hf", out / "recovered",
                 "--no-progress"]) == 0
    chosen, _ = reference_prune(root / "hf", tokens, "sparsegpt")
    fixed = _load_hf_masks(wanda / "hf_masks.npz", chosen)
    masks, weights = reference_prune(root / "hf", tokens, "sparsegpt", fixed=fixed)
    assert any(not torch.equal(fixed[k], chosen[k]) for k in chosen)  # not SparseGPT's own
    written = _load_hf_masks(out / "hf_masks.npz", masks)
    recovered = load_file(out / "recovered" / "model.safetensors")
    original = load_file(root / "hf" / "model.safetensors")
    for name in masks:
        assert torch.equal(written[name], fixed[name]), name
        torch.testing.assert_close(recovered[name], weights[name], rtol=1e-4, atol=1e-5)
        assert not recovered[name][~fixed[name]].any()
        assert not torch.equal(recovered[name], original[name] * fixed[name])  # updated
    assert not (out / "prior.npz").exists()  # --output-mask is optional with --fixed-mask


def test_the_reference_is_sensitive_to_sequential_calibration(setup):
    """Guards the test above: calibrating on the dense model's hidden states instead would give
    other masks in layer 1, so equality with the sequential reference means something."""
    root, tokens = setup
    sequential, _ = reference_prune(root / "hf", tokens, "sparsegpt")
    shortcut, _ = reference_prune(root / "hf", tokens, "sparsegpt", sequential=False)
    assert all(torch.equal(sequential[k], shortcut[k]) for k in sequential if ".0." in k)
    assert any(not torch.equal(sequential[k], shortcut[k]) for k in sequential if ".1." in k)


def test_sparsegpt_mask_without_update_saves_original_weights_times_mask(setup, tmp_path):
    root, _ = setup
    from megatron_masklm.convert import load_megatron_checkpoint

    assert _run(_common(root, "sparsegpt", tmp_path, "--save", tmp_path / "mg")) == 0
    updated = tmp_path / "upd"
    updated.mkdir()
    assert _run(_common(root, "sparsegpt", updated, "--update-weights",
                        "--save", updated / "mg")) == 0
    loaded = load_megatron_checkpoint(str(tmp_path / "mg"))
    original = load_file(root / "hf" / "model.safetensors")
    hf_masks = _load_hf_masks(tmp_path / "hf_masks.npz",
                              {k: original[k] for k in original if "proj" in k})
    for name, tensor in loaded.tensors.items():
        expected = original[name] * hf_masks[name] if name in hf_masks else original[name]
        assert torch.equal(tensor, expected), name
    # the same masks either way; only the written weights differ
    again = _load_hf_masks(updated / "hf_masks.npz", hf_masks)
    assert all(torch.equal(again[k], hf_masks[k]) for k in hf_masks)
    reloaded = load_megatron_checkpoint(str(updated / "mg"))
    changed = [k for k in hf_masks if not torch.equal(reloaded.tensors[k], loaded.tensors[k])]
    assert len(changed) == len(hf_masks)
    assert (tmp_path / "mg" / "oneshot_pruning.json").exists()
    assert (tmp_path / "mg" / "tokenizer" / "tokenizer.json").exists()


@pytest.mark.parametrize("pattern", ["1:4", "2:8", "4:8"])
def test_other_patterns_are_exact(setup, tmp_path, pattern):
    root, _ = setup
    assert _run(_common(root, "wanda", tmp_path, "--pattern", pattern)) == 0
    n, m = map(int, pattern.split(":"))
    original = load_file(root / "hf" / "model.safetensors")
    masks = _load_hf_masks(tmp_path / "hf_masks.npz", {k: original[k] for k in original if "proj" in k})
    for name, mask in masks.items():
        assert is_exact_nm(mask, n, m), name
        assert mask.float().mean().item() == n / m


def test_indexed_calibration_concatenates_documents_in_order(tmp_path):
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_masklm.data.calibration import indexed_windows

    prefix = str(tmp_path / "docs")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    docs = [list(range(start, start + length)) for start, length in ((0, 5), (50, 7), (20, 9))]
    for doc in docs:
        builder.add_item(torch.tensor(doc))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    flat = [t for doc in docs for t in doc]
    windows = indexed_windows(prefix, seq_length=4, num_samples=5)
    assert windows.tolist() == [flat[i:i + 4] for i in range(0, 20, 4)]
    with pytest.raises(ValueError, match="5 full windows of 4, fewer than the 6"):
        indexed_windows(prefix, seq_length=4, num_samples=6)
    with pytest.raises(ValueError, match="has no .*missing.bin"):
        indexed_windows(str(tmp_path / "missing"), seq_length=4, num_samples=1)


def _indexed(prefix, docs):
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for doc in docs:
        builder.add_item(torch.tensor(doc))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


@pytest.mark.parametrize("weights, samples, expected", [
    ([0.5, 0.25, 0.25], 128, [64, 32, 32]), ([1, 1, 1], 4, [2, 1, 1]), ([1, 2], 3, [1, 2]),
    ([100, 1], 2, [1, 1]), ([3], 5, [5])])
def test_blend_counts_split_windows_by_weight(weights, samples, expected):
    from megatron_masklm.data.calibration import blend_counts

    assert blend_counts(weights, samples) == expected


def test_blended_calibration_takes_each_prefix_first_windows_by_weight(tmp_path):
    from megatron_masklm.data.calibration import blended_windows

    a = _indexed(str(tmp_path / "a"), [list(range(0, 12))])
    b = _indexed(str(tmp_path / "b"), [list(range(100, 112))])
    windows = blended_windows(["3", a, "1", b], seq_length=4, num_samples=4)
    assert windows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [100, 101, 102, 103]]
    assert blended_windows([a], seq_length=4, num_samples=2).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="need weights"):
        blended_windows([a, b], seq_length=4, num_samples=2)
    with pytest.raises(ValueError, match="cannot cover a blend of 2"):
        blended_windows(["1", a, "1", b], seq_length=4, num_samples=1)
    with pytest.raises(ValueError, match="3 full windows of 4, fewer than the 4"):
        blended_windows(["1", a, "1", b], seq_length=4, num_samples=8)


@pytest.mark.parametrize("argv, message", [
    (["--method", "wanda"], "wanda needs calibration data"),
    (["--method", "wanda", "--calib-text", "{calib}", "--calib-data", "x"], "exactly|one of"),
    (["--method", "magnitude", "--update-weights", "--save", "{out}/s"], "has none"),
    (["--method", "sparsegpt", "--calib-text", "{calib}", "--update-weights"], "--save or --save-hf"),
    (["--method", "wanda", "--calib-text", "{calib}", "--calib-samples", "99"], "fewer than the 99"),
    (["--method", "magnitude", "--pattern", "2:7"], "multiple of M=7"),
    (["--method", "sparsegpt", "--calib-text", "{calib}", "--pattern", "2:3"],
     "pattern 2:3: .*--blocksize 126"),
    (["--method", "magnitude", "--pattern", "5:4"], "not a sparsity pattern"),
    (["--method", "wanda", "--calib-text", "{calib}", "--fixed-mask", "{calib}", "--save", "{out}/s"],
     "--fixed-mask .*--method sparsegpt"),
    (["--method", "sparsegpt", "--calib-text", "{calib}", "--fixed-mask", "{out}/none.npz",
      "--save", "{out}/s"], "--fixed-mask .*none.npz.* is not a file"),
    (["--method", "sparsegpt", "--calib-text", "{calib}", "--fixed-mask", "{calib}"],
     "--fixed-mask computes weights .*--save or --save-hf"),
])
def test_bad_input_fails_clearly_and_writes_nothing(setup, tmp_path, capsys, argv, message):
    root, _ = setup
    argv = [a.format(calib=root / "calib.txt", out=tmp_path) for a in argv]
    code = _run(["--hf-checkpoint", root / "hf", "--tokenizer-type", "NullTokenizer",
                 "--seq-length", SEQ, "--output-mask", tmp_path / "prior.npz", "--no-progress",
                 *argv])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and re.search(message, err), err
    assert os.listdir(tmp_path) == []


def test_existing_output_and_multi_process_hf_are_refused(setup, tmp_path, capsys, monkeypatch):
    root, _ = setup
    (tmp_path / "prior.npz").write_bytes(b"keep me")
    base = ["--hf-checkpoint", root / "hf", "--method", "magnitude", "--output-mask",
            tmp_path / "prior.npz", "--no-progress"]
    assert _run(base) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "prior.npz").read_bytes() == b"keep me"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _run([*base, "--overwrite"]) == 1
    assert "convert with tools/convert_hf_to_megatron.py first" in capsys.readouterr().err


def test_bf16_megatron_checkpoint_is_pruned_in_fp32_and_saved_in_bf16(setup, tmp_path):
    """A bf16 checkpoint (the usual 7B case) loads into the fp32 pruning model and the pruned
    checkpoint is written back in bf16; the masks equal those from the fp32 HF source pruned
    with the weights rounded to bf16 first (magnitude: a pure function of the weights)."""
    from megatron_masklm.convert import convert_hf_to_megatron, load_megatron_checkpoint

    root, _ = setup
    convert_hf_to_megatron(str(root / "hf"), str(tmp_path / "bf16"), dtype="bfloat16",
                           progress=False)
    assert _run(["--load", tmp_path / "bf16", "--method", "magnitude", "--output-mask",
                 tmp_path / "prior.npz", "--hf-masks", tmp_path / "hf_masks.npz",
                 "--save", tmp_path / "pruned", "--no-progress"]) == 0
    loaded = load_megatron_checkpoint(str(tmp_path / "pruned"))
    original = load_file(root / "hf" / "model.safetensors")
    masks = _load_hf_masks(tmp_path / "hf_masks.npz", {k: original[k] for k in original if "proj" in k})
    for name, mask in masks.items():
        weight = original[name].to(torch.bfloat16)
        assert torch.equal(mask, _keep_n_per_group(weight.float().abs(), 2, 4)), name
        assert loaded.tensors[name].dtype == torch.bfloat16
        assert torch.equal(loaded.tensors[name], weight * mask), name


def test_indexed_dataset_calibration_gives_the_text_files_masks(setup, tmp_path):
    """The same tokens as an indexed dataset (split into documents) prune exactly as the text."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    root, tokens = setup
    prefix = str(tmp_path / "calib_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for document in tokens.reshape(-1).split(100):
        builder.add_item(document.to(torch.int32))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    text_out, data_out = tmp_path / "text", tmp_path / "data"
    text_out.mkdir()
    data_out.mkdir()
    assert _run(_common(root, "wanda", text_out)) == 0
    argv = _common(root, "wanda", data_out)
    at = argv.index("--calib-text")
    argv[at:at + 2] = ["--calib-data", prefix]
    assert _run(argv) == 0
    original = load_file(root / "hf" / "model.safetensors")
    shapes = {k: original[k] for k in original if "proj" in k}
    from_text = _load_hf_masks(text_out / "hf_masks.npz", shapes)
    from_data = _load_hf_masks(data_out / "hf_masks.npz", shapes)
    assert all(torch.equal(from_text[k], from_data[k]) for k in shapes)
