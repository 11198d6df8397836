"""N:M candidate enumeration and pattern parsing, checked against a brute-force enumeration.

Reference: every length-M 0/1 vector from itertools.product, kept when it has N ones, sorted
by its tuple of kept positions (SPEC section 2), and math.comb for the count.
"""
import itertools
import math

import pytest
import torch

from megatron_masklm.masking import MAX_M, nm_candidates, num_candidates, parse_nm, validate_nm

VALID_NM = [(n, m) for m in range(2, 9) for n in range(1, m)]


def brute_force_candidates(n, m):
    """All 0/1 vectors of length m with n ones, ordered by their kept-position tuples."""
    vectors = [v for v in itertools.product((0, 1), repeat=m) if sum(v) == n]
    return sorted(vectors, key=lambda v: tuple(i for i, bit in enumerate(v) if bit))


def test_max_m_is_eight():
    assert MAX_M == 8


@pytest.mark.parametrize("n,m", VALID_NM, ids=[f"{n}:{m}" for n, m in VALID_NM])
def test_candidates_equal_brute_force(n, m):
    candidates = nm_candidates(n, m)
    expected = brute_force_candidates(n, m)
    assert candidates.dtype == torch.float32
    assert tuple(candidates.shape) == (math.comb(m, n), m)
    assert [tuple(int(x) for x in row) for row in candidates.tolist()] == expected
    assert num_candidates(n, m) == math.comb(m, n) == len(expected)


def test_two_four_rows_in_documented_order():
    rows = ["".join(str(int(x)) for x in row) for row in nm_candidates(2, 4).tolist()]
    assert rows == ["1100", "1010", "1001", "0110", "0101", "0011"]


def test_candidate_dtype_argument():
    candidates = nm_candidates(1, 2, dtype=torch.bool)
    assert candidates.dtype == torch.bool
    assert candidates.tolist() == [[True, False], [False, True]]


@pytest.mark.parametrize(
    "n,m,needle",
    [(0, 4, "N=0"), (4, 4, "N=4"), (5, 4, "N=5"), (1, 9, "M=9"), (2, 1, "M=1"),
     ("2", 4, "'2'"), (2, "4", "'4'"), (2.0, 4, "2.0")],
)
def test_invalid_nm_raises_naming_value(n, m, needle):
    for call in (validate_nm, num_candidates, nm_candidates):
        with pytest.raises(ValueError) as info:
            call(n, m)
        assert needle in str(info.value), (call.__name__, str(info.value))


def test_parse_nm_accepts_colon_form():
    assert parse_nm("2:4") == (2, 4)
    assert parse_nm("1:8") == (1, 8)
    assert parse_nm("4:8") == (4, 8)


@pytest.mark.parametrize("pattern", ["2-4", "2/4", "24", "2:4:8", "a:b", "", None, 24])
def test_parse_nm_rejects_malformed(pattern):
    with pytest.raises(ValueError) as info:
        parse_nm(pattern)
    assert repr(pattern) in str(info.value)


@pytest.mark.parametrize("pattern,needle", [("0:4", "N=0"), ("4:4", "N=4"), ("1:9", "M=9")])
def test_parse_nm_rejects_out_of_range(pattern, needle):
    with pytest.raises(ValueError, match=needle):
        parse_nm(pattern)


def test_numpy_integers_are_accepted_and_bools_are_not():
    np = pytest.importorskip("numpy")
    assert nm_candidates(np.int64(2), np.int32(4)).shape == (6, 4)
    with pytest.raises(ValueError, match="integers"):
        nm_candidates(True, 4)
