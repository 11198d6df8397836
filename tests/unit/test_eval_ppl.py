"""tools/eval_ppl.py: window plans by hand, and perplexities of HF directories (plain and masked)
and of converted Megatron checkpoints against an independent loop on transformers' model that
follows the sliding-window recipe of the transformers documentation."""
import json
import math
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")  # an install extra ([hf], [test]) in CI

from hf_utils import reference_nll, tiny_llama  # noqa: E402
from megatron_masklm.evaluation.perplexity import Window, plan_windows  # noqa: E402
from script_modules import tool  # noqa: E402

main = tool("eval_ppl").main

VOCAB, TOKENS = 100, 203


def test_plan_windows_by_hand():
    # non-overlapping (the BENCHMARK protocol): each window scores all but its first token
    assert plan_windows(10, seq_length=4) == [Window(0, 4, 3), Window(4, 4, 3)]
    assert plan_windows(10, seq_length=4, drop_last=False) == [  # the tail, with context
        Window(0, 4, 3), Window(4, 4, 3), Window(6, 4, 2)]
    assert plan_windows(3, seq_length=4, drop_last=False) == [Window(0, 3, 2)]
    # sliding: later windows score only what the previous one did not
    assert plan_windows(10, seq_length=4, stride=2) == [
        Window(0, 4, 3), Window(2, 4, 2), Window(4, 4, 2), Window(6, 4, 2)]
    assert plan_windows(11, seq_length=4, stride=2, drop_last=False) == [
        Window(0, 4, 3), Window(2, 4, 2), Window(4, 4, 2), Window(6, 4, 2), Window(7, 4, 1)]
    # BOS takes one position of the window and lets the first text token be scored
    assert plan_windows(9, seq_length=4, bos=True) == [
        Window(0, 3, 3), Window(3, 3, 3), Window(6, 3, 3)]
    assert plan_windows(8, seq_length=4, stride=4, drop_last=False) == [
        Window(0, 4, 3), Window(4, 4, 3)]  # nothing left over: no extra window


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_tokens=3, seq_length=4), "no full window"),
    (dict(num_tokens=10, seq_length=1), "too short"),
    (dict(num_tokens=10, seq_length=4, stride=5), "stride 5"),
    (dict(num_tokens=10, seq_length=4, stride=0), "stride 0"),
])
def test_plan_windows_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_windows(**kwargs)


def test_every_token_is_scored_once_with_all_the_context_the_window_has():
    for n in range(5, 40):
        for stride in (1, 3, 7, 8):
            windows = plan_windows(n, seq_length=8, stride=stride, drop_last=False)
            scored = [t for w in windows for t in range(w.start + w.length - w.scored,
                                                        w.start + w.length)]
            # non-overlapping full windows leave their first token unscored (the protocol)
            gaps = set(range(8, n - 7, 8)) if stride == 8 else set()
            assert scored == [t for t in range(1, n) if t not in gaps], (n, stride)
            assert all(w.length == min(8, n) for w in windows)  # full context, tail included


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model = tiny_llama(root / "hf", seed=2, vocab_size=VOCAB)
    ids = torch.randint(0, VOCAB - 1, (TOKENS,), generator=torch.Generator().manual_seed(1))
    (root / "text.txt").write_text(" ".join(str(int(t)) for t in ids))
    return root, model, ids.tolist()


def _eval(*argv, capsys):
    code = main([str(a) for a in argv] + ["--no-progress"])
    out = capsys.readouterr()
    return code, (json.loads(out.out.strip().splitlines()[-1]) if code == 0 else out.err)


@pytest.mark.parametrize("seq, stride, extra", [
    (32, None, []), (32, 12, []), (32, 12, ["--keep-last"]), (16, None, ["--keep-last"])])
def test_hf_directory_matches_the_documented_loop(setup, capsys, seq, stride, extra):
    root, model, ids = setup
    args = ["--hf-dir", root / "hf", "--text", root / "text.txt", "--tokenizer-type",
            "NullTokenizer", "--seq-length", seq, "--micro-batch-size", 3, *extra]
    if stride:
        args += ["--stride", stride]
    code, result = _eval(*args, capsys=capsys)
    assert code == 0, result
    total, count = reference_nll(model, ids, max_length=seq, stride=stride or seq,
                                 drop_last="--keep-last" not in extra)
    assert result["scored_tokens"] == count
    assert result["nll"] == pytest.approx(total / count, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(total / count), rel=1e-6)


def test_bos_windows(setup, capsys, monkeypatch):
    root, model, ids = setup
    from megatron_masklm.evaluation import perplexity as evaluate

    def with_bos(*args):  # the NullTokenizer has no BOS: give it one
        tokenizer = plain(*args)
        tokenizer.bos = VOCAB - 1
        return tokenizer

    plain = evaluate._tokenizer
    monkeypatch.setattr(evaluate, "_tokenizer", with_bos)
    code, result = _eval("--hf-dir", root / "hf", "--text", root / "text.txt", "--tokenizer-type",
                         "NullTokenizer", "--seq-length", 20, "--bos", capsys=capsys)
    assert code == 0, result
    total, count = reference_nll(model, ids, max_length=20, stride=19, bos_id=VOCAB - 1)
    assert result["scored_tokens"] == count == (TOKENS // 19) * 19
    assert result["nll"] == pytest.approx(total / count, rel=1e-6)


def _random_2_4_masks(model, seed):
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, param in model.named_parameters():
        if name.startswith("model.layers.") and name.endswith("proj.weight"):
            scores = torch.rand(param.shape, generator=gen).reshape(param.shape[0], -1, 4)
            keep = torch.zeros_like(scores, dtype=torch.bool)
            keep.scatter_(-1, scores.topk(2, dim=-1).indices, True)
            masks[name] = keep.reshape(param.shape)
    return masks


def test_hf_directory_with_a_mask_file(setup, capsys, tmp_path):
    from megatron_masklm.masking import save_masks_npz
    from megatron_masklm.masking.files import save_masks_compact

    root, model, ids = setup
    masks = _random_2_4_masks(model, seed=4)
    save_masks_npz(str(tmp_path / "m.npz"), masks)
    save_masks_compact(str(tmp_path / "m.idx.npz"), masks, n=2, m=4)
    masked = transformers.LlamaForCausalLM.from_pretrained(root / "hf").eval()
    with torch.no_grad():
        for name, param in masked.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    total, count = reference_nll(masked, ids, max_length=32, stride=32)
    for path in ("m.npz", "m.idx.npz"):
        code, result = _eval("--hf-dir", root / "hf", "--masks", tmp_path / path, "--text",
                             root / "text.txt", "--tokenizer-type", "NullTokenizer",
                             "--seq-length", 32, capsys=capsys)
        assert code == 0, result
        assert result["nll"] == pytest.approx(total / count, rel=1e-6), path
    # a mask file that misses a layer, or one that is not 2:4, is refused
    del masks["model.layers.1.mlp.up_proj.weight"]
    save_masks_npz(str(tmp_path / "partial.npz"), masks)
    code, err = _eval("--hf-dir", root / "hf", "--masks", tmp_path / "partial.npz", "--text",
                      root / "text.txt", "--tokenizer-type", "NullTokenizer", capsys=capsys)
    assert code == 1 and "no mask for ['model.layers.1.mlp.up_proj.weight']" in err
    masks["model.layers.1.mlp.up_proj.weight"] = torch.ones(96, 64, dtype=torch.bool)
    save_masks_npz(str(tmp_path / "dense.npz"), masks)
    code, err = _eval("--hf-dir", root / "hf", "--masks", tmp_path / "dense.npz", "--text",
                      root / "text.txt", "--tokenizer-type", "NullTokenizer", capsys=capsys)
    assert code == 1 and "is not exactly 2:4" in err


def test_megatron_checkpoint_equals_transformers(setup, capsys, tmp_path):
    from megatron_masklm.convert import convert_hf_to_megatron

    root, model, ids = setup
    convert_hf_to_megatron(str(root / "hf"), str(tmp_path / "mg"), dtype="float32",
                           make_vocab_size_divisible_by=128, progress=False)
    assert json.load(open(tmp_path / "mg" / "model_shape.json"))["vocab_size"] == 128  # padded
    out = tmp_path / "ppl.json"
    code, result = _eval("--load", tmp_path / "mg", "--text", root / "text.txt",
                         "--tokenizer-type", "NullTokenizer", "--seq-length", 32, "--stride", 20,
                         "--output", out, capsys=capsys)
    assert code == 0, result
    total, count = reference_nll(model, ids, max_length=32, stride=20)
    assert result["scored_tokens"] == count
    assert result["nll"] == pytest.approx(total / count, rel=1e-5)
    assert json.load(open(out)) == result
    assert result["pattern"] is None and result["exact_nm"] is None


def test_indexed_dataset_equals_the_same_tokens_as_text(setup, capsys, tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    root, _, ids = setup
    prefix = str(tmp_path / "ids_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for piece in (ids[:50], ids[50:120], ids[120:]):  # documents are concatenated in order
        builder.add_item(torch.tensor(piece))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    common = ["--hf-dir", root / "hf", "--tokenizer-type", "NullTokenizer", "--seq-length", 32]
    code, from_text = _eval(*common, "--text", root / "text.txt", capsys=capsys)
    code2, from_data = _eval(*common, "--data-path", prefix, capsys=capsys)
    assert code == code2 == 0
    assert from_data["nll"] == from_text["nll"] and from_data["windows"] == 6


@pytest.mark.parametrize("argv, match", [
    (["--text", "T"], "exactly one of --load"),
    (["--hf-dir", "H", "--load", "L", "--text", "T"], "exactly one of --load"),
    (["--hf-dir", "H"], "exactly one of --text"),
    (["--hf-dir", "H", "--text", "MISSING"], "does not exist"),
    (["--hf-dir", "H", "--text", "SHORT", "--seq-length", "64"], "no full window"),
    (["--hf-dir", "H", "--text", "T", "--bos"], "no BOS"),
    (["--hf-dir", "H", "--data-path", "BIG"], "outside the model's vocabulary of 100"),
    (["--load", "H", "--text", "T"], "is not a Megatron checkpoint"),
    (["--hf-dir", "H", "--text", "T", "--masks", "MISSING"], "does not exist"),
])
def test_bad_input_exits_1_with_a_message(setup, capsys, tmp_path, argv, match):
    root = setup[0]
    (tmp_path / "short.txt").write_text("1 2 3")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(tmp_path / "big.bin"), dtype=np.int32)
    builder.add_item(torch.tensor([5, 150] * 40))  # another tokenizer's ids
    builder.end_document()
    builder.finalize(str(tmp_path / "big.idx"))
    paths = {"H": root / "hf", "T": root / "text.txt", "L": root / "hf",
             "MISSING": tmp_path / "missing", "SHORT": tmp_path / "short.txt",
             "BIG": tmp_path / "big"}
    argv = [str(paths.get(a, a)) for a in argv] + ["--tokenizer-type", "NullTokenizer",
                                                   "--output", str(tmp_path / "out.json")]
    code, err = _eval(*argv, capsys=capsys)
    assert code == 1 and match in err, err
    assert not os.path.exists(tmp_path / "out.json")
