"""The memory estimator (megatron_masklm/training/memory.py, tools/estimate_memory.py) against reality.

The key test builds small masked models with the project's own training builders
(``setup_run``: Megatron DDP, the Megatron optimizer), takes one real training step with
``train_step`` so Adam state exists, and counts bytes from the real tensors: parameters (weights
vs mask logits), DDP buffers (param padding, fp32 grads), the optimizer's state and fp32 main
copies, and every tensor autograd saved for the backward. Weights, logits, padding, gradients,
optimizer states and the saved mask tensors must equal the estimate exactly; activations, an
estimate, only within a loose band.

Megatron's optimizer runs on CPU only under the CPU backend's CudaToCpuMode, which stays on
for the rest of a process, so the model is built in one spawned single-rank process
(tests/dist/harness.py) rather than in the pytest process.
"""
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from megatron_masklm.training import memory
from megatron_masklm.architecture import ModelShape, padded_vocab_size
from megatron_masklm.training.memory import Setup, estimate
from script_modules import benchmark, tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "estimate_memory.py")

EXACT_KEYS = ("weights", "mask_logits", "ddp_param_padding", "grad_buffers", "optimizer_states",
              "teacher_weights", "mask_softmax_saved", "mask_index_saved", "masked_weight_saved")
STATIC_KEYS = EXACT_KEYS[:6]

# Odd sizes on purpose: several logits tensors are not multiples of 64 elements, so the
# distributed optimizer's padding is not zero; the vocabulary (100) is padded to 128.
LLAMA_GQA = ModelShape(family="llama", num_layers=2, hidden_size=40, ffn_hidden_size=72,
                         num_attention_heads=4, num_query_groups=2, vocab_size=100,
                         max_position_embeddings=64)
GPT_MHA = ModelShape(family="gpt", num_layers=2, hidden_size=48, ffn_hidden_size=88,
                       num_attention_heads=4, vocab_size=100, max_position_embeddings=64)
QWEN2_GQA = ModelShape(family="qwen2", num_layers=2, hidden_size=40, ffn_hidden_size=72,
                       num_attention_heads=4, num_query_groups=2, vocab_size=100,
                       max_position_embeddings=64)  # a bias on linear_qkv only
GEMMA3_GQA = ModelShape(family="gemma3", num_layers=2, hidden_size=40, ffn_hidden_size=72,
                        num_attention_heads=4, num_query_groups=2, kv_channels=12,
                        vocab_size=100, max_position_embeddings=64, window_size=16,
                        window_attn_skip_freq=2, rotary_base_local=100.0)  # post-norms, (1+w)
QWEN3_GQA = ModelShape(family="qwen3", num_layers=2, hidden_size=40, ffn_hidden_size=72,
                       num_attention_heads=4, num_query_groups=2, kv_channels=12,
                       vocab_size=100, max_position_embeddings=64)  # QK-norm, heads 4 x 12 != 40

CASES = {
    # name: (architecture, setup); micro-batch 2 x 48 tokens, attention through torch's fused
    # kernel (the training builders' local spec), which keeps what "flash" counts
    "llama_gqa_untied_fp32_distopt": (LLAMA_GQA, Setup()),
    "llama_gqa_tied_bf16_distopt_hard": (
        dataclasses.replace(LLAMA_GQA, tied_embeddings=True), Setup(bf16=True, hard_sampling=True)),
    "gpt_mha_untied_bf16_adam_train_weights": (
        GPT_MHA, Setup(bf16=True, use_distributed_optimizer=False, train_weights=True)),
    "llama_gqa_tied_fp32_distopt_train_weights": (
        dataclasses.replace(LLAMA_GQA, tied_embeddings=True), Setup(train_weights=True)),
    "llama_gqa_untied_bf16_adam": (LLAMA_GQA, Setup(bf16=True, use_distributed_optimizer=False)),
    "qwen2_gqa_untied_fp32_distopt_train_weights": (QWEN2_GQA, Setup(train_weights=True)),
    "gemma3_gqa_tied_fp32_distopt": (dataclasses.replace(GEMMA3_GQA, tied_embeddings=True),
                                     Setup()),
    "llama_gqa_untied_bf16_adam_train_weights": (  # RMSNorm keeps fp32 copies for its weights
        LLAMA_GQA, Setup(bf16=True, use_distributed_optimizer=False, train_weights=True)),
    "qwen3_gqa_tied_bf16_adam": (dataclasses.replace(QWEN3_GQA, tied_embeddings=True),
                                 Setup(bf16=True, use_distributed_optimizer=False)),
    # weight recovery: frozen logits, trained weights, the fixed masks saved, a teacher copy
    "llama_gqa_untied_fp32_distopt_recovery": (
        LLAMA_GQA, Setup(fixed_mask=True, distill_weight=1.0)),
    "llama_gqa_tied_bf16_distopt_recovery_no_teacher": (
        dataclasses.replace(LLAMA_GQA, tied_embeddings=True), Setup(bf16=True, fixed_mask=True)),
}
BATCH = dict(micro_batch_size=2, seq_length=48, attention="flash")


def case_setup(setup: Setup, **overrides) -> Setup:
    return dataclasses.replace(setup, **{**BATCH, **overrides})


def run_options(arch: ModelShape, setup: Setup) -> dict:
    """Training options (what the CLI / YAML would give) for ``arch`` trained with ``setup``."""
    vocab = padded_vocab_size(
        arch.vocab_size, setup.make_vocab_size_divisible_by * setup.tensor_model_parallel_size)
    global_batch = setup.global_batch_size or setup.micro_batch_size * setup.data_parallel_size
    return dict(
        family=arch.family, num_layers=arch.num_layers, hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size, num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups, kv_channels=arch.kv_channels, vocab_size=vocab,
        window_size=arch.window_size, window_attn_skip_freq=arch.window_attn_skip_freq,
        rotary_base_local=arch.rotary_base_local,
        max_position_embeddings=arch.max_position_embeddings,
        tied_embeddings=arch.tied_embeddings, pattern=f"{setup.n}:{setup.m}",
        tensor_model_parallel_size=setup.tensor_model_parallel_size,
        pipeline_model_parallel_size=setup.pipeline_model_parallel_size,
        bf16=setup.bf16, use_distributed_optimizer=setup.use_distributed_optimizer,
        train_weights=setup.train_weights, hard=setup.hard_sampling,
        fixed_mask=setup.fixed_mask, distill_weight=setup.distill_weight,
        micro_batch_size=setup.micro_batch_size, seq_length=setup.seq_length,
        global_batch_size=global_batch,
        mock_data=True, train_iters=4, eval_iters=0, seed=11)


# --- counting real tensors (runs in the spawned rank) ---------------------------------------------

class SavedTensorCounter:
    """saved_tensors_hooks that sort every tensor autograd keeps for the backward by what it is
    (each storage counted once; parameters and DDP buffers are not saved copies)."""

    def __init__(self, run):
        from megatron_masklm.mcore import masked_linears

        self.skip = {p.untyped_storage().data_ptr() for p in run.gpt.parameters()}
        self.skip |= {b.param_data.untyped_storage().data_ptr() for b in run.ddp.buffers
                      if b.param_data is not None}
        self.kinds = {}
        for _, layer in masked_linears(run.gpt):
            logits, weight = layer.mask_logits, layer.weight
            self.kinds[(tuple(logits.shape), "torch.float32")] = "mask_softmax_saved"
            self.kinds[(tuple(logits.shape[:2]), "torch.int64")] = "mask_index_saved"
            self.kinds[(tuple(weight.shape), str(weight.dtype))] = "masked_weight_saved"
        self.storages = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key and key not in self.skip and key not in self.storages:
            kind = self.kinds.get((tuple(tensor.shape), str(tensor.dtype)), "activations")
            self.storages[key] = (kind, storage.nbytes())
        return tensor

    def totals(self) -> dict:
        totals = dict.fromkeys(("mask_softmax_saved", "mask_index_saved", "masked_weight_saved",
                                "activations"), 0)
        for kind, size in self.storages.values():
            totals[kind] += size
        return totals


def measure_memory(*, rank, init_method, cases):
    """For each (name, options): build the run, take one training step, count the bytes."""
    import torch

    from megatron_masklm.mcore import initialize_distributed
    from megatron_masklm.training.arguments import run_config_from_options
    from megatron_masklm.training.loop import setup_run, train_step

    # the counting benchmarks/smollm2_cpu/measure.py reports for the SmolLM2 benchmark
    training_state_bytes = benchmark("smollm2_cpu.measure").training_state_bytes
    results = {}
    for name, options in cases:
        initialize_distributed(tensor_model_parallel_size=options["tensor_model_parallel_size"],
                               pipeline_model_parallel_size=options["pipeline_model_parallel_size"],
                               init_method=init_method, seed=11, cuda_to_cpu_mode=True)
        if options.get("fixed_mask"):
            options = _recovery_options(options)
        else:
            options = {k: v for k, v in options.items() if k != "fixed_mask"}
        run = setup_run(run_config_from_options(options))
        counter = SavedTensorCounter(run)
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda tensor: tensor):
            train_step(run)
        from megatron.core import parallel_state

        teacher = sum(p.numel() * p.element_size() for p in run.teacher.parameters()
                      ) if run.teacher is not None else 0
        results[name] = {**training_state_bytes(run), **counter.totals(),
                         "teacher_weights": teacher,
                         "parameters": [(n, p.numel()) for n, p in run.gpt.named_parameters()],
                         "pp_rank": parallel_state.get_pipeline_model_parallel_rank(),
                         "dp_rank": parallel_state.get_data_parallel_rank()}
    return results


def _recovery_options(options: dict) -> dict:
    """``options`` for weight recovery (one process, TP = PP = 1): a mask-learning run of the same
    shape saved after one step is the pretrained checkpoint, its argmax masks the fixed mask."""
    import tempfile

    from megatron_masklm.masking import save_masks_npz
    from megatron_masklm.mcore import hard_masks
    from megatron_masklm.training.arguments import run_config_from_options
    from megatron_masklm.training.loop import setup_run, train

    directory = tempfile.mkdtemp(prefix="masklm-recovery-")
    plain = {k: v for k, v in options.items() if k not in ("fixed_mask", "distill_weight")}
    config = run_config_from_options({**plain, "train_iters": 1, "save": directory})
    train(config)
    masks = hard_masks(setup_run(run_config_from_options({**plain, "load": directory})).gpt)
    path = os.path.join(directory, "masks.npz")
    save_masks_npz(path, {f"{name}.weight": mask for name, mask in masks.items()})
    return {**options, "pretrained_checkpoint": directory, "fixed_mask": path}


@pytest.fixture(scope="module")
def measured():
    from dist.harness import run_distributed

    cases = [(name, run_options(arch, case_setup(setup))) for name, (arch, setup) in CASES.items()]
    return run_distributed(measure_memory, world_size=1, cases=cases, timeout=300)[0]


# --- the reality check ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_items_equal_the_real_tensors(measured, name):
    arch, setup = CASES[name]
    stage = estimate(arch, case_setup(setup)).stages[0]
    expected = {key: stage.bytes_of(key) for key in EXACT_KEYS}
    actual = {key: measured[name][key] for key in EXACT_KEYS}
    assert actual == expected
    assert actual["mask_logits"] > 0 and actual["optimizer_states"] > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_list_is_megatrons_in_order(measured, name):
    """Names, sizes and order (the order fixes how the distributed optimizer shards)."""
    arch, setup = CASES[name]
    params = memory.stage_parameters(arch, case_setup(setup), 0)
    assert [(p.name, p.numel) for p in params] == [tuple(p) for p in measured[name]["parameters"]]


def test_the_cases_cover_what_they_claim(measured):
    """Padding, fp32 main copies and hard-sampling indices really occur, so the exact
    comparison above also checks them."""
    assert measured["llama_gqa_untied_fp32_distopt"]["ddp_param_padding"] > 0
    assert measured["llama_gqa_tied_bf16_distopt_hard"]["mask_index_saved"] > 0
    train = measured["gpt_mha_untied_bf16_adam_train_weights"]
    # Adam moments for every trained element plus a fp32 copy of the bf16 weights
    trained = train["weights"] // 2 + train["mask_logits"] // 4
    assert train["optimizer_states"] == 8 * trained + 2 * train["weights"]
    mask_only = measured["llama_gqa_untied_bf16_adam"]
    assert mask_only["optimizer_states"] == 2 * mask_only["mask_logits"]  # logits only, no copy
    assert mask_only["grad_buffers"] == mask_only["mask_logits"]
    names = {name: [n for n, _ in measured[name]["parameters"]] for name in CASES}
    assert "decoder.layers.0.self_attention.linear_qkv.bias" in names["qwen2_gqa_untied_fp32_distopt_train_weights"]
    assert not any(n.endswith("linear_proj.bias") for n in names["qwen2_gqa_untied_fp32_distopt_train_weights"])
    assert ("decoder.layers.0.self_attention.q_layernorm.weight"
            in names["qwen3_gqa_tied_bf16_adam"])
    recovery = measured["llama_gqa_untied_fp32_distopt_recovery"]
    assert recovery["teacher_weights"] == recovery["weights"] > 0  # the teacher is a full copy
    assert recovery["mask_softmax_saved"] == 0 and recovery["mask_logits"] > 0  # kept, frozen
    assert recovery["grad_buffers"] >= recovery["weights"]  # the weights train, not the logits
    assert measured["llama_gqa_tied_bf16_distopt_recovery_no_teacher"]["teacher_weights"] == 0
    assert "decoder.layers.1.mlp.linear_fc2.post_norm.weight" in names["gemma3_gqa_tied_fp32_distopt"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_activation_estimate_is_in_the_right_range(measured, name):
    arch, setup = CASES[name]
    predicted = estimate(arch, case_setup(setup)).stages[0].bytes_of("activations")
    actual = measured[name]["activations"]
    assert 0.6 <= actual / predicted <= 1.5, (actual, predicted)


# --- arithmetic by hand --------------------------------------------------------------------------

def test_llama2_7b_by_hand():
    """The paper's setup, every exact figure typed in from the shapes."""
    result = estimate(memory.PRESETS["llama2-7b"], Setup(
        tensor_model_parallel_size=8, data_parallel_size=8, bf16=True, sequence_parallel=True))
    stage = result.stages[0]
    per_layer = (3 * 4096 * 4096 + 4096 * 4096 + 2 * 11008 * 4096 + 11008 * 4096) // 8
    masked = 32 * per_layer
    assert stage.masked_weights == masked == 809_500_672
    assert result.padded_vocab_size == 32768
    embeddings = 2 * 32768 // 8 * 4096
    norms = (2 * 32 + 1) * 4096
    assert stage.bytes_of("weights") == 2 * (masked + embeddings + norms)
    assert stage.bytes_of("mask_logits") == masked * 6 // 4 * 4
    assert stage.bytes_of("grad_buffers") == stage.bytes_of("mask_logits")  # 64-aligned, no pad
    assert stage.bytes_of("optimizer_states") == 2 * stage.bytes_of("mask_logits") // 8
    assert stage.bytes_of("mask_softmax_saved") == masked * 6
    assert stage.bytes_of("masked_weight_saved") == masked * 2
    assert result.fits and 15 * memory.GIB < stage.total < 30 * memory.GIB


def test_joint_training_adds_weight_grads_adam_and_main_copies():
    arch = memory.PRESETS["llama2-7b"]
    base = Setup(tensor_model_parallel_size=8, data_parallel_size=8, bf16=True)
    mask_only = estimate(arch, base).stages[0]
    joint = estimate(arch, dataclasses.replace(base, train_weights=True)).stages[0]
    weights = mask_only.bytes_of("weights") // 2
    assert joint.bytes_of("grad_buffers") == mask_only.bytes_of("grad_buffers") + 4 * weights
    assert joint.bytes_of("optimizer_states") == (
        mask_only.bytes_of("optimizer_states") + 12 * weights // 8)


def test_pipeline_stages_hold_embedding_first_and_head_last():
    arch = memory.PRESETS["smollm2-135m"]  # tied embeddings
    one = estimate(arch, Setup(bf16=True))
    three = estimate(arch, Setup(bf16=True, pipeline_model_parallel_size=3, global_batch_size=8))
    embedding = 49152 * 576 * 2
    assert [s.layers for s in three.stages] == [(0, 9), (10, 19), (20, 29)]
    names = [[p.name for p in memory.stage_parameters(arch, three.setup, s)] for s in range(3)]
    assert names[0][0] == "embedding.word_embeddings.weight"
    assert names[2][-1] == "output_layer.weight"  # the tied copy Megatron keeps at PP > 1
    assert not any("embedding" in n or "output_layer" in n for n in names[1])
    total = sum(s.bytes_of("weights") for s in three.stages)
    assert total == one.stages[0].bytes_of("weights") + embedding
    # 1F1B: stage i holds min(PP - i, micro-batches) micro-batches
    assert [s.microbatches_in_flight for s in three.stages] == [3, 2, 1]
    few = estimate(arch, Setup(pipeline_model_parallel_size=3, global_batch_size=2))
    assert [s.microbatches_in_flight for s in few.stages] == [2, 2, 1]


def test_full_recompute_keeps_one_layers_mask_state_and_layer_inputs():
    arch = memory.PRESETS["llama2-13b"]
    base = Setup(tensor_model_parallel_size=8, bf16=True, sequence_parallel=True)
    none = estimate(arch, base).stages[0]
    full = estimate(arch, dataclasses.replace(base, recompute_granularity="full")).stages[0]
    assert full.bytes_of("mask_softmax_saved") * 40 == none.bytes_of("mask_softmax_saved")
    assert full.bytes_of("masked_weight_saved") * 40 == none.bytes_of("masked_weight_saved")
    assert full.bytes_of("activations") < none.bytes_of("activations") / 4
    for key in STATIC_KEYS:
        assert full.bytes_of(key) == none.bytes_of(key)


def test_sequence_parallel_and_attention_kind_change_only_activations():
    arch = memory.PRESETS["llama2-7b"]
    base = Setup(tensor_model_parallel_size=8, bf16=True)
    plain = estimate(arch, base).stages[0]
    sp = estimate(arch, dataclasses.replace(base, sequence_parallel=True)).stages[0]
    local = estimate(arch, dataclasses.replace(base, attention="local")).stages[0]
    activations = [s.bytes_of("activations") for s in (sp, plain, local)]
    assert activations == sorted(activations) and len(set(activations)) == 3
    exact = lambda stage: [i.bytes for i in stage.items if i.exact]  # noqa: E731
    assert exact(sp) == exact(plain) == exact(local)
    # TP 1 ignores --sequence-parallel, as the builders do
    tp1 = estimate(arch, Setup(bf16=True, sequence_parallel=True)).stages[0]
    assert tp1.items == estimate(arch, Setup(bf16=True)).stages[0].items


def test_dp_sharding_splits_optimizer_state_over_ranks():
    arch = memory.PRESETS["smollm2-135m"]
    setup = Setup(data_parallel_size=4, bf16=True)
    buffers = memory.ddp_buffers(memory.stage_parameters(arch, setup, 0), setup)
    per_rank = [memory.optimizer_state_bytes(buffers, setup, rank) for rank in range(4)]
    logits = estimate(arch, setup).stages[0].bytes_of("mask_logits")
    assert sum(per_rank) == 2 * logits
    assert max(per_rank) == estimate(arch, setup).stages[0].bytes_of("optimizer_states")
    assert max(per_rank) - min(per_rank) <= 8 * 64 * 4 * 30  # at most a little padding apart


@pytest.mark.parametrize("overrides, tp, pp, message", [
    (dict(hidden_size=4098, num_attention_heads=2, num_query_groups=2), 1, 1,
     "linear_qkv and linear_fc1 (hidden_size) is 4098, not divisible by M=4"),
    (dict(hidden_size=4080, num_attention_heads=24, num_query_groups=24), 8, 1,
     "linear_proj (num_attention_heads x kv_channels / TP) is 510, not divisible by M=4"),
    (dict(ffn_hidden_size=1544), 8, 1, "linear_fc2 (ffn_hidden_size / TP) is 193"),
    (dict(num_attention_heads=12, num_query_groups=12, hidden_size=1536), 8, 1,
     "num_query_groups 12 is not divisible by tensor-parallel size 8"),
    (dict(ffn_hidden_size=11004), 8, 1,
     "ffn_hidden_size 11004 is not divisible by tensor-parallel"),
    (dict(num_layers=30), 1, 4, "num_layers 30 is not divisible by pipeline-parallel size 4"),
    (dict(hidden_size=4100), 1, 1, "not divisible by num_attention_heads 32: set kv_channels"),
    (dict(num_query_groups=5), 1, 1,
     "num_attention_heads 32 is not divisible by num_query_groups 5"),
    (dict(family="bert"), 1, 1, "family 'bert' is not one of"),
])
def test_bad_shapes_are_clear_errors(overrides, tp, pp, message):
    setup = Setup(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    with pytest.raises(ValueError, match=re.escape(message)):
        estimate(ModelShape(**{**memory.PRESET_OPTIONS["llama2-7b"], **overrides}), setup)


def test_other_patterns_use_their_candidate_count():
    arch = memory.PRESETS["llama2-7b"]
    two_four = estimate(arch, Setup(tensor_model_parallel_size=8)).stages[0]
    four_eight = estimate(arch, Setup(tensor_model_parallel_size=8, n=4, m=8)).stages[0]
    # C(8,4) = 70 logits per 8 weights against C(4,2) = 6 per 4
    assert four_eight.bytes_of("mask_logits") * 6 * 8 == two_four.bytes_of("mask_logits") * 70 * 4


# --- the CLI ------------------------------------------------------------------------------------

def run_cli(capsys, *argv):
    code = tool("estimate_memory").main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_preset_table(capsys):
    code, out, err = run_cli(capsys, "--model", "llama2-13b", "--tp", "8", "--dp", "8", "--bf16",
                             "--sequence-parallel")
    assert code == 0 and not err
    assert "TP 8 x PP 1 x DP 8 = 64 GPUs" in out and "vocabulary 32000 padded to 32768" in out
    assert "mask logits (fp32)" in out and "activations (estimate)" in out
    assert "fits in 80 GiB" in out and "does NOT fit" not in out


def test_cli_json_matches_the_library(capsys):
    code, out, _ = run_cli(capsys, "--model", "llama2-7b", "--tensor-model-parallel-size", "8",
                           "--data-parallel-size", "8", "--bf16", "--json")
    assert code == 0
    report = json.loads(out)
    expected = estimate(memory.PRESETS["llama2-7b"], Setup(
        tensor_model_parallel_size=8, data_parallel_size=8, bf16=True)).to_dict()
    assert report == json.loads(json.dumps(expected))
    item = report["stages"][0]["items"]["mask_logits"]
    assert item["exact"] and item["gib"] == item["bytes"] / 2 ** 30
    assert report["world_size"] == 64 and report["fits"] is True


def test_cli_explicit_shape_and_flags_override_presets(capsys):
    code, out, _ = run_cli(capsys, "--model", "llama2-7b", "--num-layers", "4", "--pattern", "1:4",
                           "--json")
    report = json.loads(out)
    assert code == 0 and report["architecture"]["num_layers"] == 4
    assert report["setup"]["pattern"] == "1:4" and report["setup"]["n"] == 1
    code, out, _ = run_cli(capsys, "--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size",
                           "128", "--num-attention-heads", "4", "--num-query-groups", "2",
                           "--vocab-size", "128", "--tied-embeddings", "--model-family", "gpt",
                           "--json")
    report = json.loads(out)
    assert code == 0 and report["architecture"]["tied_embeddings"]
    assert report["architecture"]["family"] == "gpt"


def test_cli_reads_the_training_yaml(capsys):
    path = os.path.join(ROOT, "examples", "configs", "llama2_13b.yaml")
    code, out, _ = run_cli(capsys, "--config", path, "--dp", "8", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["architecture"]["num_layers"] == 40
    assert report["architecture"]["hidden_size"] == 5120
    assert report["setup"]["tensor_model_parallel_size"] == 8 and report["setup"]["bf16"]
    assert report["setup"]["sequence_parallel"] and report["setup"]["global_batch_size"] == 256
    preset = estimate(memory.PRESETS["llama2-13b"], Setup(
        tensor_model_parallel_size=8, data_parallel_size=8, bf16=True, sequence_parallel=True,
        global_batch_size=256)).to_dict()
    assert report["stages"] == json.loads(json.dumps(preset["stages"]))


def test_cli_yaml_with_sections_and_flag_names(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  num-layers: 2\n  hidden_size: 64\n  ffn_hidden_size: 128\n"
                    "  num_attention_heads: 4\n  vocab_size: 64\nmodel_family: gpt\n"
                    "recompute_granularity: null\nlr: 0.01\npattern: '2:8'\n")
    code, out, _ = run_cli(capsys, "--config", str(path), "--json")
    report = json.loads(out)
    assert code == 0 and report["architecture"]["family"] == "gpt"
    assert report["setup"]["m"] == 8 and report["setup"]["recompute_granularity"] == "none"


@pytest.mark.parametrize("argv, message", [
    (["--model", "llama2-7b", "--hidden-size", "4098", "--num-attention-heads", "2",
      "--num-query-groups", "2"], "not divisible by M=4"),
    (["--model", "llama2-7b", "--tp", "3"], "num_query_groups 32 is not divisible by "
                                            "tensor-parallel size 3"),
    (["--model", "smollm2-135m", "--tp", "2"], "num_query_groups 3 is not divisible"),
    (["--num-layers", "2"], "the model shape is incomplete"),
    (["--model", "llama2-7b", "--pattern", "4:4"], "not a sparsity pattern"),
    (["--model", "llama2-7b", "--dp", "0"], "data_parallel_size must be a positive integer"),
    (["--model", "llama2-7b", "--dp", "3", "--global-batch-size", "256"], "global_batch_size 256"),
    (["--config", "/nonexistent.yaml"], "cannot read --config"),
])
def test_cli_bad_input_is_a_one_line_error(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 1 and not out
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_usage_errors_exit_2(capsys):
    for argv in (["--model", "llama3-8b"], ["--recompute-granularity", "some"], ["--tp", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            tool("estimate_memory").main(argv)
        assert exit_info.value.code == 2
    capsys.readouterr()


def test_tool_script_exit_codes_and_no_megatron_import(tmp_path):
    """The thin wrapper runs as a script (0, or 1 with a one-line error), and the estimator
    never imports megatron.core."""
    env = {**os.environ, "PYTHONPATH": ROOT}

    def run(*argv):
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)

    done = run(TOOL, "--model", "llama2-7b", "--tp", "8", "--dp", "8", "--bf16",
               "--sequence-parallel")
    assert done.returncode == 0, done.stderr
    assert "fits in 80 GiB" in done.stdout
    bad = run(TOOL, "--model", "smollm2-135m", "--tensor-model-parallel-size", "2")
    assert bad.returncode == 1 and bad.stderr.startswith("error: num_query_groups 3")
    probe = run("-c", f"import sys; sys.path.insert(0, {os.path.dirname(TOOL)!r}); "
                      "from estimate_memory import main; "
                      "main(['--model', 'llama2-13b', '--json']); "
                      "print(any(m.split('.')[0] == 'megatron' for m in sys.modules))")
    assert probe.returncode == 0 and probe.stdout.split()[-1] == "False"


def test_help_lists_the_options_and_points_to_the_examples():
    text = tool("estimate_memory").build_parser().format_help()
    for flag in ("--tensor-model-parallel-size", "--data-parallel-size", "--train-weights",
                 "--recompute-granularity", "--config", "--json", "llama2-13b"):
        assert flag in text
    assert "Worked examples" in " ".join(text.split())


def test_docstring_worked_examples_are_current():
    """The module docstring's worked examples are this code's output, verbatim."""
    doc = memory.__doc__
    for preset in ("llama2-7b", "llama2-13b"):
        table = memory.format_table(estimate(memory.PRESETS[preset], Setup(
            tensor_model_parallel_size=8, data_parallel_size=8, bf16=True, sequence_parallel=True)))
        indented = "\n".join(("    " + line).rstrip() for line in table.splitlines())
        assert indented in doc, preset
