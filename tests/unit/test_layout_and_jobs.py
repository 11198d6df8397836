"""The shared structure: one checkpoint-layout module (no megatron import), the tools' jobs as
config objects, and modules that import nothing heavy until called."""
import json
import os
import subprocess
import sys

import pytest

from megatron_masklm import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_layout_resolves_pointers_release_and_bare_dist_checkpoints(tmp_path):
    run = tmp_path / "run"
    (run / "iter_0000020").mkdir(parents=True)
    (run / "iter_0000020" / "metadata.json").write_text("{}")
    (run / checkpoints.POINTER_FILE).write_text("20\n")
    assert checkpoints.latest_checkpoint(str(run)) == str(run / "iter_0000020")
    assert checkpoints.resolve_checkpoint(str(run)) == (str(run), str(run / "iter_0000020"))
    bare = run / "iter_0000020"
    assert checkpoints.resolve_checkpoint(str(bare)) == (str(run), str(bare))
    assert checkpoints.resolve_dense_checkpoint(str(run)) == str(bare)

    converted = tmp_path / "converted"
    (converted / "release").mkdir(parents=True)
    (converted / "release" / "metadata.json").write_text("{}")
    checkpoints.write_release_pointer(str(converted))
    assert checkpoints.latest_checkpoint(str(converted)) == str(converted / "release")
    (converted / checkpoints.MODEL_SHAPE_FILE).write_text(json.dumps(dict(
        family="qwen3", num_layers=1, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
        vocab_size=128)))
    (converted / checkpoints.TOKENIZER_DIR).mkdir()
    shape, pattern, hf_config, tokenizer = checkpoints.checkpoint_sources(
        *checkpoints.resolve_checkpoint(str(converted)))
    assert (shape.family, shape.qk_layernorm, pattern, hf_config) == ("qwen3", True, None, None)
    assert tokenizer == str(converted / "tokenizer")

    (run / checkpoints.POINTER_FILE).write_text("latest")
    with pytest.raises(ValueError, match="holds 'latest', not an iteration"):
        checkpoints.latest_checkpoint(str(run))
    with pytest.raises(ValueError, match="no latest_checkpointed_iteration.txt and no metadata"):
        checkpoints.resolve_checkpoint(str(tmp_path))
    (converted / checkpoints.MODEL_SHAPE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="cannot read .*model_shape.json"):
        checkpoints.read_model_shape(str(converted))


def test_layout_estimator_and_tool_modules_import_no_megatron():
    code = ("import sys; import megatron_masklm.checkpoints, megatron_masklm.architecture, "
            "megatron_masklm.training.memory, megatron_masklm.oneshot.checkpoint, "
            "megatron_masklm.evaluation.perplexity; "
            "print(sorted(m for m in sys.modules if m.startswith('megatron.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("module, job, front, argv", [
    ("megatron_masklm.oneshot.checkpoint", "PruneJob", "prune_oneshot",
     ["--load", "ckpt", "--method", "magnitude", "--output-mask", "m.npz"]),
    ("megatron_masklm.evaluation.perplexity", "EvalJob", "eval_ppl",
     ["--load", "ckpt", "--text", "t.txt"]),
])
def test_tool_jobs_are_config_objects_with_the_cli_defaults(module, job, front, argv):
    """Pruning and evaluation take a job dataclass from code; the CLI (``front``: a tools/ file)
    builds the same object, so every flag has a field and each field's default is the flag's
    default."""
    import dataclasses
    import importlib

    from script_modules import tool

    cls = getattr(importlib.import_module(module), job)
    cli = importlib.import_module(front) if "." in front else tool(front)
    parsed = vars(cli.build_parser().parse_args(argv))
    assert set(parsed) == {f.name for f in dataclasses.fields(cls)}
    built = cli.parse_job(argv)
    assert isinstance(built, cls) and dataclasses.asdict(built) == parsed
    given = {k: v for k, v in parsed.items() if k in {"load", "method", "output_mask", "text"}}
    assert dataclasses.asdict(cls(**given)) == parsed  # from code: the same defaults
