"""The per-user temporal split rule shared by the MovieLens loader, tables and synthetic data.

* :func:`check_split`: validate (train, valid, test) fractions;
* :func:`split_counts`: per-user split sizes (train first, then valid, then test);
* :func:`assign_splits`: the split (0 train, 1 valid, 2 test) of every row of rows grouped by user
  in chronological order.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["assign_splits", "check_split", "split_counts"]


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    """Validate split fractions: three positive finite numbers summing to 1."""
    try:
        fr = tuple(float(x) for x in split)
    except (TypeError, ValueError) as e:
        raise ValueError(f"split must be three numbers, got {split!r}") from e
    if len(fr) != 3 or not all(math.isfinite(x) and x > 0 for x in fr):
        raise ValueError(f"split must be three positive fractions (train, valid, test), got {split!r}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {split!r} (sum {sum(fr)})")
    return fr  # type: ignore[return-value]


def split_counts(
    n: np.ndarray | int, split: Sequence[float] = (0.7, 0.2, 0.1)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user split sizes of the temporal split (train first, then valid, then test).

    For a user with ``n >= 3`` interactions in chronological order:

    * ``n_train = ceil(p_train * n)``, clipped to ``[1, n - 2]``;
    * ``n_valid = ceil((p_train + p_valid) * n) - n_train``, clipped to
      ``[1, n - n_train - 1]``;
    * ``n_test = n - n_train - n_valid`` (always >= 1).

    So the cumulative boundaries round up (train gets the rounding surplus), but
    every split gets at least one interaction. A ``1e-9`` tolerance is subtracted
    before ``ceil`` so that e.g. ``0.7 * 10`` gives 7, not 8, under float error.
    Examples with (0.7, 0.2, 0.1): n=3 -> 1/1/1, n=5 -> 3/1/1, n=10 -> 7/2/1,
    n=11 -> 8/2/1, n=20 -> 14/4/2.

    Args:
        n: int ``[U]`` (or scalar) interaction counts, all >= 3.
        split: (train, valid, test) fractions, positive, summing to 1.

    Returns:
        ``(n_train, n_valid, n_test)``: int64 arrays shaped like ``n``.
    """
    p_tr, p_va, _ = check_split(split)
    n = np.asarray(n, dtype=np.int64)
    if n.size and n.min() < 3:
        raise ValueError(f"split_counts needs n >= 3 per user, got min {n.min()}")
    eps = 1e-9
    n_tr = np.ceil(p_tr * n - eps).astype(np.int64)
    n_tr = np.clip(n_tr, 1, n - 2)
    n_trva = np.ceil((p_tr + p_va) * n - eps).astype(np.int64)
    n_va = np.clip(n_trva - n_tr, 1, n - n_tr - 1)
    n_te = n - n_tr - n_va
    return n_tr, n_va, n_te


def assign_splits(
    users: np.ndarray, n_users: int, split: Sequence[float]
) -> np.ndarray:
    """Assign each interaction to a split, given rows already ordered within users.

    Args:
        users: int64 ``[N]`` user ids, grouped by user (all rows of a user contiguous
            and in chronological order); every user in ``[0, n_users)`` has >= 3 rows.
        n_users: number of users.
        split: split fractions.

    Returns:
        int8 ``[N]``: 0 train, 1 valid, 2 test.
    """
    counts = np.bincount(users, minlength=n_users).astype(np.int64)
    n_tr, n_va, _ = split_counts(counts, split)
    # Rows of a user are contiguous but users need not be in increasing order:
    # compute the first row of each group from the data itself.
    first_row = np.full(n_users, -1, dtype=np.int64)
    change = np.ones(users.shape[0], dtype=bool)
    change[1:] = users[1:] != users[:-1]
    first_row[users[change]] = np.flatnonzero(change)
    rank = np.arange(users.shape[0], dtype=np.int64) - first_row[users]
    part = np.full(users.shape[0], 2, dtype=np.int8)
    part[rank < n_tr[users] + n_va[users]] = 1
    part[rank < n_tr[users]] = 0
    return part
