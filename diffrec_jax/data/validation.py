"""Consistency checks of interaction data: duplicates, leakage between splits, CSR structure.

:func:`validate` runs every check on an :class:`~diffrec_jax.data.InteractionData`; the loaders
call it before returning. The pair-level helpers (:func:`pair_keys`,
:func:`count_duplicates`, :func:`check_duplicates`, :func:`check_leakage`) and
:func:`validate_item_emb` are also used by the loaders on raw arrays, so that an error names the
file and row before any CSR is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diffrec_jax.data.containers import CSR, SPLITS, DataError, InteractionData

__all__ = [
    "check_duplicates",
    "check_leakage",
    "count_duplicates",
    "pair_keys",
    "validate",
    "validate_item_emb",
]


def pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Unique int64 key ``user * n_items + item`` of each pair.

    Args:
        users: int ``[N]``.
        items: int ``[N]``.
        n_items: number of items (all items must be < n_items).

    Returns:
        int64 ``[N]``.
    """
    return users.astype(np.int64) * np.int64(n_items) + items.astype(np.int64)


def count_duplicates(keys: np.ndarray) -> tuple[int, int | None]:
    """Count repeated keys.

    Args:
        keys: int64 ``[N]``.

    Returns:
        ``(n_extra, first)``: the number of entries that repeat an earlier entry and
        the position (in ``keys``) of the first such entry, or ``(0, None)``.
    """
    if keys.size < 2:
        return 0, None
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]
    n_extra = int(same.sum())
    if n_extra == 0:
        return 0, None
    return n_extra, int(order[1:][same].min())


def _overlap(keys_a: np.ndarray, keys_b: np.ndarray) -> tuple[int, int | None]:
    """Count entries of ``keys_b`` that also occur in ``keys_a``.

    Args:
        keys_a: int64 ``[N]``.
        keys_b: int64 ``[M]``.

    Returns:
        ``(count, first)``: how many entries of ``keys_b`` are in ``keys_a`` and the
        position in ``keys_b`` of the first one, or ``(0, None)``.
    """
    if keys_a.size == 0 or keys_b.size == 0:
        return 0, None
    # Sort + binary search (much faster than np.isin's hashing for int64 keys).
    sorted_a = np.sort(keys_a)
    pos = np.minimum(np.searchsorted(sorted_a, keys_b), sorted_a.shape[0] - 1)
    hit = sorted_a[pos] == keys_b
    count = int(hit.sum())
    if count == 0:
        return 0, None
    return count, int(np.argmax(hit))


def check_duplicates(
    users: np.ndarray, items: np.ndarray, n_items: int, where: str, row_label: str = "row"
) -> None:
    """Raise DataError if a (user, item) pair occurs twice in one split."""
    n_extra, first = count_duplicates(pair_keys(users, items, n_items))
    if n_extra:
        raise DataError(
            f"{where}: {n_extra} duplicate (user, item) pair(s) within the split; first "
            f"duplicate: user {int(users[first])}, item {int(items[first])} "
            f"({row_label} {first})"
        )


def check_leakage(
    pairs_a: tuple[np.ndarray, np.ndarray],
    pairs_b: tuple[np.ndarray, np.ndarray],
    n_items: int,
    where_a: str,
    where_b: str,
) -> None:
    """Raise DataError if a (user, item) pair of split B also occurs in split A."""
    count, first = _overlap(
        pair_keys(pairs_a[0], pairs_a[1], n_items), pair_keys(pairs_b[0], pairs_b[1], n_items)
    )
    if count:
        raise DataError(
            f"{where_b}: leakage: {count} (user, item) pair(s) also occur in {where_a}; "
            f"first: user {int(pairs_b[0][first])}, item {int(pairs_b[1][first])} "
            f"(row {first} of {where_b})"
        )


def _validate_csr(csr: Any, n_users: int, n_items: int, where: str) -> None:
    """Structural checks of one split (dtypes, shapes, offsets, id range, values)."""
    if not isinstance(csr, CSR):
        raise DataError(f"{where}: expected a CSR, got {type(csr).__name__}")
    indptr, indices, values = csr.indptr, csr.indices, csr.values
    for label, arr, dtype in (
        ("indptr", indptr, np.int64),
        ("indices", indices, np.int32),
        ("values", values, np.float32),
    ):
        if not isinstance(arr, np.ndarray):
            raise DataError(f"{where}: {label} must be a numpy array, got {type(arr).__name__}")
        if arr.ndim != 1:
            raise DataError(f"{where}: {label} must be 1-D, got shape {arr.shape}")
        if arr.dtype != dtype:
            raise DataError(f"{where}: {label} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    if csr.n_items != n_items:
        raise DataError(f"{where}: n_items is {csr.n_items}, dataset has {n_items}")
    if indptr.shape[0] != n_users + 1:
        raise DataError(
            f"{where}: indptr has length {indptr.shape[0]}, expected n_users + 1 = {n_users + 1}"
        )
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise DataError(f"{where}: indptr must start at 0 and be non-decreasing")
    if indptr[-1] != indices.shape[0] or values.shape[0] != indices.shape[0]:
        raise DataError(
            f"{where}: indptr[-1] = {indptr[-1]}, len(indices) = {indices.shape[0]}, "
            f"len(values) = {values.shape[0]} must agree"
        )
    if indices.size == 0:
        raise DataError(f"{where}: empty split (no interactions)")
    if indices.min() < 0 or indices.max() >= n_items:
        raise DataError(
            f"{where}: item id out of range [0, {n_items}): min {indices.min()}, "
            f"max {indices.max()}"
        )
    if not np.all(np.isfinite(values)):
        raise DataError(f"{where}: values contain NaN or inf")


def validate_item_emb(emb: Any, n_items: int, where: str) -> None:
    """Check an item-embedding matrix: float32 ``[n_items, D]``, finite."""
    if not isinstance(emb, np.ndarray):
        raise DataError(f"{where}: item_emb must be a numpy array, got {type(emb).__name__}")
    if emb.ndim != 2 or emb.shape[0] != n_items or emb.shape[1] < 1:
        raise DataError(
            f"{where}: item_emb has wrong shape {emb.shape}, expected (n_items={n_items}, D)"
        )
    if emb.dtype != np.float32:
        raise DataError(f"{where}: item_emb must have dtype float32, got {emb.dtype}")
    bad = ~np.isfinite(emb)
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        raise DataError(
            f"{where}: item_emb contains {int(bad.sum())} NaN/inf value(s); first in row {row}"
        )


def validate(data: InteractionData, *, source: str | None = None) -> None:
    """Check that a dataset is consistent; raise :class:`DataError` otherwise.

    Checks: positive sizes; every split is a well-formed :class:`CSR` (int64
    ``indptr`` of length ``n_users + 1``, int32 ``indices`` in ``[0, n_items)``,
    finite float32 ``values``) and non-empty; no duplicate (user, item) pair within
    a split; no pair shared by two splits (train/valid, train/test, valid/test:
    leakage); ``item_emb`` (if any) is finite float32 ``[n_items, D]``.

    Args:
        data: the dataset.
        source: name used in error messages (file or directory); defaults to
            ``InteractionData '<name>'``.

    Raises:
        DataError: on the first problem found.
    """
    src = source if source is not None else f"InteractionData {getattr(data, 'name', '?')!r}"
    if not isinstance(data, InteractionData):
        raise DataError(f"{src}: expected InteractionData, got {type(data).__name__}")
    for label in ("n_users", "n_items"):
        v = getattr(data, label)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise DataError(f"{src}: {label} must be a positive int, got {v!r}")
    n_users, n_items = int(data.n_users), int(data.n_items)
    pairs = {}
    for name in SPLITS:
        where = f"{src} [{name}]"
        csr = getattr(data, name)
        _validate_csr(csr, n_users, n_items, where)
        users, items = csr.to_pairs()
        check_duplicates(users, items, n_items, where, row_label="entry")
        pairs[name] = (users, items)
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        check_leakage(pairs[a], pairs[b], n_items, f"{src} [{a}]", f"{src} [{b}]")
    if data.item_emb is not None:
        validate_item_emb(data.item_emb, n_items, src)
