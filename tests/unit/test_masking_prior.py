"""One-shot prior: pi_k += alpha * std(pi) * (overlap(M0, S_k) - N/2) (SPEC section 2).

References: overlaps and shifts written out by hand for 2:4 and 1:4, the unbiased std computed
with plain Python arithmetic, and the argmax agreement rate of the prior candidate.
"""
import math

import pytest
import torch

from megatron_masklm.masking import (
    apply_prior_, candidate_overlap, hard_mask, nm_candidates, prior_logit_shift, soft_mask,
)

PRIOR_2_4 = torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1]])  # group 0 = 1100, group 1 = 0101
# Candidates 1100 1010 1001 0110 0101 0011 share this many kept positions with each group:
OVERLAP_2_4 = [[2, 1, 1, 1, 1, 0], [1, 0, 1, 1, 2, 1]]
LOGITS_2_4 = [[0.10, -0.20, 0.30, 0.00, 0.05, -0.10], [0.20, 0.40, -0.30, 0.10, 0.00, 0.25]]


def test_candidate_overlap_hand_case():
    overlap = candidate_overlap(PRIOR_2_4, nm_candidates(2, 4))
    assert overlap.dtype == torch.float32
    assert overlap.tolist() == [OVERLAP_2_4]


def test_prior_logit_shift_hand_case_2_4():
    shift = prior_logit_shift(PRIOR_2_4, nm_candidates(2, 4), strength=3.0, logits_std=0.5)
    expected = [[[1.5 * (o - 1) for o in group] for group in OVERLAP_2_4]]  # N/2 = 1
    torch.testing.assert_close(shift, torch.tensor(expected), rtol=0, atol=1e-7)


def test_prior_logit_shift_hand_case_1_4():
    # 1:4 candidates 1000 0100 0010 0001; prior keeps position 2; N/2 = 0.5.
    prior = torch.tensor([[0, 0, 1, 0]])
    shift = prior_logit_shift(prior, nm_candidates(1, 4), strength=2.0, logits_std=0.25)
    torch.testing.assert_close(shift, torch.tensor([[[-0.25, -0.25, 0.25, -0.25]]]))


def test_apply_prior_with_explicit_std_is_exact_and_in_place():
    logits = torch.tensor([LOGITS_2_4])
    before = logits.clone()
    out = apply_prior_(logits, PRIOR_2_4, nm_candidates(2, 4), strength=3.0, logits_std=0.2)
    assert out is logits
    shift = [[[3.0 * 0.2 * (o - 1) for o in group] for group in OVERLAP_2_4]]
    torch.testing.assert_close(logits, before + torch.tensor(shift), rtol=0, atol=1e-7)


def test_apply_prior_default_std_is_unbiased_std_before_update():
    flat = [v for group in LOGITS_2_4 for v in group]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((v - mean) ** 2 for v in flat) / (len(flat) - 1))  # Bessel-corrected
    logits = torch.tensor([LOGITS_2_4])
    apply_prior_(logits, PRIOR_2_4, nm_candidates(2, 4), strength=3.0)
    expected = [[v + 3.0 * std * (o - 1) for v, o in zip(lg, ov)]
                for lg, ov in zip(LOGITS_2_4, OVERLAP_2_4)]
    torch.testing.assert_close(logits, torch.tensor([expected]), rtol=0, atol=1e-6)


def random_prior(rows, groups, seed):
    """A random exact 2:4 prior mask and the candidate index it picks in each group."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, 6, (rows, groups), generator=generator)
    two_four = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1],
                             [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]])
    return two_four[index].reshape(rows, groups * 4), index


def test_strong_prior_wins_argmax_in_every_group():
    prior, index = random_prior(16, 8, seed=3)
    generator = torch.Generator().manual_seed(4)
    logits = 0.01 * torch.randn(16, 8, 6, generator=generator)
    # alpha = 20: the prior candidate leads its runner-up by 20 std, ~14 std of a noise gap.
    apply_prior_(logits, prior, nm_candidates(2, 4), strength=20.0)
    assert torch.equal(logits.argmax(-1), index)
    assert torch.equal(hard_mask(logits, nm_candidates(2, 4)).reshape(16, 32), prior.float())


def test_default_prior_wins_argmax_in_most_groups():
    # alpha = 3, std(pi) ~ 0.01: the prior candidate gets +3 std, four rivals +0, one -3 std, so
    # it stays the argmax with probability ~0.945 (numpy Monte Carlo of N(0,1) scores), not 1.
    prior, index = random_prior(32, 16, seed=5)
    generator = torch.Generator().manual_seed(6)
    logits = 0.01 * torch.randn(32, 16, 6, generator=generator)
    apply_prior_(logits, prior, nm_candidates(2, 4), strength=3.0)
    agreement = (logits.argmax(-1) == index).double().mean().item()
    # 512 groups: binomial SE ~0.010, so 0.945 - 5 SE ~ 0.895.
    assert agreement > 0.89, agreement


def test_zero_strength_is_a_no_op():
    prior, _ = random_prior(4, 3, seed=7)
    logits = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(8))
    before = logits.clone()
    apply_prior_(logits, prior, nm_candidates(2, 4), strength=0.0)
    assert torch.equal(logits, before)


def test_uniform_shift_does_not_change_the_mask():
    # An all-kept prior overlaps every 2:4 candidate in 2 positions: the same shift everywhere.
    logits = 0.01 * torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(9))
    candidates = nm_candidates(2, 4)
    kwargs = dict(temperature=4.0, logit_scale=100.0)
    original, before = logits.clone(), soft_mask(logits, candidates, **kwargs)
    apply_prior_(logits, torch.ones(3, 8), candidates, strength=3.0, logits_std=0.5)
    # 3 * 0.5 * (2 - 1) = 1.5 added to every logit
    torch.testing.assert_close(logits - original, torch.full((3, 2, 6), 1.5), rtol=0, atol=1e-6)
    torch.testing.assert_close(soft_mask(logits, candidates, **kwargs), before, rtol=0, atol=1e-5)


def test_bool_prior_is_accepted():
    logits = torch.zeros(1, 2, 6)
    apply_prior_(logits, PRIOR_2_4.bool(), nm_candidates(2, 4), strength=1.0, logits_std=1.0)
    assert logits.tolist() == [[[o - 1.0 for o in group] for group in OVERLAP_2_4]]


def test_non_binary_prior_raises_and_leaves_logits_alone():
    logits = torch.tensor([LOGITS_2_4])
    before = logits.clone()
    weights = torch.tensor([[0.5, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, -2.0]])
    with pytest.raises(ValueError, match="binary"):
        apply_prior_(logits, weights, nm_candidates(2, 4), strength=3.0)
    assert torch.equal(logits, before)


@pytest.mark.parametrize("logits_shape,prior_shape", [
    ((2, 2, 6), (1, 8)),   # rows differ
    ((1, 3, 6), (1, 8)),   # groups differ
    ((1, 2, 6), (1, 10)),  # prior input dim not divisible by M
    ((1, 2, 6), (8,)),     # prior not 2-D
])
def test_mismatched_shapes_raise_value_error(logits_shape, prior_shape):
    with pytest.raises(ValueError):
        apply_prior_(torch.zeros(logits_shape), torch.zeros(prior_shape), nm_candidates(2, 4),
                     strength=3.0, logits_std=1.0)


@pytest.mark.parametrize("num_c", [1, 5])
def test_wrong_candidate_count_raises_value_error(num_c):
    with pytest.raises(ValueError):
        apply_prior_(torch.zeros(1, 2, num_c), PRIOR_2_4, nm_candidates(2, 4),
                     strength=3.0, logits_std=1.0)


def test_fixed_logits_are_one_hot_on_the_mask_by_hand():
    from megatron_masklm.masking import fixed_logits

    logits = fixed_logits(PRIOR_2_4, nm_candidates(2, 4))
    # 1100 is candidate 0, 0101 is candidate 4 (the order above)
    assert logits.tolist() == [[[1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0]]]
    assert torch.equal(hard_mask(logits, nm_candidates(2, 4)).reshape(1, 8), PRIOR_2_4.float())
    with pytest.raises(ValueError, match="exactly 2 of every 4"):
        fixed_logits(torch.tensor([[1, 1, 1, 0, 0, 1, 0, 1]]), nm_candidates(2, 4))
    with pytest.raises(ValueError, match="exactly 2 of every 4"):
        fixed_logits(torch.tensor([[2, 0, 0, 0, 0, 1, 0, 1]]), nm_candidates(2, 4))
