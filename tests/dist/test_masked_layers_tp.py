"""Masked column -> row parallel linears at TP=2 equal an unsharded plain-torch reference."""
import pytest
import torch

from harness import run_distributed


def _reference(x, gy, w1, b1, l1, w2, b2, l2, candidates, *, tau, kappa, reg, hard):
    """Unsharded forward/backward with the mask written out by hand (no masking import)."""
    leaves = [t.double().requires_grad_(True) for t in (x, w1, b1, l1, w2, b2, l2)]
    gy, candidates = gy.double(), candidates.double()
    x, w1, b1, l1, w2, b2, l2 = leaves

    def mask(w, logits):
        probs = torch.softmax(logits * kappa / tau, dim=-1)
        if hard:  # forward: argmax candidate; backward: the soft probabilities
            one_hot = torch.nn.functional.one_hot(logits.argmax(-1), probs.shape[-1]).double()
            probs = one_hot - probs.detach() + probs
        return (probs @ candidates).reshape(w.shape)

    m1, m2 = mask(w1, l1), mask(w2, l2)
    h = x @ (w1 * m1).t() + b1
    y = h @ (w2 * m2).t() + b2
    regularizer = ((w1.detach() * m1) ** 2).sum() + ((w2.detach() * m2) ** 2).sum()
    ((y * gy).sum() - reg * regularizer).backward()
    return y.detach(), {name: t.grad for name, t in zip("x w1 b1 l1 w2 b2 l2".split(), leaves)}


def _layers_rank(*, rank, init_method, sequence_parallel):
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.model_parallel_config import ModelParallelConfig

    from megatron_masklm.masking import MaskConfig, MaskState, nm_candidates
    from megatron_masklm.mcore import (
        MaskedColumnParallelLinear, MaskedRowParallelLinear, initialize_distributed)

    initialize_distributed(tensor_model_parallel_size=2, init_method=init_method, seed=5)
    tp_group = parallel_state.get_tensor_model_parallel_group()
    hidden, ffn, seq, batch = 16, 24, 6, 3
    gen = torch.Generator().manual_seed(0)  # identical unsharded tensors on both ranks
    x, gy = torch.randn(seq, batch, hidden, generator=gen), torch.randn(seq, batch, hidden, generator=gen)
    w1, b1 = torch.randn(ffn, hidden, generator=gen), torch.randn(ffn, generator=gen)
    w2, b2 = torch.randn(hidden, ffn, generator=gen), torch.randn(hidden, generator=gen)
    l1 = torch.randn(ffn, hidden // 4, 6, generator=gen) * 0.02
    l2 = torch.randn(hidden, ffn // 4, 6, generator=gen) * 0.02
    candidates = nm_candidates(2, 4)

    cfg = ModelParallelConfig(tensor_model_parallel_size=2, sequence_parallel=sequence_parallel,
                              use_cpu_initialization=True, params_dtype=torch.float32,
                              gradient_accumulation_fusion=False)
    mc = MaskConfig(gumbel_noise=False, train_weights=True)
    col = MaskedColumnParallelLinear(hidden, ffn, config=cfg, init_method=lambda w: None, bias=True,
                                     gather_output=False, mask_config=mc)
    row = MaskedRowParallelLinear(ffn, hidden, config=cfg, init_method=lambda w: None, bias=True,
                                  input_is_parallel=True, skip_bias_add=False, mask_config=mc)
    with torch.no_grad():
        col.weight.copy_(w1.chunk(2, 0)[rank]); col.bias.copy_(b1.chunk(2, 0)[rank])
        col.mask_logits.copy_(l1.chunk(2, 0)[rank])
        row.weight.copy_(w2.chunk(2, 1)[rank]); row.bias.copy_(b2)
        row.mask_logits.copy_(l2.chunk(2, 1)[rank])

    tau, kappa, reg = 0.8, 120.0, 1e-2
    checked = []
    for training in (True, False):
        for layer in (col, row):
            layer.set_mask_state(MaskState(temperature=tau, logit_scale=kappa, reg_weight=reg))
            layer.train(training)
            for p in layer.parameters():
                p.grad = None
        x_in = (x.chunk(2, 0)[rank] if sequence_parallel else x).clone().requires_grad_(True)
        h, _ = col(x_in)
        y, _ = row(h)
        y.backward(gy.chunk(2, 0)[rank] if sequence_parallel else gy)
        if sequence_parallel:  # each rank holds the bias gradient of its sequence chunk
            dist.all_reduce(row.bias.grad, group=tp_group)
        ref_y, ref = _reference(x, gy, w1, b1, l1, w2, b2, l2, candidates, tau=tau, kappa=kappa,
                                reg=reg if training else 0.0, hard=not training)
        chunk = (lambda t: t.chunk(2, 0)[rank]) if sequence_parallel else (lambda t: t)
        pairs = {
            "y": (y, chunk(ref_y)), "dx": (x_in.grad, chunk(ref["x"])),
            "col.logits": (col.mask_logits.grad, ref["l1"].chunk(2, 0)[rank]),
            "row.logits": (row.mask_logits.grad, ref["l2"].chunk(2, 1)[rank]),
            "col.weight": (col.weight.grad, ref["w1"].chunk(2, 0)[rank]),
            "row.weight": (row.weight.grad, ref["w2"].chunk(2, 1)[rank]),
            "col.bias": (col.bias.grad, ref["b1"].chunk(2, 0)[rank]),
            "row.bias": (row.bias.grad, ref["b2"]),
        }
        for name, (got, want) in pairs.items():
            # fp32 layers against a float64 reference; kappa/tau = 150 amplifies rounding
            torch.testing.assert_close(got.double(), want, rtol=1e-4,
                                       atol=1e-5 * max(1.0, want.abs().max().item()),
                                       msg=lambda m: f"training={training} {name}: {m}")
            checked.append(name)
        assert col.mask_logits.grad.abs().sum() > 0 and row.mask_logits.grad.abs().sum() > 0
    return checked


@pytest.mark.dist
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_masked_column_row_tp2_match_unsharded(sequence_parallel):
    checked = run_distributed(_layers_rank, sequence_parallel=sequence_parallel)
    assert all(len(names) == 16 for names in checked)
