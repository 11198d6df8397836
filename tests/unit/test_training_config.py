"""The one config source: defaults are the paper's recipe, CLI > YAML > saved shape > defaults,
and every bad option is a clear error."""
import json
import math
import os

import pytest

from megatron_masklm.training.arguments import (build_parser, load_yaml_options, option_names,
                                                run_config_from_args, run_config_from_options)
from megatron_masklm.training.config import RunConfig

SHAPE = ["--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128",
         "--num-attention-heads", "4", "--vocab-size", "128", "--mock-data"]


def test_defaults_are_the_reference_recipe():
    config = run_config_from_args(SHAPE)
    # SPEC section 3, typed in by hand: AdamW (0.9, 0.95), eps 1e-5, wd 0.1, clip 1.0, logit LR
    # 5e-4 cosine to 5e-5 without warm-up, 2,000 steps x 256 x 4,096 tokens; SPEC section 2:
    # tau 4 -> 0.05, kappa 100 -> 500, lambda 1e-5 -> 0, alpha 3, init std 0.01, 2:4.
    o, t, m = config.optimizer, config.training, config.mask
    assert (o.adam_beta1, o.adam_beta2, o.adam_eps, o.weight_decay, o.clip_grad) == (0.9, 0.95, 1e-5, 0.1, 1.0)
    assert (o.lr, o.min_lr, o.lr_decay_style, o.lr_warmup_iters, o.mask_lr_mult) == (5e-4, 5e-5, "cosine", 0, 1.0)
    assert (t.train_iters, t.global_batch_size, t.seq_length) == (2000, 256, 4096)
    assert (m.n, m.m, m.temperature, m.logit_scale, m.reg_weight) == (2, 4, (4.0, 0.05), (100.0, 500.0), (1e-5, 0.0))
    assert (m.prior_strength, m.init_std, m.hard, m.train_weights) == (3.0, 0.01, False, False)
    assert config.parallel.use_distributed_optimizer


def test_megatron_flag_names_and_mask_options():
    config = run_config_from_args(SHAPE + [
        "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
        "--sequence-parallel", "--bf16", "--micro-batch-size", "2", "--global-batch-size", "64",
        "--seq-length", "512", "--train-iters", "30", "--lr", "1e-3", "--min-lr", "1e-4",
        "--lr-decay-style", "linear", "--weight-decay", "0.05", "--clip-grad", "0.5",
        "--adam-beta1", "0.8", "--adam-beta2", "0.9", "--adam-eps", "1e-6", "--seed", "5",
        "--pattern", "1:4", "--temperature", "2", "0.1", "--logit-scale", "50", "100",
        "--reg-weight", "0", "0", "--prior-strength", "5", "--mask-lr-mult", "10",
        "--hard-sampling", "--train-weights", "--norm-epsilon", "1e-6", "--model-family", "gpt",
        "--save", "/tmp/x", "--save-interval", "10", "--eval-interval", "5", "--eval-iters", "2",
        "--log-interval", "1", "--split", "98,2,0"])
    assert config.parallel.tensor_model_parallel_size == 2 and config.parallel.sequence_parallel
    assert config.parallel.bf16 and config.parallel.pipeline_model_parallel_size == 2
    assert (config.mask.n, config.mask.m, config.mask.temperature) == (1, 4, (2.0, 0.1))
    assert config.mask.logit_scale == (50.0, 100.0) and config.mask.reg_weight == (0.0, 0.0)
    assert config.mask.hard and config.mask.train_weights and config.mask.prior_strength == 5
    assert config.optimizer.mask_lr_mult == 10 and config.optimizer.lr_decay_style == "linear"
    assert config.model.family == "gpt" and config.model.norm_eps == 1e-6
    assert config.checkpoint.save == "/tmp/x" and config.logging.eval_iters == 2
    assert config.data.split == "98,2,0"


def test_yaml_then_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  num_layers: 3\n  hidden_size: 32\nffn-hidden-size: 64\n"
                    "num_attention_heads: 4\nvocab_size: 64\nmock_data: true\nlr: 0.01\n"
                    "pattern: '4:8'\ntemperature: [3, 0.5]\ndata_path: '0.3 a 0.7 b'\n"
                    "model_family: gpt\nnorm_epsilon: 1.0e-6\n")
    assert load_yaml_options(str(path))["ffn_hidden_size"] == 64
    config = run_config_from_args(["--config", str(path), "--lr", "0.02", "--num-layers", "4"])
    assert config.optimizer.lr == 0.02 and config.model.num_layers == 4  # CLI wins
    assert config.model.hidden_size == 32 and (config.mask.n, config.mask.m) == (4, 8)
    assert config.mask.temperature == (3.0, 0.5)
    assert config.data.data_path == ["0.3", "a", "0.7", "b"]
    assert config.model.family == "gpt" and config.model.norm_eps == 1e-6  # flag names work too


def test_model_shape_comes_from_the_checkpoint(tmp_path):
    shape = dict(family="llama", num_layers=30, hidden_size=576, ffn_hidden_size=1536,
                 num_attention_heads=9, num_query_groups=3, vocab_size=49152,
                 max_position_embeddings=8192, rotary_base=100000.0, norm_eps=1e-5,
                 tied_embeddings=True)
    (tmp_path / "model_shape.json").write_text(json.dumps(shape))
    config = run_config_from_args(["--pretrained-checkpoint", str(tmp_path), "--mock-data",
                                   "--rotary-base", "5e5"])
    assert config.model.num_layers == 30 and config.model.tied_embeddings
    assert config.model.rotary_base == 5e5  # an explicit flag still wins


def test_a_configs_tokenizer_vocabulary_meets_the_checkpoints_padded_rows(tmp_path):
    """examples/configs/llama2_7b.yaml says vocab_size 32000 (LLaMA-2's tokenizer); a checkpoint
    converted at TP 8 has 32768 rows (padded to 128 x 8). The checkpoint's rows win."""
    from megatron_masklm.training.arguments import load_yaml_options, run_config_from_options

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    options = load_yaml_options(os.path.join(root, "examples", "configs", "llama2_7b.yaml"))
    shape = {k: options[k] for k in ("family", "num_layers", "hidden_size", "ffn_hidden_size",
                                     "num_attention_heads", "num_query_groups",
                                     "max_position_embeddings")}
    (tmp_path / "model_shape.json").write_text(json.dumps({**shape, "vocab_size": 32768}))
    options.update(pretrained_checkpoint=str(tmp_path), mock_data=True)
    assert options["vocab_size"] == 32000
    assert run_config_from_options(options).model.vocab_size == 32768
    with pytest.raises(ValueError, match="vocab_size 40000 does not match the checkpoint's 32768"):
        run_config_from_options({**options, "vocab_size": 40000})
    with pytest.raises(ValueError, match="multiple of 128"):  # at TP 1 32000 stays 32000
        run_config_from_options({**options, "tensor_model_parallel_size": 1,
                                 "sequence_parallel": False})


def test_round_trip_through_a_checkpoint_dict():
    config = run_config_from_args(SHAPE + ["--pattern", "2:8", "--temperature", "3", "1"])
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_help_carries_the_field_docs_and_every_option_has_a_flag():
    text = build_parser().format_help()
    assert "Gumbel-softmax temperature" in text and "--tensor-model-parallel-size" in text
    for name in option_names():
        if name not in ("family", "norm_eps", "init_std", "hard"):
            assert "--" + name.replace("_", "-") in text, name


@pytest.mark.parametrize("argv, message", [
    (["--num-layers", "2"], "--hidden-size"),
    (SHAPE + ["--pattern", "3:2"], "N=3 with M=2"),
    (SHAPE + ["--lr-decay-style", "step"], "lr_decay_style 'step'"),
    (SHAPE + ["--split", "1,2"], "split '1,2'"),
    (SHAPE + ["--global-batch-size", "10", "--micro-batch-size", "4"], "not a multiple"),
    (SHAPE + ["--min-lr", "1"], "min_lr"),
    (SHAPE + ["--seq-length", "8192"], "max_position_embeddings"),
    (SHAPE + ["--temperature", "1", "0"], "temperature"),
    (SHAPE + ["--no-mock-data"], "--data-path"),
    (SHAPE + ["--recompute-granularity", "some"], "recompute_granularity"),
])
def test_bad_options_name_the_value(argv, message):
    with pytest.raises(ValueError) as error:
        run_config_from_args(argv)
    assert message in str(error.value)


def test_unknown_yaml_key_suggests_the_right_one(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("tensor_parallel_size: 2\n")
    with pytest.raises(ValueError, match="did you mean 'tensor_model_parallel_size'"):
        run_config_from_args(["--config", str(path)])
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        run_config_from_args(["--config", str(path)])
    with pytest.raises(ValueError, match="cannot read"):
        run_config_from_args(["--config", str(tmp_path / "missing.yaml")])


def test_cli_exits_1_with_a_message(capsys):
    from megatron_masklm.train import main

    assert main(SHAPE + ["--pattern", "5:4"]) == 1
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(SHAPE + ["--no-such-flag"])
    assert exit_info.value.code == 2


def test_options_dict_matches_yaml_types():
    config = run_config_from_options(dict(num_layers=2, hidden_size=64, ffn_hidden_size=128,
                                          num_attention_heads=4, vocab_size=128, mock_data=True,
                                          reg_weight=[1e-4, 0], pattern="2:4"))
    assert config.mask.reg_weight == (1e-4, 0.0) and math.isclose(config.mask.temperature[1], 0.05)


def test_vocab_size_from_the_tokenizer_padded_like_megatron(tmp_path):
    import sentencepiece as spm

    text = tmp_path / "text.txt"
    words = ["".join(chr(97 + (i * j) % 26) for j in range(1, 6)) for i in range(400)]
    text.write_text("\n".join(" ".join(words[i:i + 8]) for i in range(0, 400, 8)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "sp"),
                                   vocab_size=40, minloglevel=2)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "sp.model").rename(tmp_path / "tokenizer" / "tokenizer.model")
    no_vocab = SHAPE[:SHAPE.index("--vocab-size")] + SHAPE[SHAPE.index("--vocab-size") + 2:]
    config = run_config_from_args(no_vocab + [
        "--pretrained-checkpoint", str(tmp_path), "--tensor-model-parallel-size", "2",
        "--make-vocab-size-divisible-by", "16"])
    assert config.data.tokenizer_type == "SentencePieceTokenizer"
    assert config.model.vocab_size == 64  # 40 tokens padded to a multiple of 16 x 2
    named = run_config_from_args(SHAPE + ["--pretrained-checkpoint", str(tmp_path),
                                          "--tokenizer-type", "SentencePieceTokenizer"])
    assert named.data.tokenizer_model == str(tmp_path / "tokenizer" / "tokenizer.model")


def test_console_script_is_declared():
    from importlib.metadata import entry_points

    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("megatron-masklm-train") == "megatron_masklm.train:main"
