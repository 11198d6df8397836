"""HF <-> Megatron conversion in one process: bit-identical round trips, logits equal to
transformers' LlamaForCausalLM, and clear errors that leave nothing behind."""
import json
import shutil
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")  # an install extra ([hf], [test]) in CI
from safetensors.torch import load_file, save_file  # noqa: E402

from hf_utils import tiny_llama  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def megatron_logits(checkpoint_dir, tokens):
    """Logits of the converted checkpoint loaded into a Megatron GPTModel (world of one)."""
    from megatron.core import dist_checkpointing

    from megatron_masklm.convert.output import megatron_world_of_one

    shape = json.load(open(os.path.join(checkpoint_dir, "model_shape.json")))
    with megatron_world_of_one() as (mcore, _):
        shape = mcore.ModelShape(**shape)
        model = mcore.build_dense_gpt_model(shape, config=mcore.build_transformer_config(shape))
        state = dist_checkpointing.load(model.sharded_state_dict(), os.path.join(checkpoint_dir, "release"))
        model.load_state_dict(state, strict=True)
        model.eval()
        positions = torch.arange(tokens.shape[1]).expand_as(tokens)
        with torch.no_grad():
            return model(tokens, positions, None)


def _leftovers(parent):
    return sorted(name for name in os.listdir(parent) if ".tmp-" in name)


@pytest.mark.parametrize("variant", [
    dict(), dict(tied=True), dict(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 8192})])
def test_round_trip_is_bit_identical_and_logits_match(tmp_path, variant):
    from megatron_masklm.convert import convert_hf_to_megatron, convert_megatron_to_hf

    hf_dir, mg_dir, back = tmp_path / "hf", tmp_path / "mg", tmp_path / "back"
    reference = tiny_llama(hf_dir, **variant)
    convert_hf_to_megatron(str(hf_dir), str(mg_dir), tensor_model_parallel_size=2,
                           dtype="float32", make_vocab_size_divisible_by=16, progress=False)
    assert json.load(open(mg_dir / "model_shape.json"))["vocab_size"] == 128  # padded for TP 2
    assert (mg_dir / "tokenizer" / "tokenizer.json").exists()
    convert_megatron_to_hf(str(mg_dir), str(back))
    original, returned = load_file(hf_dir / "model.safetensors"), load_file(back / "model.safetensors")
    assert sorted(original) == sorted(returned)
    for name in original:
        assert torch.equal(original[name], returned[name]), name
    assert (back / "tokenizer.json").read_text() == '{"fake": "tokenizer"}'

    tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(tokens).logits
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(back).eval()(tokens).logits
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=0)
    ours = megatron_logits(str(mg_dir), tokens)[..., :100]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def _source_state(hf_dir):
    return load_file(hf_dir / "model.safetensors")


@pytest.mark.parametrize("breakage, message", [
    ("architecture", "architecture 'GPT2LMHeadModel'"),
    ("activation", "hidden_act='gelu'"),
    ("missing", "missing 1 tensors the config needs, e.g. ['model.layers.1.mlp.up_proj.weight']"),
    ("shape", "do not match config.json"),
    ("truncated", "truncated, corrupt or not a checkpoint"),
    ("extra", "q_proj.bias"),
])
def test_bad_checkpoints_are_refused_without_output(tmp_path, breakage, message):
    from megatron_masklm.convert import convert_hf_to_megatron

    hf_dir = tmp_path / "hf"
    tiny_llama(hf_dir)
    config = json.load(open(hf_dir / "config.json"))
    weights = hf_dir / "model.safetensors"
    if breakage == "architecture":
        config["architectures"] = ["GPT2LMHeadModel"]
    elif breakage == "activation":
        config["hidden_act"] = "gelu"
    elif breakage == "shape":
        config["intermediate_size"] = 128
    elif breakage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif breakage in ("missing", "extra"):
        state = _source_state(hf_dir)
        if breakage == "missing":
            del state["model.layers.1.mlp.up_proj.weight"]
        else:
            state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
        save_file(state, weights, metadata={"format": "pt"})
    json.dump(config, open(hf_dir / "config.json", "w"))
    with pytest.raises(ValueError) as error:
        convert_hf_to_megatron(str(hf_dir), str(tmp_path / "out"), progress=False)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_target_sizes_are_checked_and_existing_output_kept(tmp_path):
    from megatron_masklm.convert import convert_hf_to_megatron

    hf_dir = tmp_path / "hf"
    tiny_llama(hf_dir)
    with pytest.raises(ValueError, match="num_query_groups 2 is not divisible by tensor-parallel size 4"):
        convert_hf_to_megatron(str(hf_dir), str(tmp_path / "out"), tensor_model_parallel_size=4,
                               progress=False)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="exists"):
        convert_hf_to_megatron(str(hf_dir), str(tmp_path / "taken"), progress=False)


def test_qkv_fusion_matches_an_independent_per_head_layout():
    from megatron_masklm.convert import fuse_qkv, split_qkv
    from megatron_masklm.mcore.model import ModelShape

    shape = ModelShape(num_layers=1, hidden_size=24, ffn_hidden_size=8, num_attention_heads=6,
                       num_query_groups=2, vocab_size=8)
    head_dim, per_group = 4, 3
    q, k, v = torch.randn(24, 24), torch.randn(8, 24), torch.randn(8, 24)
    rows = []  # Megatron: for each query group g, its query heads, then k_g, then v_g
    for g in range(2):
        for h in range(g * per_group, (g + 1) * per_group):
            rows.append(q[h * head_dim:(h + 1) * head_dim])
        rows += [k[g * head_dim:(g + 1) * head_dim], v[g * head_dim:(g + 1) * head_dim]]
    expected = torch.cat(rows)
    assert torch.equal(fuse_qkv(q, k, v, shape=shape), expected)
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(expected, shape=shape), (q, k, v)))


def test_cli_exit_codes(tmp_path):
    hf_dir = tmp_path / "hf"
    tiny_llama(hf_dir)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = [sys.executable, os.path.join(ROOT, "tools", "convert_hf_to_megatron.py"),
           "--load-dir", str(hf_dir), "--save-dir", str(tmp_path / "mg"), "--no-progress"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 1 and "error:" in proc.stderr and "exists" in proc.stderr
    back = [sys.executable, os.path.join(ROOT, "tools", "convert_megatron_to_hf.py"),
            "--load-dir", str(tmp_path / "mg"), "--save-dir", str(tmp_path / "back"),
            "--apply-masks"]
    proc = subprocess.run(back, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 1 and "no mask logits" in proc.stderr
    assert not (tmp_path / "back").exists()


def test_bf16_export_and_tokenizer_files(tmp_path):
    from megatron_masklm.convert import convert_hf_to_megatron, convert_megatron_to_hf

    hf_dir = tmp_path / "hf"
    tiny_llama(hf_dir, tied=True)
    (hf_dir / "chat_template.jinja").write_text("{{ messages }}")
    convert_hf_to_megatron(str(hf_dir), str(tmp_path / "mg"), progress=False)
    convert_megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "back"), dtype=torch.bfloat16)
    state = load_file(tmp_path / "back" / "model.safetensors")
    assert {t.dtype for t in state.values()} == {torch.bfloat16}  # norms too
    source = load_file(hf_dir / "model.safetensors")
    assert all(torch.equal(state[k], source[k].to(torch.bfloat16)) for k in source)
    config = json.load(open(tmp_path / "back" / "config.json"))
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    assert not any(key.startswith("_") for key in config)
    assert (tmp_path / "back" / "chat_template.jinja").read_text() == "{{ messages }}"


def test_export_reads_local_layer_names_on_a_machine_with_transformer_engine(tmp_path, monkeypatch):
    """Where TE would be picked (a GPU with TE: stood in for by the auto choice saying yes),
    export still builds the local spec, whose names the HF name map knows; evaluation may use
    TE. On CPU, building the TE spec would fail, so a wrong choice cannot pass unnoticed."""
    from megatron_masklm import mcore
    from megatron_masklm.convert import convert_hf_to_megatron, convert_megatron_to_hf

    hf_dir = tmp_path / "hf"
    tiny_llama(hf_dir)
    convert_hf_to_megatron(str(hf_dir), str(tmp_path / "mg"), progress=False)
    for owner in (mcore, mcore.model):
        monkeypatch.setattr(owner, "use_transformer_engine", lambda impl: True)
    convert_megatron_to_hf(str(tmp_path / "mg"), str(tmp_path / "back"))
    state, source = load_file(tmp_path / "back" / "model.safetensors"), load_file(hf_dir / "model.safetensors")
    assert state.keys() == source.keys() and all(torch.equal(state[k], source[k]) for k in source)


@pytest.mark.parametrize("short_at", ["start", "writing"])
def test_too_little_free_space_is_refused(tmp_path, monkeypatch, short_at):
    """Twice the model free is needed up front (scratch plus checkpoint), and the model's size
    again when the checkpoint writer starts (the GLU halves' own scratch files came on top)."""
    import errno

    from megatron_masklm.convert import convert_hf_to_megatron, hf_to_megatron

    hf_dir = tmp_path / "hf"
    tiny_llama(hf_dir)
    real, calls = shutil.disk_usage, []

    def disk_usage(path):
        calls.append(path)
        full = short_at == "start" or len(calls) > 1
        return real(path)._replace(free=100_000) if full else real(path)

    monkeypatch.setattr(hf_to_megatron.shutil, "disk_usage", disk_usage)
    with pytest.raises(OSError) as error:
        convert_hf_to_megatron(str(hf_dir), str(tmp_path / "out"), dtype="float32", progress=False)
    assert error.value.errno == errno.ENOSPC
    # the padded model in fp32: 4 x (2 x 128 x 64 + 64 + 2 x (2 x 64 + 64 x 128 + 64 x 64
    # + 2 x 96 x 64 + 64 x 96)) bytes, 0.3 MiB
    model = 4 * (2 * 128 * 64 + 64 + 2 * (2 * 64 + 64 * 128 + 64 * 64 + 2 * 96 * 64 + 64 * 96))
    needed, purpose = {"start": (2 * model, "converting"),
                       "writing": (model, "writing the checkpoint")}[short_at]
    assert str(error.value).startswith(f"[Errno 28] {purpose}")
    assert f"needs about {needed / 2**20:.1f} MiB" in str(error.value)
    assert "but 0.1 MiB is free" in str(error.value) and "--save-dir" in str(error.value)
    assert len(calls) == {"start": 1, "writing": 2}[short_at]
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


_BYPASS_SPACE_CHECK = """
import sys
sys.path.insert(0, {tools!r})
import convert_hf_to_megatron as cli
from megatron_masklm.convert import hf_to_megatron
hf_to_megatron._require_free_space = lambda *args: None  # as if the disk filled after the checks
if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
"""


def _on_a_small_filesystem(tmp_path, command, size="64k"):
    """Run ``command`` (a shell string) with ``tmp_path / 'small'`` a tmpfs of ``size`` bytes,
    mounted in a private mount namespace (gone with the process); then list what it left there."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare to mount a small filesystem")
    small = tmp_path / "small"
    small.mkdir()
    script = f"mount -t tmpfs -o size={size} tmpfs {small} || exit 99; {command}; rc=$?; " \
             f"echo LEFT: $(ls -A {small}); exit $rc"
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                          text=True, timeout=180, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode == 99 or "unshare failed" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here (needs root or user namespaces): {proc.stderr[-300:]}")
    return proc, small


@pytest.mark.parametrize("space_check", ["on", "bypassed"])
def test_a_full_filesystem_is_a_clear_error_not_a_bus_error(tmp_path, space_check):
    """A 64 KiB filesystem cannot hold the tiny model's 300 KiB of scratch files. The check up
    front refuses; without it, the scratch files' blocks are reserved before they are mapped, so
    the disk filling up mid-way is ENOSPC with a message (writing into a sparse shared mapping
    of a full filesystem killed the process with SIGBUS and left the temporary output behind)."""
    hf_dir = tmp_path / "hf"
    tiny_llama(hf_dir)
    tools = os.path.join(ROOT, "tools")
    if space_check == "on":
        program = [os.path.join(tools, "convert_hf_to_megatron.py")]
    else:
        (tmp_path / "bypass.py").write_text(_BYPASS_SPACE_CHECK.format(tools=tools))
        program = [str(tmp_path / "bypass.py")]
    args = " ".join(program + ["--load-dir", str(hf_dir), "--save-dir", str(tmp_path / "small" / "mg"),
                               "--dtype", "float32", "--no-progress"])
    proc, _ = _on_a_small_filesystem(tmp_path, f"{sys.executable} {args}")
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    expected = "MiB is free" if space_check == "on" else "No space left on device"
    assert expected in proc.stderr and "pick a --save-dir on another filesystem" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.strip().endswith("LEFT:"), proc.stdout  # nothing left on the small disk


def test_conversion_without_posix_fallocate(tmp_path, monkeypatch):
    """macOS has no os.posix_fallocate: the scratch files are then left sparse, as torch makes
    them, and the conversion is the same."""
    from megatron_masklm.convert import convert_hf_to_megatron

    hf_dir = tmp_path / "hf"
    reference = tiny_llama(hf_dir)
    monkeypatch.delattr(os, "posix_fallocate")
    convert_hf_to_megatron(str(hf_dir), str(tmp_path / "mg"), dtype="float32", progress=False)
    tokens = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(tokens).logits
    torch.testing.assert_close(megatron_logits(str(tmp_path / "mg"), tokens)[..., :100], expected,
                               rtol=1e-5, atol=1e-5)
