"""One-shot N:M pruning against hand-computed cases and an independent textbook OBS reference."""
import pytest
import torch

from megatron_masklm.masking import is_exact_nm
from megatron_masklm.oneshot import (InputStatistics, magnitude_mask, nm_keep_mask, sparsegpt,
                                     wanda_mask)


def test_magnitude_by_hand_with_ties_keeping_the_lower_index():
    weight = torch.tensor([[0.1, -0.9, 0.5, 0.2, 1.0, 1.0, 1.0, -1.0]])
    expected = torch.tensor([[False, True, True, False, True, True, False, False]])
    assert torch.equal(magnitude_mask(weight, 2, 4), expected)
    assert torch.equal(magnitude_mask(weight, 1, 4),
                       torch.tensor([[False, True, False, False, True, False, False, False]]))


def test_wanda_by_hand_input_norms_change_the_choice():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    sq_norms = torch.tensor([100.0, 1.0, 1.0, 0.25])  # ||x|| = 10, 1, 1, 0.5
    # |w| * ||x||: 10, 2, 3, 2 -> keep inputs 0 and 2 (magnitude would keep 2 and 3)
    assert torch.equal(wanda_mask(weight, sq_norms, 2, 4), torch.tensor([[True, False, True, False]]))
    assert torch.equal(magnitude_mask(weight, 2, 4), torch.tensor([[False, False, True, True]]))
    with pytest.raises(ValueError, match="inputs"):
        wanda_mask(weight, torch.ones(3), 2, 4)


def test_statistics_match_the_direct_sums():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(3, 5, 8, generator=gen) for _ in range(4)]
    stats = InputStatistics(8)
    for x in batches:
        stats.add(x)
    X = torch.cat([x.reshape(-1, 8) for x in batches]).double()
    torch.testing.assert_close(stats.sq_norms.double(), X.pow(2).sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.hessian.double(), 2 * X.t() @ X / X.shape[0], rtol=1e-5, atol=1e-5)
    assert stats.tokens == 60


def _reference_sparsegpt(W, H, n, m, percdamp, fixed=None):
    """Textbook sequential OBS: for each column, the inverse of the Hessian restricted to the
    columns not yet processed, inverted directly (no Cholesky trick, no blocks). ``fixed``: the
    keep-mask to prune by instead of choosing one."""
    W, H = W.double().clone(), H.double().clone()
    H += percdamp * torch.diagonal(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    cols = W.shape[1]
    keep = torch.ones_like(W, dtype=torch.bool) if fixed is None else fixed.clone()
    for i in range(cols):
        inverse = torch.linalg.inv(H[i:, i:])
        if i % m == 0 and fixed is None:
            d2 = torch.tensor([torch.linalg.inv(H[j:, j:])[0, 0] for j in range(i, i + m)],
                              dtype=W.dtype)
            scores = W[:, i:i + m] ** 2 / d2
            keep[:, i:i + m] = nm_keep_mask(scores, n, m)
        q = torch.where(keep[:, i], W[:, i], torch.zeros_like(W[:, i]))
        error = (W[:, i] - q) / inverse[0, 0]
        W[:, i:] -= error.unsqueeze(1) * inverse[0].unsqueeze(0)
        W[:, i] = q
    return keep, W


@pytest.mark.parametrize("n, m, blocksize", [(2, 4, 8), (1, 4, 4), (2, 4, 128), (4, 8, 16)])
def test_sparsegpt_equals_sequential_obs(n, m, blocksize):
    gen = torch.Generator().manual_seed(n * 10 + m)
    W = torch.randn(6, 32, generator=gen)
    X = torch.randn(200, 32, generator=gen) * torch.linspace(0.2, 3.0, 32)
    H = 2 * X.t() @ X / X.shape[0]
    keep, updated = sparsegpt(W, H, n, m, blocksize=blocksize, percdamp=0.01)
    ref_keep, ref_W = _reference_sparsegpt(W, H, n, m, 0.01)
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(updated.double(), ref_W, rtol=1e-4, atol=1e-4)
    assert is_exact_nm(keep, n, m) and torch.all(updated[~keep] == 0)
    mask_only, none = sparsegpt(W, H, n, m, blocksize=blocksize, update=False)
    assert none is None and torch.equal(mask_only, keep)


def _random_nm_mask(rows, inputs, n, m, gen):
    scores = torch.rand(rows, inputs, generator=gen)
    return nm_keep_mask(scores, n, m)


@pytest.mark.parametrize("n, m, blocksize", [(2, 4, 8), (2, 4, 128), (1, 4, 4), (4, 8, 16)])
def test_sparsegpt_with_a_given_mask_equals_sequential_obs_for_that_mask(n, m, blocksize):
    """The one-shot recovery of a learned mask: OBS's update with the mask given, not chosen."""
    gen = torch.Generator().manual_seed(7 * n + m)
    W = torch.randn(6, 32, generator=gen)
    X = torch.randn(200, 32, generator=gen) * torch.linspace(0.2, 3.0, 32)
    H = 2 * X.t() @ X / X.shape[0]
    given = _random_nm_mask(6, 32, n, m, gen)
    keep, updated = sparsegpt(W, H, n, m, blocksize=blocksize, percdamp=0.01, keep_RI=given)
    _, ref_W = _reference_sparsegpt(W, H, n, m, 0.01, fixed=given)
    assert torch.equal(keep, given)
    torch.testing.assert_close(updated.double(), ref_W, rtol=1e-4, atol=1e-4)
    assert torch.all(updated[~given] == 0)
    chosen, _ = sparsegpt(W, H, n, m, blocksize=blocksize, percdamp=0.01)
    assert not torch.equal(chosen, given)  # the reference did not just pick the same mask


def test_sparsegpt_given_its_own_mask_gives_its_weights_bit_for_bit():
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(16, 64, generator=gen)
    X = torch.randn(300, 64, generator=gen)
    H = 2 * X.t() @ X / X.shape[0]
    keep, updated = sparsegpt(W, H, 2, 4, blocksize=16)
    again, same = sparsegpt(W, H, 2, 4, blocksize=16, keep_RI=keep)
    assert torch.equal(again, keep) and torch.equal(same, updated)


def test_the_update_for_a_given_mask_reconstructs_better_than_the_mask_alone():
    gen = torch.Generator().manual_seed(11)
    W = torch.randn(32, 64, generator=gen)
    X = (torch.randn(500, 64, generator=gen) @ (torch.eye(64) + 0.3 * torch.randn(64, 64, generator=gen)))
    stats = InputStatistics(64)
    stats.add(X)
    given = _random_nm_mask(32, 64, 2, 4, gen)

    def error(weight):
        return float(((W - weight) @ X.t()).pow(2).sum())

    _, updated = sparsegpt(W, stats.hessian, 2, 4, keep_RI=given)
    assert error(updated) < 0.9 * error(W * given)  # 0.84 here


def test_a_given_mask_that_does_not_fit_is_named():
    W, H = torch.randn(2, 8), torch.eye(8)
    with pytest.raises(ValueError, match=r"keep-mask of shape \(2, 4\) does not match"):
        sparsegpt(W, H, 2, 4, keep_RI=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="not exactly 2:4"):
        sparsegpt(W, H, 2, 4, keep_RI=torch.ones(2, 8, dtype=torch.bool))


def test_reconstruction_error_sparsegpt_le_wanda_le_magnitude_with_outlier_channels():
    gen = torch.Generator().manual_seed(5)
    rows, inputs, tokens = 64, 128, 1024
    W = torch.randn(rows, inputs, generator=gen)
    scale = torch.ones(inputs)
    scale[torch.randperm(inputs, generator=gen)[:6]] = 25.0  # a few outlier input channels
    mixing = torch.eye(inputs) + 0.3 * torch.randn(inputs, inputs, generator=gen) / inputs ** 0.5
    X = (torch.randn(tokens, inputs, generator=gen) @ mixing) * scale  # correlated, like activations
    stats = InputStatistics(inputs)
    stats.add(X)

    def error(weight):
        return float(((W - weight) @ X.t()).pow(2).sum())

    magnitude = error(W * magnitude_mask(W, 2, 4))
    wanda = error(W * wanda_mask(W, stats.sq_norms, 2, 4))
    _, updated = sparsegpt(W, stats.hessian, 2, 4)
    assert error(updated) <= wanda <= magnitude, (error(updated), wanda, magnitude)
    assert error(updated) < 0.95 * wanda and wanda < 0.5 * magnitude  # clearly, not by noise


def test_every_method_is_exactly_nm_and_deterministic():
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(16, 64, generator=gen).round(decimals=1)  # many ties
    X = torch.randn(100, 64, generator=gen)
    H, sq = 2 * X.t() @ X / 100, X.pow(2).sum(0)
    for n, m in ((2, 4), (1, 4), (3, 8)):
        masks = [magnitude_mask(W, n, m), wanda_mask(W, sq, n, m), sparsegpt(W, H, n, m)[0]]
        for mask in masks:
            assert is_exact_nm(mask, n, m)
        assert torch.equal(magnitude_mask(W, n, m), masks[0])
        assert torch.equal(sparsegpt(W, H, n, m)[0], masks[2])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="divisible"):
        magnitude_mask(torch.randn(2, 6), 2, 4)
    with pytest.raises(ValueError, match="Hessian of shape"):
        sparsegpt(torch.randn(2, 8), torch.eye(4), 2, 4)
    with pytest.raises(ValueError, match="blocksize 6"):
        sparsegpt(torch.randn(2, 8), torch.eye(8), 2, 4, blocksize=6)
    with pytest.raises(ValueError, match="positive definite"):
        sparsegpt(torch.randn(2, 8), -torch.eye(8), 2, 4, percdamp=0.0)


def test_wide_statistics_use_symmetric_blocks_and_match_the_direct_sums():
    from megatron_masklm.oneshot.statistics import SYMMETRIC_BLOCK

    width = 2 * SYMMETRIC_BLOCK + 32  # three row blocks, the last one short
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(40, width, generator=gen) for _ in range(3)]
    stats = InputStatistics(width)
    for x in batches:
        stats.add(x)
    X = torch.cat(batches).double()
    H = stats.hessian
    assert torch.equal(H, H.t())
    torch.testing.assert_close(H.double(), 2 * X.t() @ X / X.shape[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="obs"), "not one of"),
    (dict(method="sparsegpt", blocksize=126), "blocksize 126 is not a multiple of M=4.*--blocksize 124"),
    (dict(method="sparsegpt", n=2, m=3), "pattern 2:3.*--blocksize 126"),
    (dict(method="sparsegpt", blocksize=0), "blocksize 0 must be positive"),
    (dict(method="sparsegpt", percdamp=-0.1), "percdamp"),
    (dict(method="wanda", n=4, m=4), "not a sparsity pattern"),
    (dict(method="wanda", micro_batch_size=0), "micro_batch_size"),
])
def test_prune_config_refuses_bad_settings(kwargs, message):
    from megatron_masklm.oneshot import PruneConfig

    with pytest.raises(ValueError, match=message):
        PruneConfig(**kwargs)
    assert PruneConfig(method="magnitude").needs_data is False
