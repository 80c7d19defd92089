"""Implicit-feedback interaction data: the containers every interaction loader returns.

Host side only (numpy, no JAX):

* :class:`DataError`: bad input data, raised by every loader with a message that names the file
  (or source) and the problem, so bad data never reaches a JAX program;
* :class:`CSR`: per-user sparse rows (compressed sparse row layout) of one split;
* :class:`InteractionData`: a dataset with ``train`` / ``valid`` / ``test`` splits.

The checks of a dataset are in :mod:`diffrec_jax.data.validation`, the loaders in
:mod:`diffrec_jax.data.diffrec_npy` and :mod:`diffrec_jax.data.movielens`, the per-user split rule
in :mod:`diffrec_jax.data.splits`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = ["CSR", "DataError", "InteractionData", "SPLITS"]

SPLITS = ("train", "valid", "test")
"""Names of the splits of a dataset, in order."""


class DataError(ValueError):
    """Bad input data; the message always names the file (or source) and the problem."""


# --------------------------------------------------------------------------- #
# CSR rows
# --------------------------------------------------------------------------- #


class CSR(NamedTuple):
    """Per-user sparse rows of one split (host side, compressed sparse row layout).

    Row ``u`` holds the items of user ``u``: ``indices[indptr[u]:indptr[u + 1]]``
    with values ``values[indptr[u]:indptr[u + 1]]``. Within a row, items keep the
    order of the source (chronological for the DiffRec files and for the
    MovieLens temporal split).

    Attributes:
        indptr: int64 ``[n_users + 1]`` row offsets, ``indptr[0] == 0``.
        indices: int32 ``[nnz]`` item ids.
        values: float32 ``[nnz]`` values, 1.0 for implicit feedback.
        n_items: number of columns (items).
    """

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_items: int

    @property
    def n_users(self) -> int:
        """Number of rows (users)."""
        return int(self.indptr.shape[0]) - 1

    @property
    def nnz(self) -> int:
        """Number of stored interactions."""
        return int(self.indices.shape[0])

    def row(self, u: int) -> np.ndarray:
        """Item ids of user ``u`` in source order.

        Args:
            u: user id in ``[0, n_users)``.

        Returns:
            int32 ``[len_u]`` view into ``indices``.
        """
        if not 0 <= u < self.n_users:
            raise IndexError(f"user {u} out of range [0, {self.n_users})")
        return self.indices[self.indptr[u] : self.indptr[u + 1]]

    def row_lengths(self) -> np.ndarray:
        """Number of interactions per user.

        Returns:
            int64 ``[n_users]``.
        """
        return np.diff(self.indptr).astype(np.int64)

    def user_ids(self) -> np.ndarray:
        """User id of every stored interaction (the row of each entry).

        Returns:
            int64 ``[nnz]``, aligned with ``indices``.
        """
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.row_lengths())

    def to_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored interactions as (user, item) pairs, in row order.

        Returns:
            ``(users, items)``: int64 ``[nnz]`` and int32 ``[nnz]``.
        """
        return self.user_ids(), self.indices

    def to_dense(
        self, rows: np.ndarray | Sequence[int] | None = None, dtype: Any = np.float32
    ) -> np.ndarray:
        """Dense matrix of some rows, values placed at their item ids.

        Vectorised (no Python loop over users).

        Args:
            rows: int ``[B]`` user ids (any order, repeats allowed); all users if None.
            dtype: dtype of the result.

        Returns:
            ``[B, n_items]`` array (``[n_users, n_items]`` if ``rows`` is None).
        """
        if rows is None:
            rows = np.arange(self.n_users, dtype=np.int64)
        rows = np.asarray(rows)
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"rows must be integer user ids, got dtype {rows.dtype}")
        rows = rows.astype(np.int64, copy=False)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_users):
            raise IndexError(f"rows out of range [0, {self.n_users})")
        out = np.zeros((rows.shape[0], self.n_items), dtype=dtype)
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return out
        out_rows = np.repeat(np.arange(rows.shape[0], dtype=np.int64), lengths)
        # Position of each gathered entry: start of its row + offset inside the row.
        row_begin_in_out = np.cumsum(lengths) - lengths
        pos = np.arange(total, dtype=np.int64) + np.repeat(starts - row_begin_in_out, lengths)
        out[out_rows, self.indices[pos]] = self.values[pos]
        return out

    def binary(self) -> "CSR":
        """The same pattern with all values set to 1.

        Returns:
            CSR sharing ``indptr`` and ``indices``, with float32 ones as values.
        """
        return CSR(self.indptr, self.indices, np.ones(self.nnz, dtype=np.float32), self.n_items)

    @classmethod
    def from_pairs(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        n_users: int,
        n_items: int,
        values: np.ndarray | None = None,
    ) -> "CSR":
        """Build rows from (user, item) pairs, keeping the input order within each user.

        The pairs are stably sorted by user, so the items of a user keep the order
        in which they appear in the input.

        Args:
            users: int ``[nnz]`` user ids in ``[0, n_users)``.
            items: int ``[nnz]`` item ids in ``[0, n_items)``.
            n_users: number of rows.
            n_items: number of columns.
            values: float ``[nnz]`` values; ones if None.

        Returns:
            CSR with ``n_users`` rows.

        Raises:
            DataError: on mismatched lengths, non-integer or out-of-range ids.
        """
        src = "CSR.from_pairs"
        users = np.asarray(users)
        items = np.asarray(items)
        if users.ndim != 1 or items.ndim != 1 or users.shape != items.shape:
            raise DataError(
                f"{src}: users and items must be 1-D of equal length, got shapes "
                f"{users.shape} and {items.shape}"
            )
        for label, arr in (("users", users), ("items", items)):
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise DataError(f"{src}: {label} must be integer ids, got dtype {arr.dtype}")
        users = users.astype(np.int64, copy=False)
        items = items.astype(np.int64, copy=False)
        if users.size:
            if users.min() < 0 or users.max() >= n_users:
                raise DataError(
                    f"{src}: user id out of range [0, {n_users}): "
                    f"min {users.min()}, max {users.max()}"
                )
            if items.min() < 0 or items.max() >= n_items:
                raise DataError(
                    f"{src}: item id out of range [0, {n_items}): "
                    f"min {items.min()}, max {items.max()}"
                )
        if values is None:
            vals = np.ones(users.shape[0], dtype=np.float32)
        else:
            vals = np.asarray(values, dtype=np.float32)
            if vals.shape != users.shape:
                raise DataError(
                    f"{src}: values must have shape {users.shape}, got {vals.shape}"
                )
        order = np.argsort(users, kind="stable")
        counts = np.bincount(users, minlength=n_users).astype(np.int64)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(
            indptr=indptr,
            indices=items[order].astype(np.int32),
            values=vals[order],
            n_items=int(n_items),
        )


# --------------------------------------------------------------------------- #
# Dataset
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True, eq=False)
class InteractionData:
    """An implicit-feedback dataset with train / valid / test splits.

    All three splits have ``n_users`` rows and ``n_items`` columns. Equality and
    hashing are by identity (``eq=False``): the fields hold numpy arrays.

    Attributes:
        name: dataset name.
        n_users: number of users (rows).
        n_items: number of items (columns).
        train: training interactions.
        valid: validation interactions.
        test: test interactions.
        item_emb: optional float32 ``[n_items, D]`` item embeddings shipped with the data.
    """

    name: str
    n_users: int
    n_items: int
    train: CSR
    valid: CSR
    test: CSR
    item_emb: np.ndarray | None = None

    def split(self, which: str) -> CSR:
        """The CSR of split ``which`` (``'train'``, ``'valid'`` or ``'test'``)."""
        if which not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
        return getattr(self, which)

    def summary(self) -> dict[str, Any]:
        """Counts of the dataset.

        Returns:
            dict with ``name``, ``users``, ``items``, ``train``, ``valid``, ``test``
            (interaction counts), ``total``, ``density`` (train nnz / (users * items)),
            ``item_emb_dim`` (None if no embedding).
        """
        total = self.train.nnz + self.valid.nnz + self.test.nnz
        cells = self.n_users * self.n_items
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "train": self.train.nnz,
            "valid": self.valid.nnz,
            "test": self.test.nnz,
            "total": total,
            "density": self.train.nnz / cells if cells else 0.0,
            "item_emb_dim": None if self.item_emb is None else int(self.item_emb.shape[1]),
        }

    def __repr__(self) -> str:
        emb = "" if self.item_emb is None else f", item_emb={self.item_emb.shape[1]}d"
        return (
            f"InteractionData(name={self.name!r}, users={self.n_users}, items={self.n_items}, "
            f"train={self.train.nnz}, valid={self.valid.nnz}, test={self.test.nnz}{emb})"
        )
