"""N:M candidate masks: every way to keep N of M consecutive weights."""
import numbers
from functools import lru_cache
from itertools import combinations
from math import comb

import torch

MAX_M = 8  # C(8, 4) = 70 candidates; larger M makes the logits bigger than the weights


def validate_nm(n: int, m: int) -> tuple:
    """(n, m) as plain ints; a ValueError naming the bad value unless 0 < n < m <= MAX_M."""
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (n, m)):
        raise ValueError(f"N:M must be integers, got {n!r}:{m!r}")
    n, m = int(n), int(m)
    if not 2 <= m <= MAX_M:
        raise ValueError(f"M={m} is out of range: use 2 <= M <= {MAX_M} (2:4 is the usual choice)")
    if not 0 < n < m:
        raise ValueError(f"N={n} with M={m} is not a sparsity pattern: use 0 < N < M, e.g. 2:4")
    return n, m


def num_candidates(n: int, m: int) -> int:
    """C(M, N), the number of candidate masks per group."""
    n, m = validate_nm(n, m)
    return comb(m, n)


@lru_cache(maxsize=None)
def _candidate_rows(n: int, m: int) -> tuple:
    return tuple(tuple(int(i in kept) for i in range(m)) for kept in combinations(range(m), n))


def nm_candidates(n: int, m: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """All C(M,N) binary keep-vectors, shape [C, M], in lexicographic order of kept positions.

    For 2:4 the rows are 1100 1010 1001 0110 0101 0011 (kept (0,1) (0,2) ... (2,3)).
    """
    n, m = validate_nm(n, m)
    return torch.tensor(_candidate_rows(n, m), dtype=dtype, device=device)


def parse_nm(pattern: str) -> tuple:
    """Parse "N:M" (e.g. "2:4") into (n, m) with a clear error for anything else."""
    try:
        n_text, m_text = pattern.split(":")
        n, m = int(n_text), int(m_text)
    except (AttributeError, ValueError):
        raise ValueError(f"sparsity pattern {pattern!r} is not of the form N:M, e.g. '2:4'") from None
    return validate_nm(n, m)
