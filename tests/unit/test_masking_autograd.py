"""masked_weight's custom autograd Function and the sparse-weight regulariser's gradient.

References written here: a float64 plain-autograd model of
    loss = sum(u * W * M~) - lambda * sum((W.detach() * M~)^2),
    M~ = sum_k softmax((kappa*pi + g)/tau)_k S_k   (straight-through one-hot when hard),
and a numpy vector-Jacobian product with the softmax Jacobian diag(y) - y y^T built by hand.
"""
import itertools

import numpy as np
import pytest
import torch

from megatron_masklm.masking import (
    gumbel_noise, masked_weight, nm_candidates, soft_mask, sparse_weight_regularizer,
)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def brute_force_candidates(n, m):
    vectors = [v for v in itertools.product((0, 1), repeat=m) if sum(v) == n]
    rows = sorted(vectors, key=lambda v: tuple(i for i, b in enumerate(v) if b))
    return torch.tensor(rows, dtype=torch.float64)


def reference_masked_weight(weight, logits, noise, n, m, *, tau, kappa, hard, lam, upstream):
    """float64 plain autograd: (output, d loss/d logits, d loss/d weight)."""
    w = weight.detach().double().requires_grad_(True)
    pi = logits.detach().double().requires_grad_(True)
    scores = kappa * pi + (0.0 if noise is None else noise.double())
    z = scores / tau
    e = torch.exp(z - z.max(-1, keepdim=True).values.detach())
    y = e / e.sum(-1, keepdim=True)
    if hard:
        one_hot = (torch.arange(y.shape[-1]) == scores.argmax(-1, keepdim=True)).double()
        y = one_hot + (y - y.detach())
    mask = (y @ brute_force_candidates(n, m)).reshape(w.shape)
    out = w * mask
    loss = (upstream.double() * out).sum() - lam * ((w.detach() * mask) ** 2).sum()
    loss.backward()
    return out.detach(), pi.grad, w.grad


def assert_close_fp32(actual, expected):
    """fp32 vs float64 reference: rtol 1e-5, atol 1e-5 or 1e-6 of the largest entry.

    The softmax backward subtracts sum(y * grad) from grad and multiplies by kappa/tau, so fp32
    rounding grows with kappa/tau; PyTorch's own fp32 autograd shows the same ~5e-7 relative error.
    """
    expected = torch.as_tensor(expected, dtype=torch.float64)
    atol = max(1e-5, 1e-6 * expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=atol)


def make_case(seed, rows, groups, n, m, *, with_noise, dtype=torch.float32):
    num_c = len(brute_force_candidates(n, m))
    weight = torch.randn(rows, groups * m, generator=seeded(seed)).to(dtype)
    logits = 0.01 * torch.randn(rows, groups, num_c, generator=seeded(seed + 1))
    noise = gumbel_noise(logits.shape, generator=seeded(seed + 2)) if with_noise else None
    upstream = torch.randn(rows, groups * m, generator=seeded(seed + 3)).to(dtype)
    return weight, logits, noise, upstream


CASES = [
    # (n, m, tau, kappa)
    (2, 4, 4.0, 100.0),
    (2, 4, 1.0, 300.0),
    (1, 4, 2.0, 100.0),
    (4, 8, 4.0, 100.0),
]


@pytest.mark.parametrize("n,m,tau,kappa", CASES)
@pytest.mark.parametrize("with_noise", [False, True], ids=["nonoise", "noise"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("lam", [0.0, 0.3], ids=["reg0", "reg"])
@pytest.mark.parametrize("weight_grad", [False, True], ids=["frozenW", "trainW"])
def test_masked_weight_matches_plain_autograd(n, m, tau, kappa, with_noise, hard, lam, weight_grad):
    weight, logits, noise, upstream = make_case(7 * m + n, 6, 5, n, m, with_noise=with_noise)
    w_leaf = weight.clone().requires_grad_(weight_grad)
    pi_leaf = logits.clone().requires_grad_(True)

    out = masked_weight(w_leaf, pi_leaf, nm_candidates(n, m), temperature=tau,
                        logit_scale=kappa, noise_RGC=noise, hard=hard, reg_weight=lam)
    out.backward(upstream)

    ref_out, ref_logit_grad, ref_weight_grad = reference_masked_weight(
        weight, logits, noise, n, m, tau=tau, kappa=kappa, hard=hard, lam=lam, upstream=upstream)
    assert out.dtype == torch.float32 and pi_leaf.grad.dtype == torch.float32
    assert_close_fp32(out, ref_out)
    assert ref_logit_grad.abs().max() > 1e-2  # the comparison is not vacuous
    assert_close_fp32(pi_leaf.grad, ref_logit_grad)
    if weight_grad:
        assert_close_fp32(w_leaf.grad, ref_weight_grad)
    else:
        assert w_leaf.grad is None


def test_regulariser_changes_the_logit_gradient():
    """Guards the test above: lambda = 0.3 must move the logit gradient well past tolerance."""
    weight, logits, noise, upstream = make_case(3, 6, 5, 2, 4, with_noise=True)
    grads = []
    for lam in (0.0, 0.3):
        pi = logits.clone().requires_grad_(True)
        masked_weight(weight, pi, nm_candidates(2, 4), temperature=4.0, logit_scale=100.0,
                      noise_RGC=noise, reg_weight=lam).backward(upstream)
        grads.append(pi.grad)
    assert (grads[0] - grads[1]).abs().max() > 1e-2


def test_bf16_weight_keeps_fp32_logit_gradient():
    weight, logits, noise, upstream = make_case(21, 4, 3, 2, 4, with_noise=True, dtype=torch.bfloat16)
    w_leaf = weight.clone().requires_grad_(True)
    pi_leaf = logits.clone().requires_grad_(True)
    out = masked_weight(w_leaf, pi_leaf, nm_candidates(2, 4), temperature=4.0, logit_scale=100.0,
                        noise_RGC=noise, reg_weight=0.3)
    out.backward(upstream)
    assert out.dtype == torch.bfloat16
    assert pi_leaf.grad.dtype == torch.float32
    assert w_leaf.grad.dtype == torch.bfloat16

    ref_out, ref_logit_grad, ref_weight_grad = reference_masked_weight(
        weight, logits, noise, 2, 4, tau=4.0, kappa=100.0, hard=False, lam=0.3, upstream=upstream)
    # bf16 values are exact in float64, and the mask maths runs in fp32: fp32 tolerance holds.
    assert_close_fp32(pi_leaf.grad, ref_logit_grad)
    # Forward and weight gradient are rounded to bf16 (8 mantissa bits).
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(w_leaf.grad.double(), ref_weight_grad, rtol=1e-2, atol=1e-2)


def hand_regulariser_logit_grad(weight, logits, noise, candidates, *, tau, kappa, lam):
    """numpy VJP of L = -lam * sum((W M~)^2): v = dL/dM~ = -2 lam W^2 M~, chained by hand."""
    rows, groups, num_c = logits.shape
    S = candidates.double().numpy()  # [C, M]
    z = (kappa * logits.double().numpy() + noise.double().numpy()) / tau
    y = np.exp(z - z.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)
    mask = y @ S  # [R, G, M]
    w = weight.double().numpy().reshape(rows, groups, -1)
    v = -2.0 * lam * w ** 2 * mask
    grad = np.zeros_like(y)
    for r in range(rows):
        for g in range(groups):
            dL_dy = S @ v[r, g]  # dM/dy_k = S_k
            jac = np.diag(y[r, g]) - np.outer(y[r, g], y[r, g])  # dy/dz
            grad[r, g] = (jac.T @ dL_dy) * kappa / tau  # dz/dpi = kappa / tau
    return grad


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_regulariser_gradient_three_ways(n, m):
    tau, kappa, lam = 4.0, 100.0, 0.5
    candidates = nm_candidates(n, m)
    weight, logits, noise, _ = make_case(40 + m, 5, 4, n, m, with_noise=True)

    # (a) plain autograd through soft_mask.
    pi_a = logits.clone().requires_grad_(True)
    mask = soft_mask(pi_a, candidates, temperature=tau, logit_scale=kappa, noise_RGC=noise)
    loss = -lam * ((weight.detach() * mask.reshape(weight.shape)) ** 2).sum()
    loss.backward()

    # (b) the hand formula.
    expected = hand_regulariser_logit_grad(weight, logits, noise, candidates,
                                           tau=tau, kappa=kappa, lam=lam)
    assert np.abs(expected).max() > 1e-2
    assert_close_fp32(pi_a.grad, expected)

    # (c) masked_weight with the regulariser folded in, zero upstream gradient.
    pi_c = logits.clone().requires_grad_(True)
    out = masked_weight(weight, pi_c, candidates, temperature=tau, logit_scale=kappa,
                        noise_RGC=noise, reg_weight=lam)
    out.backward(torch.zeros_like(out))
    assert_close_fp32(pi_c.grad, expected)


def test_sparse_weight_regularizer_hand_case():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, -2.0, 1.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 0.5, 1.0], [0.25, 1.0, 0.0, 2.0]], requires_grad=True)
    # (1)^2 + 0 + (1.5)^2 + 4^2 + (-0.25)^2 + 0.5^2 + 0 + 2^2 = 1 + 2.25 + 16 + 0.0625 + 0.25 + 4
    value = sparse_weight_regularizer(weight, mask.reshape(2, 1, 4))  # [R, G, M] layout accepted
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(23.5625, abs=1e-6)
    value.backward()
    assert weight.grad is None  # W is detached: the term only moves the mask
    # d/dM sum((W M)^2) = 2 W^2 M
    torch.testing.assert_close(mask.grad, 2 * weight.detach() ** 2 * mask.detach())


def test_sparse_weight_regularizer_bf16_weight_in_fp32():
    weight = torch.tensor([[3.0, 5.0]], dtype=torch.bfloat16)
    mask = torch.tensor([[1.0, 0.5]])
    assert sparse_weight_regularizer(weight, mask).item() == 9.0 + 6.25
