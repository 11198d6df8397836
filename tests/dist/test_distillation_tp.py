"""Distillation at TP=2 and PP=2: the vocab-parallel KL equals an unsharded float64 reference,
the teacher is the dense model, an all-ones mask distils to zero, resume stays bit-exact and
PP=2 gives PP=1's losses."""
import pytest
import torch

from distill_reference import reference_kl
from harness import run_distributed
from training_utils import make_token_dataset, run_config

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]


def _init(init_method, *, tp=1, pp=1, seed=7):
    from megatron_masklm.mcore import initialize_distributed

    initialize_distributed(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                           init_method=init_method, seed=seed, cuda_to_cpu_mode=True)


# --- the KL over a vocabulary split in two, padding on the last rank ---

def _kl_tp2(*, rank, init_method, student, teacher, weights, vocab_size, temperature):
    from megatron.core import parallel_state

    from megatron_masklm.training.distillation import vocab_parallel_kl

    _init(init_method, tp=2)
    local = student.shape[-1] // 2
    mine = student[..., rank * local:(rank + 1) * local].clone().requires_grad_()
    kl = vocab_parallel_kl(mine, teacher[..., rank * local:(rank + 1) * local],
                           temperature=temperature, vocab_start=rank * local,
                           vocab_size=vocab_size,
                           group=parallel_state.get_tensor_model_parallel_group())
    (kl * weights).sum().backward()
    return kl.detach(), mine.grad


@pytest.mark.parametrize("vocab_size", [48, 40, 20])  # no padding; padding on rank 1; rank 1 all padding
def test_kl_at_tp2_equals_the_unsharded_float64_reference(vocab_size):
    torch.manual_seed(1)
    student, teacher = 3 * torch.randn(2, 6, 48), 3 * torch.randn(2, 6, 48)
    weights = torch.rand(2, 6)
    results = run_distributed(_kl_tp2, student=student, teacher=teacher, weights=weights,
                              vocab_size=vocab_size, temperature=2.0, timeout=180)
    reference_student = student.double().requires_grad_()
    reference = reference_kl(reference_student, teacher, 2.0, vocab_size)
    (reference * weights.double()).sum().backward()
    for kl, _ in results:  # every TP rank holds the whole per-token KL
        torch.testing.assert_close(kl.double(), reference, rtol=1e-5, atol=1e-6)
    grad = torch.cat([g for _, g in results], dim=-1)
    torch.testing.assert_close(grad.double(), reference_student.grad, rtol=1e-4, atol=1e-7)
    assert torch.count_nonzero(grad[..., vocab_size:]) == 0


# --- the teacher is the dense model with the run's weights ---

def _teacher(*, rank, init_method, prefix):
    from megatron_masklm.mcore import build_dense_gpt_model, build_transformer_config, load_model_tensors
    from megatron_masklm.training.loop import _teacher_pass, microbatches, setup_run

    _init(init_method, tp=2)
    config = run_config(prefix, tensor_model_parallel_size=2, distill_weight=1.0)
    run = setup_run(config)
    batches = microbatches(run.train_data, first_sample=0, config=config)
    _teacher_pass(run, batches)
    dense = build_dense_gpt_model(config.model, config=build_transformer_config(
        config.model, tensor_model_parallel_size=2))
    load_model_tensors(dense, {k: v for k, v in run.gpt.state_dict().items()
                               if not k.endswith("mask_logits")})
    out = []
    with torch.no_grad():
        for batch in batches:
            expected = dense(batch["tokens"], batch["position_ids"], None)
            student = run.gpt(batch["tokens"], batch["position_ids"], None)
            out.append({"teacher": batch["teacher_logits"], "dense": expected,
                        "student_differs": float((student - expected).abs().max())})
    return out, all(layer.mask_enabled for layer in _masked(run.gpt))


def _masked(model):
    from megatron_masklm.mcore import masked_linears

    return [layer for _, layer in masked_linears(model)]


def test_the_teacher_is_the_dense_model_with_the_same_weights(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    for out, masks_back_on in run_distributed(_teacher, prefix=prefix):
        assert masks_back_on
        for batch in out:
            assert batch["teacher"].shape == batch["dense"].shape  # [b, s, V / TP]
            torch.testing.assert_close(batch["teacher"], batch["dense"], rtol=1e-5, atol=1e-5)
            assert batch["student_differs"] > 1e-3  # the 2:4 student is another model


# --- an all-ones mask: the student is the teacher, the KL is zero ---

def _all_ones(*, rank, init_method, prefix):
    from megatron_masklm.mcore import masked_linears
    from megatron_masklm.training import loop

    _init(init_method, tp=2)
    histories = {}
    for weight in (0.0, 1.0):
        config = run_config(prefix, tensor_model_parallel_size=2, train_iters=3, eval_iters=0,
                            hard=True, distill_weight=weight, distill_temperature=2.0)
        run = loop.setup_run(config)
        for _, layer in masked_linears(run.gpt):  # every candidate keeps every weight
            layer.mask_candidates.fill_(1.0)
        histories[weight] = [loop.train_step(run) for _ in range(3)]
    return histories


def test_an_all_ones_mask_has_zero_distillation_loss(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    histories = run_distributed(_all_ones, prefix=prefix)[0]
    plain, distilled = histories[0.0], histories[1.0]
    assert "distill_loss" not in plain[0]
    assert [m["distill_loss"] for m in distilled] == [0.0, 0.0, 0.0]
    assert [m["lm_loss"] for m in distilled] == pytest.approx([m["lm_loss"] for m in plain],
                                                              rel=1e-6)


# --- stop and resume with distillation: the uninterrupted run's losses, bit for bit ---

def _resume(*, rank, init_method, prefix, run_dir):
    from megatron_masklm.training.loop import train

    _init(init_method, tp=2)
    common = dict(tensor_model_parallel_size=2, train_iters=6, eval_interval=3,
                  distill_weight=0.5, distill_temperature=2.0)
    keys = ("lm_loss", "distill_loss")
    uninterrupted = train(run_config(prefix, **common))
    first = train(run_config(prefix, save=run_dir, exit_interval=2, **common))
    second = train(run_config(prefix, load=run_dir, save=run_dir, **common))
    return [[tuple(m[k] for k in keys) for m in h] for h in (uninterrupted, first, second)]


def test_resume_with_distillation_is_bit_exact(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    full, first, second = run_distributed(_resume, prefix=prefix, run_dir=str(tmp_path / "run"))[0]
    assert len(first) == 2 and len(second) == 4
    assert first + second == full
    assert all(kl > 0 for _, kl in full)


# --- PP=2: the teacher's logits exist on the last stage only, and the losses match PP=1 ---

def _pipeline(*, rank, init_method, prefix, dirs):
    from megatron_masklm.training.loop import train

    common = dict(train_iters=3, gumbel_noise=False, eval_iters=0, num_layers=4,
                  global_batch_size=4, micro_batch_size=1, distill_weight=0.5)
    _init(init_method, pp=1)  # DP = 2; both runs continue from this run's first step
    train(run_config(prefix, save=dirs["start"], exit_interval=1, **common))
    pp1 = train(run_config(prefix, load=dirs["start"], **common))
    _init(init_method, pp=2)  # DP = 1, 4 micro-batches through 2 stages
    pp2 = train(run_config(prefix, load=dirs["start"], pipeline_model_parallel_size=2, **common))
    return [[(m["lm_loss"], m["distill_loss"]) for m in h] for h in (pp1, pp2)]


def test_pipeline_parallel_distillation_matches_pp1(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    results = run_distributed(_pipeline, prefix=prefix, dirs={"start": str(tmp_path / "start")})
    assert results[0] == results[1]  # every stage reports the last stage's losses
    pp1, pp2 = results[0]
    assert len(pp1) == 2 and all(kl > 0 for _, kl in pp1)
    for (lm1, kl1), (lm2, kl2) in zip(pp1, pp2):
        assert lm2 == pytest.approx(lm1, rel=1e-5, abs=1e-6)
        assert kl2 == pytest.approx(kl1, rel=1e-4, abs=1e-7)
