"""Masks as priors (the paper's transfer setting): a mask learned at TP=1 and exported under HF
names in the compact format starts a new run at TP=2 as its --prior-mask, and with a dominant
prior every rank's initial hard masks are its shards of the TP=1 mask."""
import pytest
import torch

from harness import run_distributed
from training_utils import make_token_dataset, run_config

pytestmark = [pytest.mark.dist, pytest.mark.timeout(300)]


def _init(init_method, *, tp):
    from megatron_masklm.mcore import initialize_distributed

    initialize_distributed(tensor_model_parallel_size=tp, init_method=init_method, seed=7,
                           cuda_to_cpu_mode=True)


def _learn_at_tp1(*, rank, init_method, prefix, run_dir):
    """3 steps at TP=1 (x DP=2), saved; the learned hard masks, unsharded (TP=1)."""
    from megatron_masklm.mcore import masked_linears
    from megatron_masklm.mcore.global_masks import global_layer_names
    from megatron_masklm.training.loop import setup_run, train

    _init(init_method, tp=1)
    options = dict(tensor_model_parallel_size=1, save=run_dir, train_iters=3, eval_iters=0,
                   lr=0.2, seed=3)
    train(run_config(prefix, **options))
    run = setup_run(run_config(prefix, load=run_dir, **options))
    names = global_layer_names(run.gpt)
    return {f"{names[name]}.weight": layer.hard_mask().cpu()
            for name, layer in masked_linears(run.gpt)}


def _start_at_tp2(*, rank, init_method, prefix, prior):
    """A fresh TP=2 run from the prior: each rank's hard masks at initialisation."""
    from megatron.core import parallel_state

    from megatron_masklm.mcore import masked_linears
    from megatron_masklm.mcore.global_masks import global_layer_names
    from megatron_masklm.training.loop import setup_run

    _init(init_method, tp=2)
    run = setup_run(run_config(prefix, tensor_model_parallel_size=2, prior_mask=prior,
                               prior_strength=50.0, seed=11, eval_iters=0))
    names = global_layer_names(run.gpt)
    masks = {}
    for name, layer in masked_linears(run.gpt):
        stride = 2 if getattr(layer, "glu_fc1", False) else 1
        masks[f"{names[name]}.weight"] = (layer.hard_mask().cpu(), layer.logits_tp_axis, stride)
    return {"tp_rank": parallel_state.get_tensor_model_parallel_rank(), "masks": masks}


def _shard(full, *, axis, stride, world, rank):
    """Rank ``rank``'s slice of an unsharded weight, by hand: a GLU fc1 ([gate; up]) holds
    [gate_r; up_r], everything else one contiguous chunk along its TP axis."""
    return torch.cat([part.chunk(world, dim=axis)[rank] for part in full.chunk(stride, dim=axis)],
                     dim=axis)


def test_a_mask_learned_at_tp1_is_the_prior_of_a_tp2_run(tmp_path):
    from megatron_masklm.convert.masks import export_masks
    from megatron_masklm.masking import detect_mask_format, read_packed_masks

    prefix = make_token_dataset(str(tmp_path))
    run_dir, prior = str(tmp_path / "tp1"), str(tmp_path / "learned.idx.npz")
    learned = run_distributed(_learn_at_tp1, prefix=prefix, run_dir=run_dir)
    assert all(torch.equal(learned[0][k], learned[1][k]) for k in learned[0])  # DP replicas
    learned = learned[0]
    assert len(learned) == 8

    exported = export_masks(run_dir, prior, fmt="compact")  # read at TP=1, under HF names
    assert detect_mask_format(prior) == "compact" and len(exported) == 14
    assert all(name.startswith("model.layers.") for name in read_packed_masks(prior).packed)

    ranks = run_distributed(_start_at_tp2, prefix=prefix, prior=prior)
    assert sorted(r["tp_rank"] for r in ranks) == [0, 1]
    for result in ranks:
        assert sorted(result["masks"]) == sorted(learned)
        for name, (local, axis, stride) in result["masks"].items():
            expected = _shard(learned[name], axis=axis, stride=stride, world=2,
                              rank=result["tp_rank"])
            assert local.shape == expected.shape and torch.equal(local, expected), name
    # the shards are not trivially equal to each other: the check above is per rank
    qkv = "decoder.layers.0.self_attention.linear_qkv.weight"
    assert not torch.equal(ranks[0]["masks"][qkv][0], ranks[1]["masks"][qkv][0])
