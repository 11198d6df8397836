"""The example configs and launch scripts: configs give the paper's shapes and recipe, scripts
fail fast on a missing variable and build the launch command the cluster needs (stub srun)."""
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from megatron_masklm.training.arguments import load_yaml_options, run_config_from_options

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CONFIGS = sorted((EXAMPLES / "configs").glob("*.yaml"))
SCRIPTS = sorted([*EXAMPLES.glob("*.sh"), *EXAMPLES.glob("*.sbatch")])
SBATCH = EXAMPLES / "slurm_8x8_a100.sbatch"

# Independent reference: LLaMA-2 shapes (Touvron et al. 2023, HF config.json) and SPEC section 3.
LLAMA2_SHAPES = {
    "llama2_7b": dict(num_layers=32, hidden_size=4096, ffn_hidden_size=11008,
                      num_attention_heads=32, num_query_groups=32),
    "llama2_13b": dict(num_layers=40, hidden_size=5120, ffn_hidden_size=13824,
                       num_attention_heads=40, num_query_groups=40),
}
LLAMA2_COMMON = dict(family="llama", vocab_size=32000, max_position_embeddings=4096,
                     rotary_base=10000.0, norm_eps=1e-5, tied_embeddings=False)
# Independent reference: the HF config.json of Qwen/Qwen2.5-7B, Qwen/Qwen3-8B,
# mistralai/Mistral-7B-v0.3 and google/gemma-3-270m.
FAMILY_SHAPES = {
    "qwen2_5_7b": dict(family="qwen2", num_layers=28, hidden_size=3584, ffn_hidden_size=18944,
                       num_attention_heads=28, num_query_groups=4, kv_channels=128,
                       vocab_size=152064, max_position_embeddings=32768, rotary_base=1e6,
                       norm_eps=1e-6, tied_embeddings=False, add_qkv_bias=True,
                       qk_layernorm=False, tensor_model_parallel_size=4, sequence_parallel=True),
    "qwen3_8b": dict(family="qwen3", num_layers=36, hidden_size=4096, ffn_hidden_size=12288,
                     num_attention_heads=32, num_query_groups=8, kv_channels=128,
                     max_position_embeddings=40960, rotary_base=1e6, norm_eps=1e-6,
                     tied_embeddings=False, add_qkv_bias=False, qk_layernorm=True,
                     tensor_model_parallel_size=8, sequence_parallel=True),
    "mistral_7b": dict(family="mistral", num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
                       num_attention_heads=32, num_query_groups=8, kv_channels=128,
                       vocab_size=32768, max_position_embeddings=32768, rotary_base=1e6,
                       norm_eps=1e-5, tied_embeddings=False, tensor_model_parallel_size=8,
                       sequence_parallel=True),
    "gemma3_270m": dict(family="gemma3", num_layers=18, hidden_size=640, ffn_hidden_size=2048,
                        num_attention_heads=4, num_query_groups=1, kv_channels=256,
                        vocab_size=262144, max_position_embeddings=32768, window_size=512,
                        window_attn_skip_freq=6, rotary_base=1e6, rotary_base_local=1e4,
                        norm_eps=1e-6, tied_embeddings=True, qk_layernorm=True,
                        post_sublayer_norms=True, layernorm_zero_centered_gamma=True,
                        scale_embeddings=True, activation="gelu_tanh",
                        tensor_model_parallel_size=1, sequence_parallel=False),
}
RECIPE = dict(tensor_model_parallel_size=8, bf16=True, sequence_parallel=True,
              global_batch_size=256, micro_batch_size=1, seq_length=4096, train_iters=2000,
              n=2, m=4, lr=5e-4, min_lr=5e-5, lr_decay_style="cosine", lr_warmup_iters=0,
              weight_decay=0.1, clip_grad=1.0, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-5,
              temperature=(4.0, 0.05), logit_scale=(100.0, 500.0), prior_strength=3.0)


def _config(path: Path):
    options = load_yaml_options(str(path))
    if not options.get("mock_data"):
        options["data_path"] = ["corpus_text_document"]  # the launch scripts pass it
    return options, run_config_from_options(options)


def _flat(config) -> dict:
    flat = {}
    for section in config.to_dict().values():
        flat.update(section)
    return flat


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_is_a_valid_run_config(path):
    options, config = _config(path)
    assert config.model.vocab_size % config.parallel.tensor_model_parallel_size == 0
    assert not any(isinstance(v, str) and v.startswith(("/", "~")) for v in options.values()), \
        "paths belong in the launch scripts' environment variables"


def test_the_configs_that_exist():
    assert {p.stem for p in CONFIGS} >= {"llama2_7b", "llama2_13b", "qwen2_5_7b", "qwen3_8b",
                                         "mistral_7b", "gemma3_270m", "tiny_cpu"}


@pytest.mark.parametrize("name", sorted(FAMILY_SHAPES))
def test_family_configs_have_the_hf_shape_the_recipe_and_a_memory_preset(name):
    from megatron_masklm.training import memory

    _, config = _config(EXAMPLES / "configs" / f"{name}.yaml")
    flat = _flat(config)
    recipe = {k: v for k, v in RECIPE.items()
              if k not in ("tensor_model_parallel_size", "sequence_parallel")}
    for key, expected in {**FAMILY_SHAPES[name], **recipe}.items():
        assert flat[key] == pytest.approx(expected) if isinstance(expected, float) \
            else flat[key] == expected, (key, flat[key], expected)
    assert flat["tokenizer_type"] == "HuggingFaceTokenizer"
    preset = memory.PRESETS[name.replace("_5_", ".5_").replace("_", "-")]
    assert {k: getattr(preset, k) for k in FAMILY_SHAPES[name] if hasattr(preset, k)} == {
        k: flat[k] for k in FAMILY_SHAPES[name] if hasattr(preset, k)}


@pytest.mark.parametrize("name", sorted(LLAMA2_SHAPES))
def test_llama2_configs_have_the_model_shape_and_the_paper_recipe(name):
    _, config = _config(EXAMPLES / "configs" / f"{name}.yaml")
    flat = _flat(config)
    for key, expected in {**LLAMA2_SHAPES[name], **LLAMA2_COMMON, **RECIPE}.items():
        assert flat[key] == pytest.approx(expected) if isinstance(expected, float) \
            else flat[key] == expected, (key, flat[key], expected)
    assert flat["data_path"] == ["corpus_text_document"] and not flat["mock_data"]
    for path_option in ("load", "save", "pretrained_checkpoint", "prior_mask", "tokenizer_model"):
        assert flat[path_option] is None, f"{path_option} comes from the launch script"
    tokens = flat["train_iters"] * flat["global_batch_size"] * flat["seq_length"]
    assert tokens == 2000 * 256 * 4096  # ~2.1B tokens


def test_tiny_cpu_config():
    _, config = _config(EXAMPLES / "configs" / "tiny_cpu.yaml")
    flat = _flat(config)
    expected = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                    num_query_groups=2, vocab_size=256, max_position_embeddings=128,
                    seq_length=64, tensor_model_parallel_size=2, bf16=False, mock_data=True,
                    lr=5e-2, eval_interval=10, eval_iters=2)
    assert {k: flat[k] for k in expected} == expected
    assert 20 <= flat["train_iters"] <= 40


def test_yaml_keys_are_cli_options():
    from megatron_masklm.training.arguments import option_names

    for path in CONFIGS:
        unknown = set(load_yaml_options(str(path))) - set(option_names())
        assert not unknown, (path.name, unknown)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_are_strict(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n#")
    assert "set -euo pipefail" in text and '"$@"' in text
    assert os.stat(script).st_mode & stat.S_IXUSR


def _stubs(tmp_path: Path, **programs: str) -> Path:
    """A bin directory whose programs append their argv to <name>.args (and echo it to stderr)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, extra in programs.items():
        log = tmp_path / f"{name}.args"
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\necho "{name} $*" >&2\n{extra}\n')
        stub.chmod(0o755)
    return bin_dir


SLURM_ENV = dict(SLURM_JOB_ID="4242", SLURM_NNODES="8", SLURM_JOB_NODELIST="node[001-008]")


def _run(script, tmp_path, env, *args, cwd=None):
    bin_dir = _stubs(tmp_path, srun="", sbatch="", torchrun="",
                     scontrol='[ "$1" = show ] && echo node001 && echo node002')
    full_env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), **env}
    return subprocess.run(["bash", str(script), *args], env=full_env, cwd=cwd or tmp_path,
                          capture_output=True, text=True, timeout=60)


def _sbatch_env(tmp_path, **overrides):
    env = dict(SLURM_ENV, REPO_DIR=str(ROOT), DATA_PATH="0.7 /data/a_text_document 0.3 /data/b_text_document",
               PRETRAINED_CKPT="/ckpt/llama2-13b", RUN_DIR=str(tmp_path / "run"))
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


@pytest.mark.parametrize("missing", ["DATA_PATH", "RUN_DIR", "PRETRAINED_CKPT"])
def test_sbatch_fails_fast_naming_the_missing_variable(tmp_path, missing):
    proc = _run(SBATCH, tmp_path, _sbatch_env(tmp_path, **{missing: None}))
    assert proc.returncode != 0
    assert f"{missing} is not set" in proc.stderr
    assert not (tmp_path / "srun.args").exists()


def test_sbatch_builds_the_multinode_torchrun_command(tmp_path):
    env = _sbatch_env(tmp_path, PRIOR_MASK="/masks/sparsegpt.npz", TOKENIZER_MODEL="/tok/tokenizer.model")
    proc = _run(SBATCH, tmp_path, env, "examples/configs/llama2_13b.yaml", "--eval-interval", "50")
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "srun.args").read_text().split()
    run_dir = str(tmp_path / "run")
    torchrun = argv[argv.index("torchrun"):]
    pairs = {a: b for a, b in zip(torchrun, torchrun[1:])}
    assert pairs["--nnodes"] == "8" and pairs["--nproc_per_node"] == "8"
    assert pairs["--rdzv_backend"] == "c10d" and pairs["--rdzv_id"] == "4242"
    assert pairs["--rdzv_endpoint"].startswith("node001:")
    assert pairs["-m"] == "megatron_masklm.train"
    assert pairs["--config"] == str(ROOT / "examples/configs/llama2_13b.yaml")
    assert pairs["--load"] == run_dir and pairs["--save"] == run_dir and "--save-interval" in pairs
    assert pairs["--pretrained-checkpoint"] == "/ckpt/llama2-13b"
    assert pairs["--prior-mask"] == "/masks/sparsegpt.npz"
    assert pairs["--tokenizer-model"] == "/tok/tokenizer.model"
    data = torchrun[torchrun.index("--data-path") + 1:][:4]
    assert data == ["0.7", "/data/a_text_document", "0.3", "/data/b_text_document"]
    assert torchrun[-2:] == ["--eval-interval", "50"]  # extra arguments last, so they win
    assert "--exit-signal-handler" in torchrun  # before them: --no-exit-signal-handler wins
    assert "--container-image" not in argv
    assert os.path.isdir(run_dir)


def test_sbatch_defaults_to_7b_and_uses_pyxis_with_a_container(tmp_path):
    env = _sbatch_env(tmp_path, CONTAINER_IMAGE="nvcr.io/nvidia/pytorch:24.07-py3",
                      CONTAINER_MOUNTS="/lustre")
    proc = _run(SBATCH, tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "srun.args").read_text().split()
    pairs = {a: b for a, b in zip(argv, argv[1:])}
    assert pairs["--config"] == str(ROOT / "examples/configs/llama2_7b.yaml")
    assert pairs["--container-image"] == "nvcr.io/nvidia/pytorch:24.07-py3"
    assert "/lustre" in pairs["--container-mounts"].split(",")
    assert argv.index("--container-image") < argv.index("torchrun")
    assert "--prior-mask" not in argv and "--tokenizer-model" not in argv


def test_sbatch_header_requests_8_nodes_of_8_gpus_and_requeues():
    directives = [line.split()[1] for line in SBATCH.read_text().splitlines()
                  if line.startswith("#SBATCH")]
    for expected in ("--nodes=8", "--ntasks-per-node=1", "--gpus-per-node=8", "--exclusive",
                     "--requeue", "--open-mode=append", "--signal=USR1@300"):
        assert expected in directives
    assert any(d.startswith("--time=") for d in directives)
    assert any(d.startswith("--output=") for d in directives)


@pytest.mark.parametrize("env, nodes, per_node", [
    (dict(SLURM_GPUS_PER_NODE="a100:4", SLURM_NNODES="2"), "2", "4"),  # sbatch --gpus-per-node
    (dict(SLURM_GPUS_PER_NODE="0", SLURM_NNODES="1", GPUS_PER_NODE="2"), "1", "2"),  # CPU partition
])
def test_sbatch_takes_the_node_count_and_processes_per_node_from_slurm(tmp_path, env, nodes,
                                                                      per_node):
    proc = _run(SBATCH, tmp_path, _sbatch_env(tmp_path, **env))
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "srun.args").read_text().split()
    pairs = {a: b for a, b in zip(argv, argv[1:])}
    assert (pairs["--nodes"], pairs["--nnodes"], pairs["--nproc_per_node"]) == (nodes, nodes, per_node)


def test_sbatch_refuses_a_cpu_partition_without_gpus_per_node(tmp_path):
    proc = _run(SBATCH, tmp_path, _sbatch_env(tmp_path, SLURM_GPUS_PER_NODE="0"))
    assert proc.returncode != 0 and "export GPUS_PER_NODE=" in proc.stderr
    assert not (tmp_path / "srun.args").exists()


def test_torchrun_runs_with_sigusr1_ignored(tmp_path):
    """Slurm's warning signal reaches every process of the step: torchrun's agent must survive
    it (Python's default action kills it). An srun that runs its command, a torchrun that
    records its ignored-signal mask (/proc: the kernel's view, not the script's)."""
    bin_dir = _stubs(tmp_path, scontrol="echo node001", torchrun=(
        f'grep SigIgn /proc/$$/status > "{tmp_path}/sigign"'), srun=(
        'while [ "${1#-}" != "$1" ]; do case $1 in --nodes|--ntasks-per-node) shift 2;; '
        '*) shift;; esac; done; exec "$@"'))
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path),
           **_sbatch_env(tmp_path)}
    proc = subprocess.run(["bash", str(SBATCH)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ignored = int((tmp_path / "sigign").read_text().split()[1], 16)
    assert ignored >> (signal.SIGUSR1 - 1) & 1
    assert not ignored >> (signal.SIGTERM - 1) & 1  # torchrun forwards SIGTERM to its workers


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_model_wrappers_submit_the_sbatch_script_with_their_config(tmp_path, size):
    wrapper = EXAMPLES / f"llama2_{size}_slurm.sh"
    env = _sbatch_env(tmp_path)
    proc = _run(wrapper, tmp_path, env, "--train-iters", "100")
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "sbatch.args").read_text().split()
    script = argv.index("examples/slurm_8x8_a100.sbatch")
    assert argv[script + 1:] == [f"examples/configs/llama2_{size}.yaml", "--train-iters", "100"]

    proc = _run(wrapper, tmp_path, _sbatch_env(tmp_path, RUN_DIR=None))
    assert proc.returncode != 0 and "RUN_DIR is not set" in proc.stderr


def test_single_node_script(tmp_path):
    script = EXAMPLES / "single_node_8gpu.sh"
    proc = _run(script, tmp_path, {"RUN_DIR": "/runs/x"})
    assert proc.returncode != 0 and "DATA_PATH is not set" in proc.stderr
    proc = _run(script, tmp_path, {"DATA_PATH": "/data/c4_text_document"})
    assert proc.returncode != 0 and "RUN_DIR is not set" in proc.stderr

    proc = _run(script, tmp_path, {"RUN_DIR": "/runs/x"}, "--mock-data", "--train-iters", "5")
    assert proc.returncode == 0, proc.stderr
    argv = (tmp_path / "torchrun.args").read_text().split()
    pairs = {a: b for a, b in zip(argv, argv[1:])}
    assert argv[0] == "--standalone" and pairs["--nproc_per_node"] == "8"
    assert pairs["--config"] == "examples/configs/llama2_7b.yaml"
    assert pairs["--load"] == pairs["--save"] == "/runs/x"
    assert "--pretrained-checkpoint" not in argv and "--data-path" not in argv
    assert argv[-3:] == ["--mock-data", "--train-iters", "5"]
