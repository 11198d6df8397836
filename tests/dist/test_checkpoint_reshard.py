"""Dist checkpoints of a masked model reshard: TP=2 -> TP=1 and TP=1 -> TP=2, logits identical."""
import pytest
import torch

from harness import run_distributed

SHAPE = dict(num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
             num_query_groups=2, vocab_size=128, max_position_embeddings=32)


def _build(tp, *, init_method, seed):
    from megatron_masklm.masking import MaskConfig
    from megatron_masklm.mcore import (
        ModelShape, build_masked_gpt_model, build_transformer_config, initialize_distributed)

    initialize_distributed(tensor_model_parallel_size=tp, init_method=init_method, seed=seed)
    shape = ModelShape(**SHAPE)
    torch.manual_seed(seed)
    return build_masked_gpt_model(shape, MaskConfig(),
                                  config=build_transformer_config(shape, tensor_model_parallel_size=tp))


def _full_state(model):
    """Every masked layer's logits and weight, gathered into the unsharded layout."""
    from megatron_masklm.mcore import masked_linears
    from tp_utils import gather_tp, layer_axis_stride

    state = {}
    for name, layer in masked_linears(model):
        axis, stride = layer_axis_stride(layer)
        state[name + ".mask_logits"] = gather_tp(layer.mask_logits.detach(), axis=axis, stride=stride)
        state[name + ".weight"] = gather_tp(layer.weight.detach(), axis=axis, stride=stride)
        state[name + ".hard_mask"] = gather_tp(layer.hard_mask(), axis=axis, stride=stride)
    return state


def _ckpt_rank(*, rank, init_method, ckpt_root):
    from megatron.core import dist_checkpointing, parallel_state

    from megatron_masklm.masking import is_exact_nm

    for save_tp, load_tp in ((2, 1), (1, 2)):
        ckpt_dir = f"{ckpt_root}/tp{save_tp}"
        model = _build(save_tp, init_method=init_method, seed=1)
        with torch.no_grad():  # logits far from their init, different on every TP rank
            gen = torch.Generator().manual_seed(100 + parallel_state.get_tensor_model_parallel_rank())
            for param in model.parameters():
                if param.dim() == 3:
                    param.copy_(torch.randn(param.shape, generator=gen))
        saved = _full_state(model)
        if rank == 0:
            import os
            os.makedirs(ckpt_dir)
        torch.distributed.barrier()
        dist_checkpointing.save(model.sharded_state_dict(), ckpt_dir)
        parallel_state.destroy_model_parallel()

        model = _build(load_tp, init_method=init_method, seed=2)
        before = _full_state(model)
        loaded = dist_checkpointing.load(model.sharded_state_dict(), ckpt_dir)
        model.load_state_dict(loaded, strict=True)
        after = _full_state(model)
        assert not torch.equal(before["decoder.layers.0.mlp.linear_fc1.mask_logits"],
                               saved["decoder.layers.0.mlp.linear_fc1.mask_logits"])
        assert after.keys() == saved.keys()
        for key in saved:
            assert torch.equal(after[key], saved[key]), f"TP{save_tp}->TP{load_tp}: {key} differs"
            if key.endswith("hard_mask"):
                assert is_exact_nm(after[key], 2, 4)
        parallel_state.destroy_model_parallel()
    return True


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_dist_checkpoint_reshards_logits(tmp_path):
    assert run_distributed(_ckpt_rank, ckpt_root=str(tmp_path)) == [True, True]
