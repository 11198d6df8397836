"""Weight recovery (--fixed-mask) on 2 gloo ranks: the weights train under a given N:M mask with
the pruned ones exactly 0 at every step, distilled from a separate frozen copy of the pretrained
weights that never changes; TP=2 equals TP=1, and stop-and-resume is bit-identical."""
import pytest
import torch

from harness import run_distributed
from training_utils import VOCAB, make_token_dataset, run_config

pytest.importorskip("transformers")
from hf_utils import tiny_llama  # noqa: E402

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]


def _init(init_method, *, tp, pp=1):
    from megatron_masklm.mcore import initialize_distributed

    initialize_distributed(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                           init_method=init_method, seed=7, cuda_to_cpu_mode=True)


def _options(assets, **overrides):
    options = dict(pretrained_checkpoint=assets["checkpoint"], fixed_mask=assets["mask"],
                   distill_weight=1.0, train_iters=6, lr=1e-2, min_lr=1e-3, log_interval=1,
                   eval_interval=3)
    options.update(overrides)
    return options


def _global_weights(gpt):
    """Every masked linear's unsharded weight and keep-mask, keyed by global name."""
    from megatron_masklm.mcore import compat, masked_linears
    from megatron_masklm.mcore.global_masks import global_layer_names
    from megatron_masklm.mcore.parallel import gather_global_tensor

    names = global_layer_names(gpt)
    weights, masks = {}, {}
    for name, layer in masked_linears(gpt):
        stride = 2 if getattr(layer, "glu_fc1", False) else 1  # [gate; up] halves
        spec = dict(axis=layer.logits_tp_axis, stride=stride, group=compat.layer_tp_group(layer))
        key = f"{names[name]}.weight"
        weights[key] = gather_global_tensor(layer.weight.detach(), **spec).clone()
        masks[key] = gather_global_tensor(layer.hard_mask(), **spec).clone()
    return weights, masks


def _recover(*, rank, init_method, assets, tp, run_dir):
    from megatron_masklm.training.loop import setup_run, train

    _init(init_method, tp=tp)
    config = run_config(assets["prefix"], tensor_model_parallel_size=tp, save=run_dir,
                        **_options(assets))
    run = setup_run(config)
    teacher_before = {n: p.detach().clone() for n, p in run.teacher.named_parameters()}
    trainable = sorted(n for n, p in run.gpt.named_parameters() if p.requires_grad)
    start_weights, start_masks = _global_weights(run.gpt)
    del run
    history = train(config)
    # the final state, as saved: reload the run into a fresh model
    resumed = setup_run(run_config(assets["prefix"], tensor_model_parallel_size=tp, load=run_dir,
                                   **_options(assets)))
    weights, masks = _global_weights(resumed.gpt)
    teacher_after = {n: p.detach().clone() for n, p in resumed.teacher.named_parameters()}
    return {"losses": [(m["lm_loss"], m["distill_loss"]) for m in history],
            "trainable": trainable, "start": (start_weights, start_masks),
            "end": (weights, masks),
            "teacher_unchanged": all(torch.equal(teacher_before[n], teacher_after[n])
                                     for n in teacher_before),
            "teacher_trains": any(p.requires_grad for p in resumed.teacher.parameters())}


def _pipeline(*, rank, init_method, assets, pp, run_dir):
    """Losses of a recovery run at PP=``pp`` (the teacher's forward-only pass pipelined too)."""
    from megatron_masklm.training.loop import train

    _init(init_method, tp=1, pp=pp)
    history = train(run_config(assets["prefix"], pipeline_model_parallel_size=pp, save=run_dir,
                               **_options(assets)))
    return [(m["lm_loss"], m["distill_loss"]) for m in history]


def _first_kl(*, rank, init_method, assets, teacher, run_dir):
    """The first step's KL of a recovery that starts from already-pruned weights."""
    from megatron_masklm.training.loop import train

    _init(init_method, tp=2)
    history = train(run_config(assets["prefix"], tensor_model_parallel_size=2, save=run_dir,
                               **_options(assets, pretrained_checkpoint=assets["pruned_checkpoint"],
                                          teacher_checkpoint=teacher, train_iters=1)))
    return history[0]["distill_loss"]


def _stop_and_resume(*, rank, init_method, assets, run_dir, whole_dir):
    from megatron_masklm.training.loop import train

    _init(init_method, tp=2)
    common = dict(tensor_model_parallel_size=2, **_options(assets))
    whole = train(run_config(assets["prefix"], save=whole_dir, **common))
    first = train(run_config(assets["prefix"], save=run_dir, exit_interval=3, **common))
    second = train(run_config(assets["prefix"], load=run_dir, save=run_dir, **common))
    return [m["lm_loss"] for m in whole], [m["lm_loss"] for m in first + second]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny LLaMA converted at TP=2 and Wanda's 2:4 masks of it (not the weights' magnitude:
    the recovered weights must get somewhere a plain mask did not put them)."""
    from megatron_masklm.convert import convert_hf_to_megatron
    from script_modules import tool

    root = tmp_path_factory.mktemp("recovery")
    tiny_llama(root / "hf", vocab_size=VOCAB, intermediate_size=128, seed=11)
    checkpoint = str(root / "ckpt")
    convert_hf_to_megatron(str(root / "hf"), checkpoint, tensor_model_parallel_size=2,
                           dtype="float32", make_vocab_size_divisible_by=32, progress=False)
    tokens = torch.randint(0, VOCAB - 1, (12 * 32,), generator=torch.Generator().manual_seed(2))
    (root / "calib.txt").write_text(" ".join(str(int(t)) for t in tokens))
    assert tool("prune_oneshot").main([
        "--load", checkpoint, "--method", "wanda", "--tokenizer-type", "NullTokenizer",
        "--calib-text", str(root / "calib.txt"), "--calib-samples", "12", "--seq-length", "32",
        "--output-mask", str(root / "wanda.npz"), "--save", str(root / "wanda_ckpt"),
        "--no-progress"]) == 0
    return {"checkpoint": checkpoint, "mask": str(root / "wanda.npz"),
            "pruned_checkpoint": str(root / "wanda_ckpt"),
            "prefix": make_token_dataset(str(root)), "root": root}


def test_pruned_weights_stay_zero_the_teacher_is_untouched_and_tp2_equals_tp1(assets, tmp_path):
    from megatron_masklm.convert import load_megatron_checkpoint
    from megatron_masklm.masking import load_masks_npz

    two = run_distributed(_recover, assets=assets, tp=2, run_dir=str(tmp_path / "tp2"))
    one = run_distributed(_recover, assets=assets, tp=1, run_dir=str(tmp_path / "tp1"))
    original = load_megatron_checkpoint(assets["checkpoint"]).tensors
    shapes = {name: tuple(w.shape) for name, w in two[0]["start"][0].items()}
    given = load_masks_npz(assets["mask"], shapes)
    for result in two + one:
        start_weights, start_masks = result["start"]
        weights, masks = result["end"]
        assert sorted(masks) == sorted(given) and len(given) == 8
        for name in given:
            assert torch.equal(start_masks[name], given[name]), name  # the file's mask, exactly
            assert torch.equal(masks[name], given[name]), name  # and still after training
            assert not start_weights[name][~given[name]].any(), name  # zero from the start
            assert not weights[name][~given[name]].any(), name  # and exactly zero after 6 steps
            assert not torch.equal(weights[name], start_weights[name]), name  # kept ones moved
        assert not any(n.endswith("mask_logits") for n in result["trainable"])
        assert any("embedding" in n for n in result["trainable"])  # everything else trains
        assert result["teacher_unchanged"] and not result["teacher_trains"]
    assert two[0]["losses"] == two[1]["losses"]
    for (lm2, kl2), (lm1, kl1) in zip(two[0]["losses"], one[0]["losses"]):
        assert lm2 == pytest.approx(lm1, rel=1e-4) and kl2 == pytest.approx(kl1, rel=1e-4, abs=1e-6)
    assert two[0]["losses"][-1][1] > 0  # the teacher differs from the student
    for name in given:
        torch.testing.assert_close(two[0]["end"][0][name], one[0]["end"][0][name],
                                   rtol=1e-4, atol=1e-5)
    # the pretrained checkpoint is only read
    assert all(torch.equal(t, load_megatron_checkpoint(assets["checkpoint"]).tensors[n])
               for n, t in original.items())


def test_pipeline_parallel_matches(assets, tmp_path):
    pp2 = run_distributed(_pipeline, assets=assets, pp=2, run_dir=str(tmp_path / "pp2"))
    pp1 = run_distributed(_pipeline, assets=assets, pp=1, run_dir=str(tmp_path / "pp1"))
    assert pp2[0] == pp2[1]  # every stage reports the last stage's losses
    for (lm2, kl2), (lm1, kl1) in zip(pp2[0], pp1[0]):
        assert lm2 == pytest.approx(lm1, rel=1e-4) and kl2 == pytest.approx(kl1, rel=1e-3, abs=1e-6)
    assert pp2[0][-1][1] > 0


def test_the_teacher_checkpoint_is_the_dense_model_when_the_start_is_pruned(assets, tmp_path):
    """Starting from pruned weights (Wanda's x mask, as SparseGPT's updated ones would be), the
    default teacher is those same weights, so the first KL is 0; --teacher-checkpoint DENSE
    makes the dense model the teacher."""
    itself = run_distributed(_first_kl, assets=assets, teacher=None, run_dir=str(tmp_path / "a"))
    dense = run_distributed(_first_kl, assets=assets, teacher=assets["checkpoint"],
                            run_dir=str(tmp_path / "b"))
    assert itself[0] == pytest.approx(0.0, abs=1e-7) and dense[0] > 1e-4


def test_stop_and_resume_is_bit_identical(assets, tmp_path):
    whole, resumed = run_distributed(_stop_and_resume, assets=assets, run_dir=str(tmp_path / "run"),
                                     whole_dir=str(tmp_path / "whole"))[0]
    assert len(whole) == 6 and resumed == whole


@pytest.mark.parametrize("options, message", [
    (dict(pretrained_checkpoint=None), "--fixed-mask .* pass --pretrained-checkpoint"),
    (dict(prior_mask="x.npz"), "--fixed-mask and --prior-mask"),
    (dict(fixed_mask=None, distill_weight=0.0, teacher_checkpoint="t"), "--teacher-checkpoint .*--fixed-mask"),
])
def test_bad_recovery_options_are_named(assets, options, message):
    with pytest.raises(ValueError, match=message):
        run_config(assets["prefix"], **_options(assets, **options))


def test_the_recovered_model_exports_as_a_2_4_hf_checkpoint_with_its_mask_file(assets, tmp_path):
    """One command (convert_megatron_to_hf.py --apply-masks --save-masks): dense tensors with
    exact zeros that transformers loads, whose logits are the Megatron run's, passing
    verify_nm.py, and the compact mask file beside them holding the fixed mask."""
    import transformers

    from megatron_masklm.convert.output import megatron_world_of_one
    from megatron_masklm.masking import load_masks_any, load_masks_npz
    from megatron_masklm.mcore.loading import load_model, open_checkpoint
    from script_modules import tool

    run_dir = str(tmp_path / "run")
    run_distributed(_recover, assets=assets, tp=2, run_dir=run_dir)
    out = tmp_path / "hf"
    assert tool("convert_megatron_to_hf").main(["--load-dir", run_dir, "--save-dir", str(out),
                                                 "--apply-masks", "--save-masks"]) == 0
    assert tool("verify_nm").main([str(out), "--pattern", "2:4"]) == 0
    assert tool("verify_nm").main([str(out / "masks.idx.npz")]) == 0
    tokens = torch.randint(0, VOCAB - 1, (2, 24), generator=torch.Generator().manual_seed(9))
    info = open_checkpoint(run_dir)
    with megatron_world_of_one():
        model = load_model(info.directory, shape=info.shape, nm=info.nm, use_te=False).eval()
        with torch.no_grad():
            ours = model(tokens, torch.arange(24).expand(2, 24), None)[..., :VOCAB]
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    masks = load_masks_any(str(out / "masks.idx.npz"))
    weights = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    given = load_masks_npz(str(assets["root"] / "wanda.npz"), {
        f"decoder.layers.{i}.{name}.weight": shape for i in range(2) for name, shape in (
            ("self_attention.linear_qkv", (128, 64)), ("self_attention.linear_proj", (64, 64)),
            ("mlp.linear_fc1", (256, 64)), ("mlp.linear_fc2", (64, 128)))})
    assert len(masks) == 14 and len(given) == 8  # HF names (q/k/v, gate/up apart); Megatron's
    for name, mask in masks.items():
        assert not weights[name][~mask.bool()].any(), name
    assert ("model.layers.0.self_attn.o_proj.weight" in masks and torch.equal(
        masks["model.layers.0.self_attn.o_proj.weight"].bool(),
        given["decoder.layers.0.self_attention.linear_proj.weight"].bool()))
