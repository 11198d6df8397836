"""Converted checkpoints at TP=2: logits equal transformers', and masks learned at TP=2 export to
the same HF-named masks (in both file formats) as the unsharded logits give."""
import os
import subprocess
import sys

import pytest
import torch

from harness import run_distributed
from tp_utils import gather_tp, layer_axis_stride
from training_utils import make_token_dataset, tiny_options

transformers = pytest.importorskip("transformers")
pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
              "num_query_groups", "vocab_size", "max_position_embeddings")


def _hf_and_megatron(tmp_path, family="llama"):
    from hf_utils import tiny_model

    from megatron_masklm.convert import convert_hf_to_megatron

    model = tiny_model(tmp_path / "hf", family)
    convert_hf_to_megatron(str(tmp_path / "hf"), str(tmp_path / "mg"), tensor_model_parallel_size=2,
                           dtype="float32", make_vocab_size_divisible_by=16, progress=False)
    return model


def _tp2_logits(*, rank, init_method, checkpoint, tokens):
    import json

    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state

    from megatron_masklm import mcore

    mcore.initialize_distributed(tensor_model_parallel_size=2, init_method=init_method)
    shape = mcore.ModelShape.from_dict(json.load(open(os.path.join(checkpoint, "model_shape.json"))))
    model = mcore.build_dense_gpt_model(
        shape, config=mcore.build_transformer_config(shape, tensor_model_parallel_size=2))
    state = dist_checkpointing.load(model.sharded_state_dict(), os.path.join(checkpoint, "release"))
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        local = model(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), None)
    parts = [torch.empty_like(local) for _ in range(2)]
    dist.all_gather(parts, local.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=-1)  # the vocabulary is split over TP ranks


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma3"])
def test_megatron_logits_equal_transformers_at_tp2(tmp_path, family):
    """Qwen2's fused QKV bias is split over the ranks like the weight rows; Qwen3's per-head
    QK-norm is replicated."""
    reference = _hf_and_megatron(tmp_path, family)
    tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(tokens).logits
    logits = run_distributed(_tp2_logits, checkpoint=str(tmp_path / "mg"), tokens=tokens)
    assert torch.equal(logits[0], logits[1])
    torch.testing.assert_close(logits[0][..., :100], expected, rtol=1e-5, atol=1e-5)


def _train_and_gather_masks(*, rank, init_method, prefix, checkpoint, run_dir):
    from megatron_masklm.mcore import initialize_distributed, masked_linears
    from megatron_masklm.mcore.global_masks import global_layer_names
    from megatron_masklm.training.arguments import run_config_from_options
    from megatron_masklm.training.loop import setup_run, train

    initialize_distributed(tensor_model_parallel_size=2, init_method=init_method, seed=7,
                           cuda_to_cpu_mode=True)
    options = {k: v for k, v in tiny_options(prefix).items() if k not in SHAPE_KEYS}
    options.update(tensor_model_parallel_size=2, pretrained_checkpoint=checkpoint, save=run_dir,
                   train_iters=3, eval_iters=0, lr=0.2)
    config = run_config_from_options(options)
    train(config)
    run = setup_run(run_config_from_options({**options, "load": run_dir}))
    names = global_layer_names(run.gpt)
    masks = {}
    for name, layer in masked_linears(run.gpt):
        axis, stride = layer_axis_stride(layer)
        masks[f"{names[name]}.weight"] = gather_tp(layer.hard_mask(), axis=axis, stride=stride)
    return masks


def _megatron_layout(hf_masks, i):
    """Independent re-assembly of one layer's HF-named masks into Megatron's fused layout."""
    pre, head_dim = f"model.layers.{i}.", 16
    q, k, v = (hf_masks[f"{pre}self_attn.{p}_proj.weight"] for p in "qkv")
    rows = []
    for g in range(2):  # 4 query heads in 2 groups: [q heads of g; k_g; v_g]
        rows += [q[h * head_dim:(h + 1) * head_dim] for h in (2 * g, 2 * g + 1)]
        rows += [k[g * head_dim:(g + 1) * head_dim], v[g * head_dim:(g + 1) * head_dim]]
    pre_m = f"decoder.layers.{i}."
    return {pre_m + "self_attention.linear_qkv.weight": torch.cat(rows),
            pre_m + "self_attention.linear_proj.weight": hf_masks[pre + "self_attn.o_proj.weight"],
            pre_m + "mlp.linear_fc1.weight": torch.cat([hf_masks[pre + "mlp.gate_proj.weight"],
                                                       hf_masks[pre + "mlp.up_proj.weight"]]),
            pre_m + "mlp.linear_fc2.weight": hf_masks[pre + "mlp.down_proj.weight"]}


def test_masks_learned_at_tp2_export_like_the_unsharded_logits(tmp_path):
    from megatron_masklm.convert import convert_megatron_to_hf
    from megatron_masklm.convert.masks import export_masks
    from megatron_masklm.masking import is_exact_nm, load_masks_npz
    from megatron_masklm.masking.files import load_masks_compact

    _hf_and_megatron(tmp_path)
    prefix = make_token_dataset(str(tmp_path))
    run_dir = str(tmp_path / "run")
    gathered = run_distributed(_train_and_gather_masks, prefix=prefix,
                               checkpoint=str(tmp_path / "mg"), run_dir=run_dir)[0]
    exported = export_masks(run_dir, str(tmp_path / "masks.npz"), fmt="npz")  # read at TP=1
    assert len(exported) == 14 and all(is_exact_nm(m, 2, 4) for m in exported.values())
    for i in range(2):
        for name, mask in _megatron_layout(exported, i).items():
            assert torch.equal(mask, gathered[name]), name

    shapes = {name: tuple(mask.shape) for name, mask in exported.items()}
    export_masks(run_dir, str(tmp_path / "masks.idx.npz"), fmt="compact")
    for loaded in (load_masks_npz(str(tmp_path / "masks.npz"), shapes),
                   load_masks_compact(str(tmp_path / "masks.idx.npz"), shapes)[0]):
        assert all(torch.equal(loaded[name].bool(), exported[name]) for name in exported)

    convert_megatron_to_hf(run_dir, str(tmp_path / "sparse"), apply_masks=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    verify = os.path.join(ROOT, "tools", "verify_nm.py")
    for target, code in ((tmp_path / "sparse", 0), (tmp_path / "masks.npz", 0),
                         (tmp_path / "masks.idx.npz", 0), (tmp_path / "hf", 1)):
        proc = subprocess.run([sys.executable, verify, str(target)], capture_output=True,
                              text=True, timeout=120, env=env)
        assert proc.returncode == code, (target, proc.stdout[-1500:], proc.stderr[-1500:])
    # the HF-side tool applies the exported file to the original checkpoint identically
    apply = os.path.join(ROOT, "tools", "apply_masks.py")
    proc = subprocess.run([sys.executable, apply, "--hf-dir", str(tmp_path / "hf"), "--masks",
                           str(tmp_path / "masks.idx.npz"), "--output", str(tmp_path / "applied")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "applied" / "model.safetensors")
    b = load_file(tmp_path / "sparse" / "model.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
