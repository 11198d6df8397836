"""Hostile but realistic input to the tools (issue 27, "nothing silent, nothing lost"): every
case is exit status 1 (130 for Ctrl-C) with one line on stderr that names the bad value or path
and the fix, no traceback, and nothing written: no output, no temporary sibling, inputs intact.

Each tool runs in this process (its ``main``) unless the case needs a real process (a SIGINT).
The disk faults are real small filesystems (tests/diskfault.py).
"""
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from diskfault import read_only_disk, small_disk  # noqa: F401  (pytest fixtures)

pytest.importorskip("transformers")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")
sys.path.insert(0, os.path.join(ROOT, "tests", "dist"))
sys.path.insert(0, TOOLS)
from training_utils import cli_flags, make_token_dataset, tiny_options  # noqa: E402

SEQ = "16"
NULL = ("--tokenizer-type", "NullTokenizer")


def _main(tool: str):
    if tool == "train":
        from megatron_masklm.train import main
    else:
        main = __import__(tool).main
    return main


def run_tool(tool: str, *argv):
    """(exit status, stderr) of a tool's main in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = _main(tool)([str(a) for a in argv])
    return code, err.getvalue()


def assert_one_line_error(code, err, pattern, *, rc=1):
    """Exit status ``rc``, stderr one ``error:`` line matching ``pattern`` (progress bars aside)."""
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line
             and not line.startswith(("Loading weights", "Converting"))]
    assert code == rc, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


def tree(path):
    """{relative path: (size, mtime)} of everything under ``path`` (or of the file)."""
    path = str(path)
    if os.path.isfile(path):
        return {"": (os.path.getsize(path), os.stat(path).st_mtime_ns)}
    found = {}
    for base, _, files in os.walk(path):
        for name in files:
            full = os.path.join(base, name)
            found[os.path.relpath(full, path)] = (os.path.getsize(full), os.stat(full).st_mtime_ns)
    return found


def leftovers(directory):
    """Temporary siblings the atomic writers would leave behind."""
    return sorted(name for name in os.listdir(directory)
                  if ".tmp" in name or ".probe-" in name or ".old-" in name)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A 2-iteration tiny masked run (2 layers), its HF export, its HF-named masks, eval text."""
    root = tmp_path_factory.mktemp("bad_input")
    prefix = make_token_dataset(str(root))
    options = tiny_options(prefix, train_iters=2, log_interval=1, eval_iters=0)
    run = str(root / "run")
    code, err = run_tool("train", *cli_flags(options), "--save", run)
    assert code == 0, err
    hf, masks = str(root / "hf"), str(root / "masks.npz")
    assert run_tool("convert_megatron_to_hf", "--load-dir", run, "--save-dir", hf)[0] == 0
    assert run_tool("export_masks", "--load-dir", run, "--output", masks)[0] == 0
    (root / "eval.txt").write_text(" ".join(str((3 * i + 1) % 63) for i in range(200)))
    return {"root": root, "run": run, "hf": hf, "masks": masks, "text": str(root / "eval.txt"),
            "options": options}


def _copy(source, tmp_path, name="copy"):
    target = str(tmp_path / name)
    shutil.copytree(source, target)
    return target


# ----------------------------------------------------------------------------- case 1: overlap
def _overlap_cases(a, tmp_path):
    run, hf = _copy(a["run"], tmp_path, "run"), _copy(a["hf"], tmp_path, "hf")
    text = str(tmp_path / "eval.txt")
    shutil.copy(a["text"], text)
    corpus = tmp_path / "c_text_document.bin"  # an input the output prefix "c" would overwrite
    corpus.write_text("some text\n")
    return {
        "convert_megatron_to_hf same": (run, "convert_megatron_to_hf", "--load-dir", run,
                                        "--save-dir", run, "--overwrite"),
        "convert_megatron_to_hf inside": (run, "convert_megatron_to_hf", "--load-dir", run,
                                          "--save-dir", os.path.join(run, "iter_0000002"),
                                          "--overwrite"),
        "convert_megatron_to_hf around": (run, "convert_megatron_to_hf",
                                          "--load-dir", os.path.join(run, "iter_0000002"),
                                          "--save-dir", run, "--overwrite"),
        "convert_hf_to_megatron same": (hf, "convert_hf_to_megatron", "--load-dir", hf,
                                        "--save-dir", hf, "--overwrite", "--no-progress"),
        "apply_masks": (hf, "apply_masks", "--hf-dir", hf, "--masks", a["masks"],
                        "--output", hf, "--overwrite"),
        "export_masks": (run, "export_masks", "--load-dir", run,
                         "--output", os.path.join(run, "iter_0000002", "metadata.json"),
                         "--overwrite"),
        "prune_oneshot": (run, "prune_oneshot", "--load", run, "--method", "magnitude",
                          "--output-mask", os.path.join(run, "model_shape.json"),
                          "--overwrite", "--no-progress"),
        "eval_ppl": (text, "eval_ppl", "--hf-dir", hf, "--text", text, *NULL, "--seq-length",
                     SEQ, "--output", text),
        "preprocess_data": (str(corpus), "preprocess_data", "--input", corpus, "--output-prefix",
                            tmp_path / "c", "--tokenizer-type", "NullTokenizer", "--vocab-size",
                            "64", "--no-progress"),
    }


OVERLAP = ["convert_megatron_to_hf same", "convert_megatron_to_hf inside",
           "convert_megatron_to_hf around", "convert_hf_to_megatron same", "apply_masks",
           "export_masks", "prune_oneshot", "eval_ppl", "preprocess_data"]


@pytest.mark.parametrize("case", OVERLAP)
def test_an_output_that_overlaps_an_input_is_refused_before_anything_is_touched(
        assets, tmp_path, case):
    protected, tool, *argv = _overlap_cases(assets, tmp_path)[case]
    before = tree(protected)
    code, err = run_tool(tool, *argv)
    assert_one_line_error(code, err, r"overlaps --[a-z-]+ '.*': writing it would destroy the "
                                     r"input; choose an output path outside")
    assert tree(protected) == before
    assert leftovers(tmp_path) == [] and leftovers(os.path.dirname(protected)) == []


# ----------------------------------------------------------------------------- case 2
def test_eval_refuses_hf_weights_that_lack_a_tensor(assets, tmp_path):
    from safetensors.torch import load_file, save_file

    hf = _copy(assets["hf"], tmp_path, "hf")
    weights = os.path.join(hf, "model.safetensors")
    state = load_file(weights)
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    code, err = run_tool("eval_ppl", "--hf-dir", hf, "--text", assets["text"], *NULL,
                         "--seq-length", SEQ)
    assert_one_line_error(code, err, r"--hf-dir '.*hf' lack 1 tensors the config needs, e\.g\. "
                                     r"\['model\.layers\.1\.mlp\.down_proj\.weight'\].*incomplete")


@pytest.mark.parametrize("tool", ["eval_ppl", "prune_oneshot"])
def test_a_seq_length_beyond_the_models_positions_is_refused(assets, tmp_path, tool):
    out = tmp_path / "out"
    argv = {"eval_ppl": ("--hf-dir", assets["hf"], "--text", assets["text"], *NULL,
                         "--output", out),
            "prune_oneshot": ("--load", assets["run"], "--method", "wanda", "--calib-text",
                              assets["text"], *NULL, "--calib-samples", "1",
                              "--output-mask", out, "--no-progress")}[tool]
    code, err = run_tool(tool, *argv, "--seq-length", "65")
    assert_one_line_error(code, err, r"--seq-length 65 is beyond the model's "
                                     r"max_position_embeddings of 64: pass --seq-length 64 or less")
    assert not out.exists() and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- case 3
def _write_gguf(path):
    """A 1-layer LLaMA GGUF (f32) that transformers reads."""
    import gguf  # a test dependency (setup.py .[test]): a missing one fails, never skips
    writer = gguf.GGUFWriter(str(path), "llama")
    vocab, hidden, ffn, heads, groups = 64, 32, 48, 4, 2
    writer.add_context_length(32)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(groups)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"t{i}".encode() for i in range(vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([1] * vocab)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    kv = hidden // heads * groups
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,),
              "output.weight": (vocab, hidden), "blk.0.attn_norm.weight": (hidden,),
              "blk.0.attn_q.weight": (hidden, hidden), "blk.0.attn_k.weight": (kv, hidden),
              "blk.0.attn_v.weight": (kv, hidden), "blk.0.attn_output.weight": (hidden, hidden),
              "blk.0.ffn_norm.weight": (hidden,), "blk.0.ffn_gate.weight": (ffn, hidden),
              "blk.0.ffn_up.weight": (ffn, hidden), "blk.0.ffn_down.weight": (hidden, ffn)}
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_cut_short_mid_tensor_is_named(tmp_path):
    from megatron_masklm.convert.sources import HFCheckpoint

    whole, cut = tmp_path / "whole.gguf", tmp_path / "cut.gguf"
    _write_gguf(whole)
    assert len(HFCheckpoint(str(whole)).names()) == 12  # the uncut file reads
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) - 3000])  # the last tensor (ffn_down) loses most of its data
    code, err = run_tool("convert_hf_to_megatron", "--load-dir", cut, "--save-dir",
                         tmp_path / "mg", "--no-progress")
    assert_one_line_error(code, err, rf"cannot read '{re.escape(str(cut))}' \(ValueError: "
                                     r"cannot reshape .*\): the file is truncated, corrupt")
    assert not (tmp_path / "mg").exists() and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- case 4
def _fill(directory, keep_free=1024):
    """Fill the small disk but ``keep_free`` bytes (so that even a mask file does not fit)."""
    stat = os.statvfs(directory)
    with open(os.path.join(directory, "filler"), "wb") as handle:
        handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - keep_free))


@pytest.mark.parametrize("tool", ["convert_megatron_to_hf", "convert_hf_to_megatron",
                                  "apply_masks", "export_masks"])
def test_a_disk_that_fills_up_mid_write_is_one_line_and_leaves_nothing(assets, small_disk, tool):
    out = os.path.join(small_disk, "out")
    argv = {"convert_megatron_to_hf": ("--load-dir", assets["run"], "--save-dir", out),
            "convert_hf_to_megatron": ("--load-dir", assets["hf"], "--save-dir", out,
                                       "--no-progress"),
            "apply_masks": ("--hf-dir", assets["hf"], "--masks", assets["masks"], "--output", out),
            "export_masks": ("--load-dir", assets["run"], "--output", out + ".npz")}[tool]
    if tool == "export_masks":
        _fill(small_disk)
    code, err = run_tool(tool, *argv)
    assert_one_line_error(code, err, rf"^error: no space left on device \({re.escape(out)}"
                                     r"(\.npz|/model\.safetensors)?\): .*(free space|free)")
    assert sorted(os.listdir(small_disk)) == (["filler"] if tool == "export_masks" else [])


# ----------------------------------------------------------------------------- case 5
@pytest.mark.parametrize("tool", ["convert_megatron_to_hf", "export_masks", "eval_ppl",
                                  "prune_oneshot", "apply_masks"])
def test_a_read_only_output_directory_is_one_line_before_the_work(assets, read_only_disk,
                                                                  monkeypatch, tool):
    from megatron_masklm import checkpoints
    from megatron_masklm.convert import masks, megatron_to_hf
    from megatron_masklm.evaluation import perplexity
    from megatron_masklm.hf import masks as hf_masks

    def no_work(*args, **kwargs):
        raise AssertionError("the tool did its work before finding out it cannot write")

    for owner, name in ((perplexity, "hf_logits_fn"), (checkpoints, "resolve_checkpoint"),
                        (megatron_to_hf, "load_megatron_checkpoint"),
                        (masks, "load_megatron_checkpoint"), (hf_masks, "tensor_shapes")):
        monkeypatch.setattr(owner, name, no_work)
    out = os.path.join(read_only_disk, "out")
    argv = {"convert_megatron_to_hf": ("--load-dir", assets["run"], "--save-dir", out),
            "export_masks": ("--load-dir", assets["run"], "--output", out),
            "eval_ppl": ("--hf-dir", assets["hf"], "--text", assets["text"], *NULL,
                         "--seq-length", SEQ, "--output", out),
            "prune_oneshot": ("--load", assets["run"], "--method", "magnitude",
                              "--output-mask", out, "--no-progress"),
            "apply_masks": ("--hf-dir", assets["hf"], "--masks", assets["masks"],
                            "--output", out)}[tool]
    code, err = run_tool(tool, *argv)
    assert_one_line_error(code, err, rf"^error: read-only file system \({re.escape(out)}\): "
                                     r"write the output to a writable directory$")


def test_an_output_file_in_a_missing_directory_is_refused_before_the_work(assets, tmp_path,
                                                                          monkeypatch):
    from megatron_masklm.evaluation import perplexity

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(perplexity, "hf_logits_fn", no_work)
    out = str(tmp_path / "missing" / "ppl.json")
    code, err = run_tool("eval_ppl", "--hf-dir", assets["hf"], "--text", assets["text"], *NULL,
                         "--seq-length", SEQ, "--output", out)
    assert_one_line_error(code, err, rf"^error: no such file or directory \({re.escape(out)}\): "
                                     r"its directory does not exist: create it first")


# ----------------------------------------------------------------------------- case 6
@pytest.mark.parametrize("tool", ["export_masks", "convert_megatron_to_hf", "eval_ppl"])
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_missing_or_cut_common_pt_is_named(assets, tmp_path, tool, damage):
    run = _copy(assets["run"], tmp_path, "run")
    checkpoint = os.path.join(run, "iter_0000002")
    common = os.path.join(checkpoint, "common.pt")
    if not os.path.exists(common):  # megatron-core 0.19 keeps the common state in the shards
        from megatron_masklm.mcore import compat

        assert not compat.common_state_file_required()
        pytest.skip("this megatron-core writes no common.pt: the damaged-shard checks cover it")
    if damage == "missing":
        os.remove(common)
        pattern = "is incomplete: its common.pt is missing"
    else:
        data = open(common, "rb").read()
        open(common, "wb").write(data[:len(data) // 2])
        pattern = r"is damaged: its common.pt cannot be read \(.*\): it is truncated or corrupt"
    out = str(tmp_path / "out")
    argv = {"export_masks": ("--load-dir", run, "--output", out),
            "convert_megatron_to_hf": ("--load-dir", run, "--save-dir", out),
            "eval_ppl": ("--load", run, "--text", assets["text"], *NULL, "--seq-length", SEQ,
                         "--output", out)}[tool]
    code, err = run_tool(tool, *argv)
    assert_one_line_error(code, err, rf"checkpoint '{re.escape(checkpoint)}' {pattern}")
    assert not os.path.exists(out) and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- case 7
def test_export_masks_will_not_replace_a_directory_with_a_file(assets, tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_tool("export_masks", "--load-dir", assets["run"], "--output", out,
                         "--overwrite")
    assert_one_line_error(code, err, rf"--output '{re.escape(str(out))}' is a directory: name the "
                                     r"mask file to write, e\.g\. '.*masks\.npz'")
    assert (out / "keep.txt").read_text() == "mine" and os.listdir(out) == ["keep.txt"]


# ----------------------------------------------------------------------------- case 8
@pytest.mark.parametrize("flag, value, message", [
    ("num_layers", 3, r"has 2 layers but the model has 3: drop --num-layers or set it to 2, or "
                      r"pick the matching checkpoint$"),
    ("ffn_hidden_size", 96, r"does not match this model's shape: 'decoder\.layers\.mlp\.linear_fc2"
                            r"\.weight' is \[2, 64, 128\] in the checkpoint but \[2, 64, 96\] in "
                            r"the model \(\d+ tensors differ\): fix the shape flags \(--hidden-size, "
                            r"--ffn-hidden-size"),
])
def test_a_pretrained_checkpoint_of_another_shape_is_refused_by_name(assets, tmp_path, flag,
                                                                     value, message):
    options = {**assets["options"], flag: value, "train_iters": 3}
    out = tmp_path / "run3"
    code, err = run_tool("train", *cli_flags(options), "--pretrained-checkpoint", assets["run"],
                         "--save", out)
    assert_one_line_error(code, err, r"pretrained checkpoint '.*iter_0000002' " + message)
    assert not os.path.exists(out / "iter_0000001")


def test_a_model_shape_json_that_disagrees_with_the_tensors_is_named(assets, tmp_path):
    run = _copy(assets["run"], tmp_path, "run")
    shape_file = os.path.join(run, "model_shape.json")
    shape = json.load(open(shape_file))
    json.dump({**shape, "num_layers": 3}, open(shape_file, "w"))
    code, err = run_tool("convert_megatron_to_hf", "--load-dir", run, "--save-dir",
                         tmp_path / "hf")
    assert_one_line_error(code, err, r"checkpoint '.*iter_0000002' has 2 layers but the model has "
                                     r"3: its model_shape\.json does not describe its tensors")
    assert not (tmp_path / "hf").exists() and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- case 9
def test_a_tensor_parallel_size_of_zero_names_the_flag(assets, tmp_path):
    code, err = run_tool("convert_hf_to_megatron", "--load-dir", assets["hf"], "--save-dir",
                         tmp_path / "mg", "--target-tensor-parallel-size", "0", "--no-progress")
    assert_one_line_error(code, err, r"--target-tensor-parallel-size 0 is out of range: it must "
                                     r"be >= 1 and divide the attention heads and query groups")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- case 10
def test_verify_fails_for_a_mask_file_that_lacks_a_weight(assets, tmp_path):
    partial = str(tmp_path / "partial.npz")
    with np.load(assets["masks"]) as source:
        entries = {key: source[key] for key in source.files}
    dropped = "model.layers.1.mlp.down_proj.weight"
    del entries[[key for key in entries if key.startswith(dropped)][0]]
    np.savez(partial, **entries)
    code, err = run_tool("verify_nm", partial, "--hf-dir", assets["hf"])
    assert_one_line_error(code, err, rf"mask file '.*partial\.npz' has no mask for "
                                     rf"\['{re.escape(dropped)}'\] \(1 masked weights .*"
                                     r"pass --allow-missing")
    assert run_tool("verify_nm", partial, "--hf-dir", assets["hf"], "--allow-missing")[0] == 0
    assert run_tool("verify_nm", assets["masks"], "--hf-dir", assets["hf"])[0] == 0


# ----------------------------------------------------------------------------- case 11
@pytest.mark.parametrize("second", ["--hf-masks", "--save"])
def test_prune_refuses_two_outputs_on_one_path(assets, tmp_path, second):
    out = tmp_path / "x.npz"
    code, err = run_tool("prune_oneshot", "--load", assets["run"], "--method", "magnitude",
                         "--output-mask", out, second, out, "--no-progress")
    assert_one_line_error(code, err, rf"--output-mask '.*x\.npz' and {second} '.*x\.npz' are the "
                                     r"same path .*give each output its own path")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- case 12
def test_ctrl_c_inside_the_library_is_interrupted_rc_130_and_leaves_nothing(
        assets, tmp_path, monkeypatch):
    from megatron_masklm.convert import megatron_to_hf

    def interrupted(directory, tensors, **kwargs):
        open(os.path.join(directory, "model.safetensors"), "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(megatron_to_hf, "write_safetensors", interrupted)
    out = tmp_path / "hf"
    code, err = run_tool("convert_megatron_to_hf", "--load-dir", assets["run"], "--save-dir", out)
    assert code == 130 and err.strip() == "interrupted", err
    assert os.listdir(tmp_path) == []


_STALLING_EXPORT = """
import os, sys, time
sys.path.insert(0, {tools!r})
import convert_megatron_to_hf as cli
from megatron_masklm.convert import megatron_to_hf

def stalled(directory, tensors, **kwargs):  # half a shard written, then a long wait
    open(os.path.join(directory, "model.safetensors"), "wb").write(b"half")
    open({marker!r}, "w").close()
    time.sleep(120)

megatron_to_hf.write_safetensors = stalled
if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_real_sigint_mid_write_is_interrupted_rc_130_and_leaves_nothing(assets, tmp_path):
    marker, script, out = tmp_path / "writing", tmp_path / "stall.py", tmp_path / "out" / "hf"
    script.write_text(_STALLING_EXPORT.format(tools=TOOLS, marker=str(marker)))
    out.parent.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), "--load-dir", assets["run"],
                             "--save-dir", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():  # the tool is mid-write (its temp output holds half a shard)
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the tool never started writing"
            time.sleep(0.05)
        assert any(".tmp-" in name for name in os.listdir(out.parent))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err, err
    assert os.listdir(out.parent) == []


# ----------------------------------------------------------------------------- every tool
@pytest.mark.parametrize("tool", sorted(f[:-3] for f in os.listdir(TOOLS) if f.endswith(".py")))
def test_every_tool_runs_through_run_cli(tool):
    """Each front end (or the library main it hands over to) uses the one error path."""
    source = open(os.path.join(TOOLS, f"{tool}.py")).read()
    delegated = re.search(r"from (megatron_masklm[.\w]*) import main", source)
    if delegated and not re.search(r"\brun_cli\(", source):
        module = __import__(delegated.group(1), fromlist=["main"])
        source = open(module.__file__).read()
    assert re.search(r"\brun_cli\(", source), tool
