"""Starting from a dense checkpoint (+ a one-shot prior) and refusing checkpoints that do not fit."""
import os

import pytest
import torch

from harness import run_distributed
from training_utils import make_token_dataset, run_config

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]


def _save_dense(gpt, directory):
    """A dense Megatron checkpoint of ``gpt``'s weights (no mask logits)."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    if dist.get_rank() == 0:
        os.makedirs(directory, exist_ok=True)
    dist.barrier()
    state = {k: v for k, v in gpt.sharded_state_dict().items() if not k.endswith("mask_logits")}
    dist_checkpointing.save(state, directory)


def _global_prior(shape):
    """A random exact 2:4 keep-mask of an unsharded weight shape (same on every rank)."""
    gen = torch.Generator().manual_seed(shape[0] * 1000 + shape[1])
    keep = torch.rand(shape[0], shape[1] // 4, 4, generator=gen).argsort(-1)[..., :2]
    mask = torch.zeros(shape[0], shape[1] // 4, 4, dtype=torch.bool)
    mask.scatter_(-1, keep, True)
    return mask.reshape(shape)


def _dense_plus_prior(*, rank, init_method, prefix, tmp):
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_masklm.masking import save_masks_npz
    from megatron_masklm.mcore import initialize_distributed, masked_linears
    from megatron_masklm.mcore.global_masks import (global_layer_names, global_weight_shape,
                                                    shard_global_mask)
    from megatron_masklm.training.builders import build_model_and_optimizer
    from megatron_masklm.training.loop import setup_run

    initialize_distributed(tensor_model_parallel_size=2, init_method=init_method, seed=7,
                           cuda_to_cpu_mode=True)
    dense_config = run_config(prefix, tensor_model_parallel_size=2, seed=99)  # other weights
    _, dense, _, _ = build_model_and_optimizer(dense_config)
    _save_dense(dense, f"{tmp}/dense")
    names = global_layer_names(dense)
    layers = dict(masked_linears(dense))
    priors = {f"{names[n]}.weight": _global_prior(global_weight_shape(layers[n])) for n in names}
    if rank == 0:
        save_masks_npz(f"{tmp}/prior.npz", priors)
    dist.barrier()

    config = run_config(prefix, tensor_model_parallel_size=2, prior_strength=50.0,
                        pretrained_checkpoint=f"{tmp}/dense", prior_mask=f"{tmp}/prior.npz")
    run = setup_run(config)
    dense_params = dict(dense.named_parameters())
    weights_equal = all(torch.equal(p, dense_params[n]) for n, p in run.gpt.named_parameters()
                        if not n.endswith("mask_logits"))
    logits_differ = any(not torch.equal(layer.mask_logits, layers[n].mask_logits)
                        for n, layer in masked_linears(run.gpt))
    prior_wins = all(torch.equal(layer.hard_mask(),
                                 shard_global_mask(priors[f"{names[n]}.weight"], layer))
                     for n, layer in masked_linears(run.gpt))
    return {"weights_equal": weights_equal, "logits_fresh": logits_differ,
            "prior_first_everywhere": prior_wins,
            "tp_rank": parallel_state.get_tensor_model_parallel_rank()}


def test_dense_checkpoint_plus_prior_initialises_per_spec(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    results = run_distributed(_dense_plus_prior, prefix=prefix, tmp=str(tmp_path))
    assert [r.pop("tp_rank") for r in results] == [0, 1]
    for result in results:
        assert result == {"weights_equal": True, "logits_fresh": True,
                          "prior_first_everywhere": True}


def _refusals(*, rank, init_method, prefix, tmp):
    import shutil

    import torch.distributed as dist

    from megatron_masklm.mcore import initialize_distributed
    from megatron_masklm.training.builders import build_model_and_optimizer
    from megatron_masklm.training.loop import setup_run, train

    initialize_distributed(tensor_model_parallel_size=2, init_method=init_method, seed=7,
                           cuda_to_cpu_mode=True)
    common = dict(tensor_model_parallel_size=2, train_iters=2, eval_iters=0)
    train(run_config(prefix, save=f"{tmp}/run", **common))
    errors = {}

    def error_of(**overrides):
        try:
            setup_run(run_config(prefix, **common, **overrides))
        except ValueError as error:
            return str(error)
        return None

    errors["pattern"] = error_of(load=f"{tmp}/run", pattern="1:4")
    errors["shape"] = error_of(load=f"{tmp}/run", ffn_hidden_size=192)
    # a dense checkpoint handed to --load, as if it were a run to resume
    _, dense, _, _ = build_model_and_optimizer(run_config(prefix, **common))
    _save_dense(dense, f"{tmp}/dense/iter_0000001")
    if rank == 0:
        open(f"{tmp}/dense/latest_checkpointed_iteration.txt", "w").write("1")
    dist.barrier()
    errors["dense_as_load"] = error_of(load=f"{tmp}/dense")
    # a checkpoint whose logits are missing (our metadata, dense tensors)
    if rank == 0:
        shutil.copy(f"{tmp}/run/iter_0000002/masklm_checkpoint.json",
                    f"{tmp}/dense/iter_0000001/masklm_checkpoint.json")
    dist.barrier()
    errors["missing_logits"] = error_of(load=f"{tmp}/dense")
    errors["missing_dense"] = error_of(pretrained_checkpoint=f"{tmp}/nowhere")
    return errors


def test_checkpoints_that_do_not_fit_are_refused(tmp_path):
    prefix = make_token_dataset(str(tmp_path))
    errors = run_distributed(_refusals, prefix=prefix, tmp=str(tmp_path))[0]
    assert "2:4" in errors["pattern"] and "--pattern 1:4" in errors["pattern"]
    assert "ffn_hidden_size saved 128 vs now 192" in errors["shape"]
    assert "--pretrained-checkpoint" in errors["dense_as_load"]
    # 4 checkpoint keys: qkv, proj, fc1, fc2 (Megatron stacks the layers of a kind in one key)
    assert "no mask logits for 4 of the model's masked weights" in errors["missing_logits"]
    assert "nowhere" in errors["missing_dense"] and "metadata.json" in errors["missing_dense"]
