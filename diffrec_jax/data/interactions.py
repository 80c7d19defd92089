"""Implicit-feedback interaction data: sparse per-user rows, loaders and validation.

This module is host-side only (numpy, no JAX). It defines

* :class:`CSR`: per-user sparse rows (compressed sparse row layout) of one split,
* :class:`InteractionData`: a dataset with ``train`` / ``valid`` / ``test`` splits,
* :func:`load_diffrec_npy`: the ``*_list.npy`` format released with DiffRec,
* :func:`load_movielens`: raw MovieLens ``u.data`` (ML-100K) or ``ratings.dat``
  (ML-1M) with a per-user temporal split,
* :func:`validate`: the consistency checks the loaders run before returning,
* :func:`split_counts`: the per-user split rule shared with the synthetic generator.

Every problem with the input raises :class:`DataError` with a message that names
the file (or source) and the problem, so bad data never reaches a JAX program.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = [
    "CSR",
    "DataError",
    "InteractionData",
    "load_diffrec_npy",
    "load_movielens",
    "split_counts",
    "validate",
]

PathLike = str | os.PathLike

_NPY_MAGIC = b"\x93NUMPY"
_MAX_ID = 2**31  # item ids are stored as int32; larger ids cannot be dense indices
_DIFFREC_FILES = ("train_list.npy", "valid_list.npy", "test_list.npy")
_SPLITS = ("train", "valid", "test")


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
        if which not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {which!r}")
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


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #


def _pair_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """Unique int64 key ``user * n_items + item`` of each pair.

    Args:
        users: int ``[N]``.
        items: int ``[N]``.
        n_items: number of items (all items must be < n_items).

    Returns:
        int64 ``[N]``.
    """
    return users.astype(np.int64) * np.int64(n_items) + items.astype(np.int64)


def _duplicates(keys: np.ndarray) -> tuple[int, int | None]:
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


def _check_duplicates(
    users: np.ndarray, items: np.ndarray, n_items: int, where: str, row_label: str = "row"
) -> None:
    """Raise DataError if a (user, item) pair occurs twice in one split."""
    n_extra, first = _duplicates(_pair_keys(users, items, n_items))
    if n_extra:
        raise DataError(
            f"{where}: {n_extra} duplicate (user, item) pair(s) within the split; first "
            f"duplicate: user {int(users[first])}, item {int(items[first])} "
            f"({row_label} {first})"
        )


def _check_leakage(
    pairs_a: tuple[np.ndarray, np.ndarray],
    pairs_b: tuple[np.ndarray, np.ndarray],
    n_items: int,
    where_a: str,
    where_b: str,
) -> None:
    """Raise DataError if a (user, item) pair of split B also occurs in split A."""
    count, first = _overlap(
        _pair_keys(pairs_a[0], pairs_a[1], n_items), _pair_keys(pairs_b[0], pairs_b[1], n_items)
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


def _validate_item_emb(emb: Any, n_items: int, where: str) -> None:
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
    for name in _SPLITS:
        where = f"{src} [{name}]"
        csr = getattr(data, name)
        _validate_csr(csr, n_users, n_items, where)
        users, items = csr.to_pairs()
        _check_duplicates(users, items, n_items, where, row_label="entry")
        pairs[name] = (users, items)
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        _check_leakage(pairs[a], pairs[b], n_items, f"{src} [{a}]", f"{src} [{b}]")
    if data.item_emb is not None:
        _validate_item_emb(data.item_emb, n_items, src)


# --------------------------------------------------------------------------- #
# DiffRec .npy loader
# --------------------------------------------------------------------------- #


def _read_npy_header(f: Any, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Parse a .npy header (``f`` positioned after the magic string), without reading data.

    Returns:
        ``(shape, dtype, data_offset)``.

    Raises:
        DataError: unsupported version or malformed header.
    """
    version = f.read(2)
    if len(version) != 2 or (version[0], version[1]) not in ((1, 0), (2, 0), (3, 0)):
        raise DataError(f"{path}: not a valid .npy file (unsupported format version {version!r})")
    reader = (
        np.lib.format.read_array_header_1_0
        if version[0] == 1
        else np.lib.format.read_array_header_2_0  # 3.0 only differs for non-ASCII field names
    )
    try:
        shape, _fortran, dtype = reader(f)
    except (ValueError, TypeError, SyntaxError, EOFError, KeyError) as e:
        raise DataError(f"{path}: not a valid .npy file (corrupt header): {e}") from e
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise DataError(f"{path}: not a valid .npy file (bad shape {shape!r} in header)")
    return tuple(shape), np.dtype(dtype), f.tell()


def _load_npy(path: Path) -> np.ndarray:
    """Load one .npy file without pickle, turning every failure into DataError.

    Args:
        path: file path.

    Returns:
        The array.

    Raises:
        DataError: missing, unreadable, not a .npy, pickled/object, or truncated file.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            if magic != _NPY_MAGIC:
                raise DataError(f"{path}: not a valid .npy file (bad magic bytes {magic!r})")
            header = _read_npy_header(f, path)
            file_size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
    shape, dtype, data_offset = header
    if dtype.hasobject:
        raise DataError(f"{path}: refusing to load pickled data (object dtype {dtype})")
    # Check the size before np.load allocates: a header may declare an enormous shape.
    want = math.prod(shape) * dtype.itemsize
    have = file_size - data_offset
    if have != want:
        what = "truncated" if have < want else "trailing bytes after the array"
        raise DataError(
            f"{path}: not a valid .npy file (corrupt or truncated: {what}): the header declares "
            f"shape {shape} of {dtype} = {want} data bytes, the file holds {have}"
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        msg = str(e)
        if "pickle" in msg.lower() or "object arrays" in msg.lower():
            raise DataError(
                f"{path}: refusing to load pickled data (object array; allow_pickle=False): {msg}"
            ) from e
        raise DataError(f"{path}: not a valid .npy file (corrupt or truncated): {msg}") from e
    except (OSError, EOFError, MemoryError) as e:
        raise DataError(f"{path}: not a valid .npy file (corrupt or truncated): {e}") from e
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: expected a single array in .npy format, got {type(arr).__name__}")
    if arr.dtype.hasobject:
        raise DataError(f"{path}: refusing to load pickled data (object dtype {arr.dtype})")
    return arr


def _check_pair_array(arr: np.ndarray, path: Path) -> np.ndarray:
    """Check a (user, item) list: integer ``[N, 2]``, non-empty, no negative id.

    Args:
        arr: the loaded array.
        path: its file (for messages).

    Returns:
        int64 ``[N, 2]``.
    """
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(
            f"{path}: wrong shape {arr.shape}, expected (N, 2) rows of (user_id, item_id)"
        )
    if arr.dtype.kind not in "iu":  # not issubdtype(integer): timedelta64 would pass that
        kind = "float" if np.issubdtype(arr.dtype, np.floating) else "non-integer"
        raise DataError(
            f"{path}: {kind} dtype {arr.dtype}, expected integer ids; refusing to cast "
            f"(even if the values look integral)"
        )
    if arr.shape[0] == 0:
        raise DataError(f"{path}: empty split (0 interactions)")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise DataError(f"{path}: id {arr.max()} too large for int64")
    arr = arr.astype(np.int64, copy=False)
    neg = arr < 0
    if neg.any():
        r = int(np.argmax(neg.any(axis=1)))
        raise DataError(
            f"{path}: {int(neg.sum())} negative id(s); first at row {r}: "
            f"(user {arr[r, 0]}, item {arr[r, 1]}); ids must be 0-based"
        )
    big = arr >= _MAX_ID
    if big.any():
        r = int(np.argmax(big.any(axis=1)))
        raise DataError(
            f"{path}: id too large at row {r}: (user {arr[r, 0]}, item {arr[r, 1]}); ids must be "
            f"dense 0-based indices below 2**31 (item ids are stored as int32)"
        )
    return arr


def load_diffrec_npy(data_dir: PathLike, *, name: str | None = None) -> InteractionData:
    """Load a dataset in the DiffRec ``*_list.npy`` format.

    ``data_dir`` must contain ``train_list.npy``, ``valid_list.npy`` and
    ``test_list.npy``: integer arrays of shape ``(N, 2)`` with rows
    ``(user_id, item_id)``, 0-based. As in the reference code,
    ``n_users = max(train user) + 1`` and ``n_items = max(train item) + 1``,
    computed from train only; valid/test ids must lie inside those bounds. Within
    each user, the row order of each file is kept (chronological in the released
    files). An optional ``item_emb.npy`` (float ``[n_items, D]``, finite) is loaded
    as float32.

    Args:
        data_dir: directory holding the files.
        name: dataset name; defaults to the directory name.

    Returns:
        The validated dataset (values 1.0).

    Raises:
        DataError: naming the file and the problem (missing file, not a .npy,
            pickled data, wrong shape, non-integer dtype, negative or out-of-range
            ids, empty split, duplicate pairs, leakage between splits, bad item_emb).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir}: directory not found; expected a directory with "
            f"{', '.join(_DIFFREC_FILES)} (and optionally item_emb.npy)"
        )
    paths = {s: data_dir / f"{s}_list.npy" for s in _SPLITS}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"{', '.join(missing)}: file not found; a DiffRec data directory must contain "
            f"{', '.join(_DIFFREC_FILES)} (and optionally item_emb.npy)"
        )
    arrays = {s: _check_pair_array(_load_npy(p), p) for s, p in paths.items()}

    train = arrays["train"]
    n_users = int(train[:, 0].max()) + 1
    n_items = int(train[:, 1].max()) + 1
    for s in ("valid", "test"):
        arr, p = arrays[s], paths[s]
        for col, label, bound in ((0, "user", n_users), (1, "item", n_items)):
            bad = arr[:, col] >= bound
            if bad.any():
                r = int(np.argmax(bad))
                raise DataError(
                    f"{p}: {int(bad.sum())} {label} id(s) out of range; first at row {r}: "
                    f"{label} {arr[r, col]} >= n_{label}s = {bound}, which is derived from "
                    f"{paths['train'].name} (max train {label} id + 1)"
                )
    for s in _SPLITS:
        _check_duplicates(arrays[s][:, 0], arrays[s][:, 1], n_items, str(paths[s]))
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        _check_leakage(
            (arrays[a][:, 0], arrays[a][:, 1]),
            (arrays[b][:, 0], arrays[b][:, 1]),
            n_items,
            str(paths[a]),
            str(paths[b]),
        )

    item_emb = None
    emb_path = data_dir / "item_emb.npy"
    if emb_path.exists():
        emb = _load_npy(emb_path)
        if emb.ndim != 2 or emb.shape[0] != n_items or emb.shape[1] < 1:
            raise DataError(
                f"{emb_path}: item_emb has wrong shape {emb.shape}, expected "
                f"(n_items={n_items}, D) with n_items from {paths['train'].name}"
            )
        if not np.issubdtype(emb.dtype, np.floating):
            raise DataError(f"{emb_path}: item_emb must be floating point, got dtype {emb.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> inf, refused below
            item_emb = emb.astype(np.float32)
        _validate_item_emb(item_emb, n_items, str(emb_path))

    try:
        csrs = {
            s: CSR.from_pairs(arrays[s][:, 0], arrays[s][:, 1], n_users, n_items) for s in _SPLITS
        }
    except MemoryError as e:
        raise DataError(
            f"{paths['train']}: ids imply {n_users} users x {n_items} items, too many to hold "
            f"({e}); ids must be dense 0-based indices"
        ) from e
    data = InteractionData(
        name=name if name is not None else data_dir.resolve().name,
        n_users=n_users,
        n_items=n_items,
        train=csrs["train"],
        valid=csrs["valid"],
        test=csrs["test"],
        item_emb=item_emb,
    )
    validate(data, source=str(data_dir))
    return data


# --------------------------------------------------------------------------- #
# Per-user split rule
# --------------------------------------------------------------------------- #


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
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
    p_tr, p_va, _ = _check_split(split)
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


def _split_sorted(
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


# --------------------------------------------------------------------------- #
# MovieLens loader
# --------------------------------------------------------------------------- #

_ML_FILES = ("u.data", "ratings.dat")


def _detect_separator(path: Path, lines: list[str]) -> str:
    """Pick the field separator: ``'::'`` (ratings.dat) or tab (u.data)."""
    if path.name == "ratings.dat":
        return "::"
    if path.name == "u.data":
        return "\t"
    for line in lines:
        if line.strip():
            if "::" in line:
                return "::"
            if "\t" in line:
                return "\t"
            break
    raise DataError(
        f"{path}: cannot detect the MovieLens format: expected tab-separated "
        f"'user item rating timestamp' (u.data) or '::'-separated (ratings.dat) lines"
    )


def _parse_movielens(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse a MovieLens ratings file strictly.

    Args:
        path: ``u.data``-style or ``ratings.dat``-style file.

    Returns:
        ``(users, items, ratings, timestamps, line_numbers)``: int64, int64,
        float64, int64, int64 arrays ``[N]`` (line numbers are 1-based).

    Raises:
        DataError: empty file, wrong number of columns, non-numeric field,
            non-finite rating (naming the line number).
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file (cannot decode as UTF-8: {e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read file: {e}") from e
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: empty file (no rating lines)")
    sep = _detect_separator(path, lines)
    sep_name = "'::'" if sep == "::" else "tab"
    n = len(lines)
    users = np.empty(n, dtype=np.int64)
    items = np.empty(n, dtype=np.int64)
    ratings = np.empty(n, dtype=np.float64)
    stamps = np.empty(n, dtype=np.int64)
    linenos = np.empty(n, dtype=np.int64)
    k = 0
    for i, line in enumerate(lines, start=1):
        s = line.strip()
        if not s:
            continue
        parts = s.split(sep)
        if len(parts) != 4:
            raise DataError(
                f"{path}: line {i}: wrong number of columns: expected 4 {sep_name}-separated "
                f"fields (user item rating timestamp), got {len(parts)}: {line[:80]!r}"
            )
        try:
            u, it, ts = int(parts[0]), int(parts[1]), int(parts[3])
            r = float(parts[2])
        except ValueError:
            raise DataError(
                f"{path}: line {i}: non-numeric field (user, item and timestamp must be "
                f"integers, rating a number): {line[:80]!r}"
            ) from None
        if not math.isfinite(r):
            raise DataError(f"{path}: line {i}: non-finite rating {parts[2]!r}")
        try:
            users[k], items[k], ratings[k], stamps[k], linenos[k] = u, it, r, ts, i
        except OverflowError:
            raise DataError(
                f"{path}: line {i}: user, item or timestamp outside the int64 range: {line[:80]!r}"
            ) from None
        k += 1
    return users[:k], items[:k], ratings[:k], stamps[:k], linenos[:k]


def load_movielens(
    path: PathLike,
    *,
    min_rating: float | None = None,
    split: Sequence[float] = (0.7, 0.2, 0.1),
    name: str | None = None,
    return_ids: bool = False,
) -> InteractionData:
    """Load raw MovieLens ratings as implicit feedback with a per-user temporal split.

    Formats: ``u.data`` (ML-100K, tab-separated ``user item rating timestamp``) or
    ``ratings.dat`` (ML-1M, ``user::item::rating::timestamp``), detected from the
    file name, else from the first non-empty line. ``path`` may also be a directory
    holding one of these files. Blank lines are ignored.

    Steps, in order:

    1. Parse strictly; a (raw user, raw item) pair occurring twice is an error.
    2. If ``min_rating`` is given, keep ratings ``>= min_rating``.
    3. Drop users with fewer than 3 remaining interactions (they cannot get one
       interaction in each split).
    4. Remap the remaining raw user ids and item ids to contiguous 0-based ids in
       increasing raw-id order. ``n_items`` counts every item of the remaining rows,
       including items that occur only in valid/test (their train column is empty),
       so item ids mean the same in all splits.
    5. Per user, sort interactions by (timestamp, line order for ties) and split
       with :func:`split_counts`: the first ``ceil(p_train * n)`` go to train, up to
       ``ceil((p_train + p_valid) * n)`` to valid, the rest to test, each clipped so
       that every split gets >= 1 (e.g. n=10 -> 7/2/1, n=11 -> 8/2/1, n=3 -> 1/1/1).

    Within each CSR row, items are in chronological order. Values are 1.0 (ratings
    are not kept).

    Args:
        path: ``u.data`` / ``ratings.dat`` file, or a directory containing one.
        min_rating: keep only ratings ``>= min_rating``; all ratings if None.
        split: (train, valid, test) fractions, positive, summing to 1.
        name: dataset name; defaults to the parent directory name (e.g. ``ml-100k``).
        return_ids: also return the raw ids: ``(data, raw_users [n_users], raw_items
            [n_items])``, internal id ``j`` being raw id ``raw_items[j]``.

    Returns:
        The validated dataset (and the raw ids with ``return_ids``).

    Raises:
        DataError: missing/empty file, malformed line (with line number), wrong
            number of columns, non-numeric field, non-finite rating, duplicate
            pairs, or nothing left after filtering.
        ValueError: bad ``split``.
    """
    _check_split(split)
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in _ML_FILES if (path / f).is_file()]
        if not found:
            raise DataError(
                f"{path}: no MovieLens ratings file found; expected one of {', '.join(_ML_FILES)}"
            )
        path = found[0]
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; expected a MovieLens ratings file "
            f"({' or '.join(_ML_FILES)})"
        )
    users, items, ratings, stamps, linenos = _parse_movielens(path)

    _, raw_u = np.unique(users, return_inverse=True)
    raw_items, raw_i = np.unique(items, return_inverse=True)
    n_extra, first = _duplicates(_pair_keys(raw_u, raw_i, int(raw_items.shape[0])))
    if n_extra:
        same = (users == users[first]) & (items == items[first])
        lines = ", ".join(str(x) for x in linenos[same][:2])
        raise DataError(
            f"{path}: {n_extra} duplicate (user, item) rating row(s); first: user "
            f"{users[first]}, item {items[first]} on lines {lines}"
        )

    keep = np.ones(users.shape[0], dtype=bool)
    if min_rating is not None:
        keep &= ratings >= float(min_rating)
        if not keep.any():
            raise DataError(f"{path}: no ratings >= min_rating={min_rating}")
    _, uinv = np.unique(users[keep], return_inverse=True)
    counts = np.bincount(uinv)
    keep_idx = np.flatnonzero(keep)[counts[uinv] >= 3]
    if keep_idx.size == 0:
        raise DataError(
            f"{path}: no user has >= 3 interactions"
            + (f" with rating >= {min_rating}" if min_rating is not None else "")
            + "; nothing can be split"
        )
    users, items, stamps = users[keep_idx], items[keep_idx], stamps[keep_idx]

    uniq_u, uid = np.unique(users, return_inverse=True)
    uniq_i, iid = np.unique(items, return_inverse=True)
    n_users, n_items = int(uniq_u.shape[0]), int(uniq_i.shape[0])

    # Rows are in file order, so the row position breaks timestamp ties.
    order = np.lexsort((np.arange(uid.shape[0]), stamps, uid))
    uid, iid = uid[order].astype(np.int64), iid[order].astype(np.int64)
    part = _split_sorted(uid, n_users, split)
    csrs = {
        s: CSR.from_pairs(uid[part == k], iid[part == k], n_users, n_items)
        for k, s in enumerate(_SPLITS)
    }
    if name is None:
        name = path.parent.resolve().name or path.stem
    data = InteractionData(
        name=name,
        n_users=n_users,
        n_items=n_items,
        train=csrs["train"],
        valid=csrs["valid"],
        test=csrs["test"],
    )
    validate(data, source=str(path))
    return (data, uniq_u, uniq_i) if return_ids else data


def load_movielens_titles(path: PathLike) -> dict:
    """Movie titles of a MovieLens folder: ``{raw item id: title}``.

    Reads ``u.item`` (ML-100K, ``id|title|date|...``, Latin-1) or ``movies.dat`` (ML-1M,
    ``id::title::genres``, Latin-1) from ``path`` (the folder or the file). The ids are the raw
    MovieLens ids, as :mod:`diffrec_jax.inference` returns them for ``source="movielens"`` runs.

    Raises:
        DataError: no titles file, or a line without an integer id and a title (with its number).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in ("u.item", "movies.dat") if (path / f).is_file()]
        if not found:
            raise DataError(f"{path}: no MovieLens titles file (u.item or movies.dat)")
        path = found[0]
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected u.item or movies.dat")
    sep = "::" if path.name == "movies.dat" else "|"
    titles = {}
    with open(path, encoding="latin-1") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(sep)
            try:
                item = int(parts[0])
            except ValueError:
                raise DataError(f"{path}: line {n}: item id {parts[0]!r} is not an integer") from None
            if len(parts) < 2 or not parts[1].strip():
                raise DataError(f"{path}: line {n}: no title")
            if item in titles:
                raise DataError(f"{path}: line {n}: item {item} listed twice")
            titles[item] = parts[1].strip()
    if not titles:
        raise DataError(f"{path}: no titles")
    return titles
