"""The training loop on 2 gloo ranks: it learns, resumes exactly, reshards, pipelines correctly,
and every data-parallel replica draws its own Gumbel noise."""
import json
import math
import os

import pytest
import torch

from harness import run_distributed
from training_utils import make_token_dataset, run_config

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]


def _init(init_method, *, tp=1, pp=1, seed=7):
    from megatron_masklm.mcore import initialize_distributed

    initialize_distributed(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                           init_method=init_method, seed=seed, cuda_to_cpu_mode=True)


def _losses(history):
    return [m["lm_loss"] for m in history]


# --- a TP=2 run learns, logs what it should and keeps optimizer state for the logits only ---

def _train_tp2(*, rank, init_method, prefix, save):
    from megatron_masklm.training.loop import setup_run, train

    _init(init_method, tp=2)
    config = run_config(prefix, tensor_model_parallel_size=2, save=save, train_iters=20)
    run = setup_run(config)
    logits = [p for n, p in run.gpt.named_parameters() if n.endswith("mask_logits")]
    state_numel = sum(v.numel() for opt in run.optimizer.chained_optimizers
                      for group in opt.optimizer.param_groups for p in group["params"]
                      for v in [p])
    trainable = {n for n, p in run.gpt.named_parameters() if p.requires_grad}
    history = train(config)
    return {"losses": _losses(history), "trainable": sorted(trainable),
            "optimized_numel": state_numel, "logits_numel": sum(p.numel() for p in logits)}


def test_tp2_run_learns_and_logs(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    save = str(tmp_path / "run")
    results = run_distributed(_train_tp2, prefix=prefix, save=save)
    losses = results[0]["losses"]
    assert results[0]["losses"] == results[1]["losses"]  # one loss per step on both TP ranks
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    for result in results:
        assert all(name.endswith("mask_logits") for name in result["trainable"])
        assert result["optimized_numel"] == result["logits_numel"]  # nothing else is optimized
    records = [json.loads(line) for line in open(os.path.join(save, "logs", "train_log.jsonl"))]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iteration"] for r in train] == [5, 10, 15, 20]
    for key in ("lm_loss", "reg_term", "temperature", "logit_scale", "lr", "grad_norm",
                "tokens_per_s", "step_time_s", "peak_memory_bytes"):
        assert all(math.isfinite(r[key]) for r in train), key
    assert train[0]["temperature"] > train[-1]["temperature"]  # the schedules move
    assert train[0]["logit_scale"] < train[-1]["logit_scale"]
    assert train[0]["lr"] > train[-1]["lr"] >= 5e-3
    assert [r["iteration"] for r in evals] == [10, 20]
    for r in evals:
        assert r["exact_nm"] is True
        assert 0 < r["mask_change_fraction"] <= 1
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
    assert open(os.path.join(save, "latest_checkpointed_iteration.txt")).read() == "20"


# --- stop and resume: exactly the losses of an uninterrupted run (fp32) ---

def _stop_and_resume(*, rank, init_method, prefix, run_dir, log_dir):
    from megatron_masklm.training.loop import train

    _init(init_method, tp=2)
    common = dict(tensor_model_parallel_size=2, train_iters=8, eval_interval=2)
    uninterrupted = train(run_config(prefix, log_dir=log_dir, **common))
    first = train(run_config(prefix, save=run_dir, exit_interval=3, **common))
    second = train(run_config(prefix, load=run_dir, save=run_dir, **common))
    return _losses(uninterrupted), _losses(first), _losses(second), [m["iteration"] for m in second]


def _eval_records(log_dir):
    with open(os.path.join(log_dir, "train_log.jsonl")) as handle:
        records = [json.loads(line) for line in handle]
    return {r["iteration"]: r for r in records if r["kind"] == "eval"}


def test_stop_and_resume_gives_the_uninterrupted_losses(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    run_dir, log_dir = str(tmp_path / "run"), str(tmp_path / "uninterrupted_logs")
    full, first, second, iterations = run_distributed(
        _stop_and_resume, prefix=prefix, run_dir=run_dir, log_dir=log_dir)[0]
    assert len(first) == 3 and iterations == [4, 5, 6, 7, 8]
    assert first + second == full  # bit-identical, noise and data order included
    # the fraction of groups changed since the last validation (at 2, before the stop at 3)
    # is measured against the same reference: it travels in the checkpoint
    reference, resumed = _eval_records(log_dir), _eval_records(os.path.join(run_dir, "logs"))
    assert sorted(reference) == sorted(resumed) == [2, 4, 6, 8]
    for it in (2, 4, 6, 8):
        assert resumed[it]["mask_change_fraction"] == reference[it]["mask_change_fraction"], it
        assert resumed[it]["val_loss"] == reference[it]["val_loss"], it
    assert reference[4]["mask_change_fraction"] > 0  # a reference taken at 3 would differ


# --- save at TP=2, resume at TP=1 (DP=2): the model and optimizer state reshard ---

def _reshard(*, rank, init_method, prefix, run_dir):
    from megatron_masklm.training.loop import train

    common = dict(train_iters=8, gumbel_noise=False, eval_iters=0)
    _init(init_method, tp=2)
    reference = train(run_config(prefix, tensor_model_parallel_size=2, **common))
    train(run_config(prefix, tensor_model_parallel_size=2, save=run_dir, exit_interval=4, **common))
    _init(init_method, tp=1)
    resumed = train(run_config(prefix, tensor_model_parallel_size=1, load=run_dir, **common))
    return _losses(reference), _losses(resumed)


def test_save_at_tp2_resume_at_tp1(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    reference, resumed = run_distributed(_reshard, prefix=prefix, run_dir=str(tmp_path / "run"))[0]
    assert len(resumed) == 4
    # Same maths at another split (only summation order differs); without the Adam moments
    # or the scheduler state the resumed steps would move differently.
    assert resumed == pytest.approx(reference[4:], rel=1e-5, abs=1e-6)


# --- PP=2 equals PP=1, with a regulariser strong enough to matter on every stage ---

def _pipeline(*, rank, init_method, prefix, dirs):
    from megatron.core import dist_checkpointing

    from megatron_masklm.training.loop import train

    common = dict(train_iters=4, gumbel_noise=False, eval_iters=0, reg_weight=(2e-2, 2e-2),
                  num_layers=4, global_batch_size=8, micro_batch_size=1)
    _init(init_method, pp=1)  # DP = 2
    train(run_config(prefix, save=dirs["start"], exit_interval=2, **common))
    rest_pp1 = train(run_config(prefix, load=dirs["start"], save=dirs["pp1"], **common))
    _init(init_method, pp=2)  # DP = 1, 8 micro-batches through 2 stages
    rest_pp2 = train(run_config(prefix, load=dirs["start"], save=dirs["pp2"],
                                pipeline_model_parallel_size=2, **common))
    logits = {}
    for name, directory in (("pp1", dirs["pp1"]), ("pp2", dirs["pp2"])):
        plain = dist_checkpointing.load_plain_tensors(os.path.join(directory, "iter_0000004"))
        logits[name] = {k: v for k, v in plain.items() if k.endswith("mask_logits")}
    return _losses(rest_pp1), _losses(rest_pp2), logits


def test_pipeline_parallel_matches_including_the_regulariser(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    dirs = {name: str(tmp_path / name) for name in ("start", "pp1", "pp2")}
    pp1, pp2, logits = run_distributed(_pipeline, prefix=prefix, dirs=dirs)[0]
    assert pp2 == pytest.approx(pp1, rel=1e-5, abs=1e-6)
    assert sorted(logits["pp1"]) == sorted(logits["pp2"]) and len(logits["pp1"]) == 16
    for key in logits["pp1"]:  # stage 0 holds layers 0-1: the regulariser acted there too
        torch.testing.assert_close(logits["pp2"][key], logits["pp1"][key], rtol=1e-4, atol=1e-6)


# --- data-parallel replicas draw different noise, reproducible from (seed, iteration) ---

def _noise(*, rank, init_method, prefix):
    import torch.distributed as dist

    from megatron_masklm.mcore import masked_linears
    from megatron_masklm.training.loop import prepare_iteration, setup_run

    _init(init_method, tp=1)  # DP = 2
    run = setup_run(run_config(prefix))
    _, layer = next(masked_linears(run.gpt))
    samples = {}
    with torch.no_grad():
        for iteration in (3, 3, 4):
            prepare_iteration(run, iteration)
            samples.setdefault(iteration, []).append(layer.masked_weight().clone())
    mine = samples[3][0]
    both = [torch.empty_like(mine) for _ in range(2)]
    dist.all_gather(both, mine)
    logits = [torch.empty_like(layer.mask_logits) for _ in range(2)]
    dist.all_gather(logits, layer.mask_logits.detach())
    return {"same_iteration_repeats": torch.equal(samples[3][0], samples[3][1]),
            "next_iteration_differs": not torch.equal(samples[3][0], samples[4][0]),
            "replicas_differ": not torch.equal(both[0], both[1]),
            "replicas_share_logits": torch.equal(logits[0], logits[1])}


def test_data_parallel_replicas_draw_different_noise(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    for result in run_distributed(_noise, prefix=prefix):
        assert result == {"same_iteration_repeats": True, "next_iteration_differs": True,
                          "replicas_differ": True, "replicas_share_logits": True}
