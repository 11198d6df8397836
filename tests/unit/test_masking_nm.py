"""Hard (eval) masks and the N:M checkers, against numpy reshapes and hand-made masks.

Reference for hard_mask: numpy argmax over the candidate axis, indexing a brute-force candidate
list; exactness is checked with our own reshape/sum as well as with ``is_exact_nm``.
"""
import itertools

import numpy as np
import pytest
import torch

from megatron_masklm.masking import (
    group_counts, hard_mask, is_exact_nm, nm_candidates, nm_violations,
)

PATTERNS = [(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8)]
SHAPES = [(1, 1), (3, 2), (5, 8), (16, 4)]  # (rows, groups)


def brute_force_candidates(n, m):
    vectors = [v for v in itertools.product((0, 1), repeat=m) if sum(v) == n]
    return np.array(sorted(vectors, key=lambda v: tuple(i for i, b in enumerate(v) if b)), float)


@pytest.mark.parametrize("n,m", PATTERNS, ids=[f"{n}:{m}" for n, m in PATTERNS])
@pytest.mark.parametrize("rows,groups", SHAPES, ids=[f"{r}x{g}" for r, g in SHAPES])
def test_hard_mask_is_exact_nm_and_argmax_candidate(n, m, rows, groups):
    reference_candidates = brute_force_candidates(n, m)
    num_c = len(reference_candidates)
    generator = torch.Generator().manual_seed(1000 * n + 10 * m + rows)
    logits = torch.randn(rows, groups, num_c, generator=generator)

    mask = hard_mask(logits, nm_candidates(n, m))

    expected = reference_candidates[logits.numpy().argmax(-1)]  # [R, G, M]
    assert tuple(mask.shape) == (rows, groups, m)
    np.testing.assert_array_equal(mask.numpy(), expected)
    flat = mask.reshape(rows, groups * m)
    assert set(np.unique(flat.numpy())) <= {0.0, 1.0}
    per_group = flat.numpy().reshape(rows, groups, m).sum(-1)
    assert (per_group == n).all()
    assert is_exact_nm(flat, n, m)
    assert nm_violations(flat, n, m) == 0


def test_hard_mask_hand_case():
    # 2:4, one row, two groups: candidate 4 (0101) then candidate 0 (1100).
    logits = torch.tensor([[[0.0, 0.1, -1.0, 0.2, 0.9, 0.3], [5.0, 1.0, 2.0, 3.0, 4.0, -5.0]]])
    mask = hard_mask(logits, nm_candidates(2, 4))
    assert mask.reshape(1, 8).tolist() == [[0, 1, 0, 1, 1, 1, 0, 0]]


def test_one_violating_group_is_detected():
    mask = torch.tensor([
        [1, 1, 0, 0, 0, 1, 0, 1],
        [1, 1, 1, 0, 0, 0, 1, 1],  # first group keeps 3 of 4
    ])
    assert group_counts(mask, 4).tolist() == [[2, 2], [3, 2]]
    assert nm_violations(mask, 2, 4) == 1
    assert not is_exact_nm(mask, 2, 4)


def test_all_dense_counts_every_group():
    mask = torch.ones(3, 8, dtype=torch.bool)
    assert group_counts(mask, 4).tolist() == [[4, 4]] * 3
    assert nm_violations(mask, 2, 4) == 6
    assert not is_exact_nm(mask, 2, 4)


def test_sparser_weight_is_not_exact_but_does_not_violate():
    # A pruned weight (values, not a mask): group 0 keeps 1, group 1 keeps 2 non-zeros.
    weight = torch.tensor([[0.5, 0.0, 0.0, 0.0, -1.0, 0.0, 2.0, 0.0]])
    assert group_counts(weight, 4).tolist() == [[1, 2]]
    assert nm_violations(weight, 2, 4) == 0
    assert not is_exact_nm(weight, 2, 4)


def test_exact_weight_values_count_as_nonzeros():
    weight = torch.tensor([[0.0, -3.0, 1e-30, 0.0, 7.0, 0.0, 0.0, -0.5]])
    assert is_exact_nm(weight, 2, 4)
    assert nm_violations(weight, 2, 4) == 0


def test_group_counts_with_m_eight():
    mask = torch.tensor([[1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0]])
    assert group_counts(mask, 8).tolist() == [[4, 5]]
    assert nm_violations(mask, 4, 8) == 1


@pytest.mark.parametrize("shape", [(2, 6), (8,), (2, 2, 4)])
def test_group_counts_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="M=4"):
        group_counts(torch.ones(shape), 4)


def test_checkers_validate_pattern():
    with pytest.raises(ValueError, match="N=4"):
        is_exact_nm(torch.ones(1, 4), 4, 4)
    with pytest.raises(ValueError, match="M=9"):
        nm_violations(torch.ones(1, 9), 1, 9)
