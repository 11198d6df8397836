"""Gumbel noise statistics and the Gumbel-softmax soft/hard mask (SPEC section 2).

References: closed-form Gumbel(0,1) moments and CDF, the Gumbel-max trick (argmax of
kappa*pi + g is distributed as softmax(kappa*pi)), and a float64 numpy implementation of
M~ = sum_k softmax((kappa*pi + g)/tau)_k S_k with its hand-written vector-Jacobian product.
All statistical bounds are 5 standard errors (or a chi-square critical value) on fixed seeds.
"""
import math

import numpy as np
import pytest
import torch

from megatron_masklm.masking import expected_mask, gumbel_noise, nm_candidates, soft_mask

EULER_GAMMA = 0.5772156649015329
GUMBEL_VAR = math.pi ** 2 / 6
GUMBEL_KURTOSIS = 5.4  # mu4 / sigma^4 of the Gumbel distribution (excess kurtosis 12/5)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def reference_soft_mask(logits, noise, candidates, tau, kappa):
    """float64 numpy: (probs [R,G,C], mask [R,G,M]) of the Gumbel-softmax mask."""
    scores = kappa * logits.double().numpy()
    if noise is not None:
        scores = scores + noise.double().numpy()
    z = scores / tau
    e = np.exp(z - z.max(-1, keepdims=True))
    y = e / e.sum(-1, keepdims=True)
    return y, y @ candidates.double().numpy()


def reference_logit_vjp(y, upstream_RGM, candidates, tau, kappa):
    """d(sum(upstream * M~))/d pi by hand: dM/dy_k = S_k, dy/dz = diag(y) - y y^T, dz/dpi = kappa/tau."""
    grad_y = upstream_RGM @ candidates.double().numpy().T  # [R,G,C]
    jac = np.einsum("rgc,cd->rgcd", y, np.eye(y.shape[-1])) - np.einsum("rgc,rgd->rgcd", y, y)
    return np.einsum("rgcd,rgd->rgc", jac, grad_y) * kappa / tau


def test_gumbel_noise_dtype_shape_finite_and_seeded():
    a = gumbel_noise((64, 33, 6), generator=seeded(7))
    b = gumbel_noise((64, 33, 6), generator=seeded(7))
    c = gumbel_noise((64, 33, 6), generator=seeded(8))
    assert a.dtype == torch.float32 and tuple(a.shape) == (64, 33, 6)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_gumbel_noise_mean_variance_and_cdf():
    n = 1_000_000
    g = gumbel_noise((n,), generator=seeded(0)).double()
    mean, var = g.mean().item(), g.var().item()
    # 5 standard errors: SE(mean) = sigma/sqrt(n); SE(var) = sigma^2 sqrt((kurtosis - 1)/n).
    assert abs(mean - EULER_GAMMA) < 5 * math.sqrt(GUMBEL_VAR / n)
    assert abs(var - GUMBEL_VAR) < 5 * GUMBEL_VAR * math.sqrt((GUMBEL_KURTOSIS - 1) / n)
    # Empirical CDF against F(x) = exp(-exp(-x)), each point within 5 binomial SEs.
    for x in (-1.5, 0.0, 0.5, 2.0, 5.0):
        p = math.exp(-math.exp(-x))
        freq = (g <= x).double().mean().item()
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n), (x, freq, p)


def test_gumbel_max_trick_matches_softmax():
    rows = 200_000
    logits = torch.tensor([0.3, -0.5, 1.0, 0.0, 0.2, -1.0])
    kappa = 2.0
    weights = [math.exp(kappa * v) for v in logits.tolist()]
    expected = np.array([w / sum(weights) for w in weights])

    noise = gumbel_noise((rows, 6), generator=seeded(123))
    winners = (kappa * logits + noise).argmax(-1)
    counts = np.bincount(winners.numpy(), minlength=6).astype(float)
    freq = counts / rows

    # Each frequency within 5 binomial standard errors of softmax(kappa * pi) ...
    bound = 5 * np.sqrt(expected * (1 - expected) / rows)
    assert (np.abs(freq - expected) < bound).all(), (freq, expected)
    # ... and Pearson's chi-square below 20.515, the 0.999 quantile for 5 degrees of freedom.
    chi2 = (((counts - rows * expected) ** 2) / (rows * expected)).sum()
    assert chi2 < 20.515, chi2


@pytest.mark.parametrize("n,m", [(1, 4), (2, 4), (3, 4), (2, 8), (4, 8)])
@pytest.mark.parametrize("with_noise", [False, True])
def test_soft_mask_value_and_group_sums(n, m, with_noise):
    candidates = nm_candidates(n, m)
    logits = 0.01 * torch.randn(5, 3, len(candidates), generator=seeded(n * 10 + m))
    noise = gumbel_noise(logits.shape, generator=seeded(99)) if with_noise else None
    mask = soft_mask(logits, candidates, temperature=4.0, logit_scale=100.0, noise_RGC=noise)
    _, expected = reference_soft_mask(logits, noise, candidates, 4.0, 100.0)
    assert mask.dtype == torch.float32 and tuple(mask.shape) == (5, 3, m)
    np.testing.assert_allclose(mask.double().numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mask.double().sum(-1).numpy(), n, rtol=0, atol=1e-5)
    assert ((mask >= 0) & (mask <= 1 + 1e-6)).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_expected_mask_is_the_noise_free_soft_mask_without_autograd(n, m):
    """The monitoring path (the logged regulariser) against the float64 reference; the logits
    it reads are left as they were (its softmax works in place on a copy)."""
    candidates = nm_candidates(n, m)
    logits = (0.01 * torch.randn(6, 4, len(candidates), generator=seeded(m))).requires_grad_()
    before = logits.detach().clone()
    mask = expected_mask(logits, candidates, temperature=0.7, logit_scale=300.0)
    _, expected = reference_soft_mask(logits.detach(), None, candidates, 0.7, 300.0)
    assert not mask.requires_grad and tuple(mask.shape) == (6, 4, m)
    np.testing.assert_allclose(mask.double().numpy(), expected, rtol=0, atol=1e-6)
    assert torch.equal(logits.detach(), before)


def test_soft_mask_at_low_temperature_is_argmax_candidate():
    # Per group the logits are a random permutation of 0, 0.1, ..., 0.5: the gap to the
    # runner-up is 0.1, so at tau = 1e-3 the softmax is one-hot up to exp(-100).
    candidates = nm_candidates(2, 4)
    generator = seeded(5)
    perms = torch.stack([torch.randperm(6, generator=generator) for _ in range(4 * 7)])
    logits = (0.1 * perms.float()).reshape(4, 7, 6)
    mask = soft_mask(logits, candidates, temperature=1e-3, logit_scale=1.0)
    winners = perms.reshape(4, 7, 6).argmax(-1)  # index of the value 0.5
    two_four = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1],
                             [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.float32)
    torch.testing.assert_close(mask, two_four[winners], rtol=0, atol=1e-6)


def _grad_of_soft_mask(logits, candidates, upstream, *, hard, noise, tau, kappa):
    leaf = logits.clone().requires_grad_(True)
    mask = soft_mask(leaf, candidates, temperature=tau, logit_scale=kappa,
                     noise_RGC=noise, hard=hard)
    (mask * upstream).sum().backward()
    return mask.detach(), leaf.grad


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_hard_forward_is_one_hot_and_gradient_is_straight_through(n, m):
    tau, kappa = 2.0, 100.0
    candidates = nm_candidates(n, m)
    logits = 0.01 * torch.randn(6, 5, len(candidates), generator=seeded(11 + m))
    noise = gumbel_noise(logits.shape, generator=seeded(12 + n))
    upstream = torch.randn(6, 5, m, generator=seeded(13))

    hard_value, hard_grad = _grad_of_soft_mask(logits, candidates, upstream, hard=True,
                                               noise=noise, tau=tau, kappa=kappa)
    _, soft_grad = _grad_of_soft_mask(logits, candidates, upstream, hard=False,
                                      noise=noise, tau=tau, kappa=kappa)

    # Forward: exactly the sampled candidate, argmax of kappa*pi + g (computed in float64).
    scores = kappa * logits.double() + noise.double()
    top2 = scores.topk(2, dim=-1).values
    assert (top2[..., 0] - top2[..., 1]).min() > 1e-4  # no near-ties for fp32 vs fp64
    assert torch.equal(hard_value, candidates[scores.argmax(-1)])

    # Backward: the soft gradient, which equals the hand-written VJP.
    y, _ = reference_soft_mask(logits, noise, candidates, tau, kappa)
    expected = reference_logit_vjp(y, upstream.double().numpy(), candidates, tau, kappa)
    assert np.abs(expected).max() > 1e-2  # the check is not vacuous
    np.testing.assert_allclose(soft_grad.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hard_grad.double().numpy(), expected, rtol=1e-5, atol=1e-5)
