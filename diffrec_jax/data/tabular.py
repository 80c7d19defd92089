"""Your own data: a CSV or Parquet table of (user, item[, rating, timestamp]) rows.

Host side only (NumPy; ``pyarrow`` only for Parquet, imported when needed). The pipeline, each
step a function of its own:

1. :func:`read_table` (or :func:`from_columns` for arrays you already hold, e.g. a pandas
   DataFrame's columns): raw columns in a :class:`Table`, every field checked (both live in
   :mod:`diffrec_jax.data.tables` and are re-exported here);
2. the usual preparation, in this order: keep ratings ``>= min_rating`` (implicit feedback from
   explicit ratings), drop repeated (user, item) pairs (``duplicates``), iterative k-core
   filtering (:func:`k_core`), and re-mapping of the remaining raw ids to contiguous 0-based ids
   (:class:`IdMaps` keeps the raw id of every new id);
3. a split into our datasets: :func:`load_table` gives an
   :class:`~diffrec_jax.data.InteractionData` (per-user ``"temporal"`` split as the MovieLens
   loader, or ``"leave_one_out"``), :func:`to_sequences` a
   :class:`~diffrec_jax.data.sequences.SequenceData` (leave-one-out next-item examples).

:func:`write_diffrec_npy` (and ``to_sequences(..., save_to=...)``) store the result in the formats
the config data sources read (``diffrec_npy``, ``diffurec_npz``), so every launcher and config
works on your data unchanged.

Every malformed input raises :class:`~diffrec_jax.data.DataError` naming the file and the
problem (the line number for CSV, the row for Parquet).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from diffrec_jax.data.containers import CSR, DataError, InteractionData
from diffrec_jax.data.sequence_data import leave_one_out
from diffrec_jax.data.splits import assign_splits, check_split
from diffrec_jax.data.tables import Table, from_columns, read_table, show_value
from diffrec_jax.data.validation import validate

__all__ = [
    "IdMaps",
    "Table",
    "from_columns",
    "k_core",
    "load_table",
    "read_table",
    "to_sequences",
    "write_diffrec_npy",
]

PathLike = str | os.PathLike
_SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------- #
# Id maps
# --------------------------------------------------------------------------- #


class IdMaps(NamedTuple):
    """Raw ids of the re-mapped users and items.

    Internal user ``u`` is raw user ``users[u]``; internal item ``j`` is raw item
    ``items[j - item_offset]`` (``item_offset`` is 0 for :class:`InteractionData` and 1 for
    :class:`SequenceData`, whose id 0 is the padding id).

    Attributes:
        users: ``[n_users]`` raw user ids, increasing.
        items: ``[n_items]`` raw item ids, increasing.
        item_offset: internal id of ``items[0]``.
    """

    users: np.ndarray
    items: np.ndarray
    item_offset: int = 0

    def user_index(self, raw: Any) -> np.ndarray:
        """Internal ids of raw user ids.

        Args:
            raw: ``[M]`` raw ids (or one id).

        Returns:
            int64 ``[M]`` internal ids.

        Raises:
            KeyError: a raw id that is not in the map (filtered out or never seen).
        """
        return _lookup(self.users, raw, "user", 0)

    def item_index(self, raw: Any) -> np.ndarray:
        """Internal ids of raw item ids (``[M]`` -> int64 ``[M]``); KeyError for unknown ids."""
        return _lookup(self.items, raw, "item", self.item_offset)

    def raw_items(self, ids: Any) -> np.ndarray:
        """Raw item ids of internal ids (e.g. a top-K list): ``[..]`` -> ``[..]``."""
        return self.items[np.asarray(ids, np.int64) - self.item_offset]

    def save(self, path: PathLike) -> None:
        """Writes the maps to an ``.npz`` file (plain arrays, readable without pickle)."""
        np.savez(
            path, users=self.users, items=self.items, item_offset=np.int64(self.item_offset)
        )

    @classmethod
    def load(cls, path: PathLike) -> "IdMaps":
        """Reads maps written by :meth:`save` (``allow_pickle=False``)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["users"], z["items"], int(z["item_offset"]))
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: not an id-map file written by IdMaps.save ({e})") from e


def _lookup(table: np.ndarray, raw: Any, what: str, offset: int) -> np.ndarray:
    raw = np.atleast_1d(np.asarray(raw))
    if table.dtype.kind in "iu" and raw.dtype.kind not in "iu":
        try:  # text such as "42" names the integer id 42
            raw = raw.astype(np.int64)
        except (ValueError, TypeError, OverflowError):
            raise KeyError(f"raw {what} ids are integers here, got {raw.tolist()[:3]}") from None
    if table.dtype.kind not in "iu":
        raw = raw.astype(str)
    pos = np.minimum(np.searchsorted(table, raw), table.shape[0] - 1)
    miss = table[pos] != raw
    if miss.any():
        raise KeyError(
            f"unknown raw {what} id {show_value(raw[np.argmax(miss)])} "
            "(filtered out or never seen)")
    return pos.astype(np.int64) + offset


# --------------------------------------------------------------------------- #
# Preparation
# --------------------------------------------------------------------------- #


def k_core(users: np.ndarray, items: np.ndarray, user_min: int, item_min: int) -> np.ndarray:
    """Iterative k-core filter: the largest subset where every user and item has enough rows.

    Repeats "drop the rows of users with fewer than ``user_min`` rows and of items with fewer
    than ``item_min`` rows" until nothing changes; the result is the unique maximal subset in
    which both conditions hold (it does not depend on the order of removals).

    Args:
        users: int ``[N]`` user ids in ``[0, U)``.
        items: int ``[N]`` item ids in ``[0, I)``.
        user_min: minimum rows per user (<= 1: no constraint).
        item_min: minimum rows per item.

    Returns:
        bool ``[N]``: True for the rows kept.
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    keep = np.ones(users.shape[0], bool)
    if users.size == 0:
        return keep
    n_u, n_i = int(users.max()) + 1, int(items.max()) + 1
    while True:
        cu = np.bincount(users[keep], minlength=n_u)
        ci = np.bincount(items[keep], minlength=n_i)
        drop = keep & ((cu[users] < user_min) | (ci[items] < item_min))
        if not drop.any():
            return keep
        keep &= ~drop


def _k_core_arg(k: Any) -> tuple[int, int]:
    if k is None:
        return 0, 0
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        return int(k), int(k)
    try:
        u, i = (int(x) for x in k)
    except (TypeError, ValueError):
        raise ValueError(f"k_core must be an int or (user_min, item_min), got {k!r}") from None
    return u, i


class _Prepared(NamedTuple):
    """Filtered, re-mapped rows, grouped by user, chronological within each user."""

    users: np.ndarray  # int64 [M] 0..n_users-1, non-decreasing
    items: np.ndarray  # int64 [M] 0..n_items-1
    n_users: int
    n_items: int
    maps: IdMaps


def _prepare(
    table: Table,
    *,
    min_rating: float | None,
    k_core_min: Any,
    duplicates: str,
    min_per_user: int,
) -> _Prepared:
    """Rating threshold, duplicate handling, k-core (with ``min_per_user``), re-mapping, order."""
    src, label = table.source, table.row_label
    if duplicates not in ("first", "last", "error"):
        raise ValueError(f"duplicates must be 'first', 'last' or 'error', got {duplicates!r}")
    user_min, item_min = _k_core_arg(k_core_min)
    n = len(table)
    keep = np.ones(n, bool)
    if min_rating is not None:
        if table.ratings is None:
            raise DataError(f"{src}: min_rating={min_rating} needs a rating column (rating_col)")
        keep &= table.ratings >= float(min_rating)
        if not keep.any():
            raise DataError(f"{src}: no rating >= min_rating={min_rating} (max {table.ratings.max()})")
    idx = np.flatnonzero(keep)
    _, u = np.unique(table.users[idx], return_inverse=True)
    raw_items, i = np.unique(table.items[idx], return_inverse=True)
    u, i = u.reshape(-1).astype(np.int64), i.reshape(-1).astype(np.int64)
    t = np.zeros(idx.size) if table.timestamps is None else table.timestamps[idx]
    # Chronological within user: (user, time, source position) order.
    order = np.lexsort((idx, t, u))
    idx, u, i = idx[order], u[order], i[order]
    key = u * np.int64(raw_items.shape[0]) + i
    korder = np.argsort(key, kind="stable")  # stable: chronological among equal pairs
    same_prev = np.zeros(idx.size, bool)
    same_prev[korder[1:]] = key[korder[1:]] == key[korder[:-1]]
    if same_prev.any():
        if duplicates == "error":
            r = int(np.flatnonzero(same_prev)[0])
            first = np.sort(table.rows[idx[key == key[r]]])
            where = ", ".join(str(int(j)) for j in first[:2])
            raise DataError(
                f"{src}: {int(same_prev.sum())} repeated (user, item) row(s); first: user "
                f"{show_value(table.users[idx[r]])}, item {show_value(table.items[idx[r]])} "
                f"on {label}s {where} "
                "(duplicates='first' or 'last' keeps one)"
            )
        if duplicates == "first":
            dup = same_prev
        else:  # keep the last occurrence: drop every row followed by the same pair
            same_next = np.zeros(idx.size, bool)
            same_next[korder[:-1]] = key[korder[1:]] == key[korder[:-1]]
            dup = same_next
        idx, u, i = idx[~dup], u[~dup], i[~dup]
    mask = k_core(u, i, max(user_min, min_per_user), item_min)
    if not mask.any():
        raise DataError(
            f"{src}: nothing left after filtering: no user keeps >= {max(user_min, min_per_user)} "
            "interactions"
            + (f" with items of >= {item_min} interactions" if item_min > 1 else "")
            + (f" (ratings >= {min_rating})" if min_rating is not None else "")
            + (f"; every user needs >= {min_per_user} to be split" if min_per_user > user_min else "")
        )
    idx = idx[mask]
    raw_u, uid = np.unique(table.users[idx], return_inverse=True)
    raw_i, iid = np.unique(table.items[idx], return_inverse=True)
    return _Prepared(
        users=uid.reshape(-1).astype(np.int64),  # idx is still (user, time, position) ordered
        items=iid.reshape(-1).astype(np.int64),
        n_users=int(raw_u.shape[0]),
        n_items=int(raw_i.shape[0]),
        maps=IdMaps(raw_u, raw_i, 0),
    )


def _as_table(source: Any, read_kw: dict) -> Table:
    if isinstance(source, Table):
        return source
    if read_kw.get("user_col") is None or read_kw.get("item_col") is None:
        raise TypeError("reading a file needs user_col and item_col")
    return read_table(source, **read_kw)


# --------------------------------------------------------------------------- #
# Interaction datasets
# --------------------------------------------------------------------------- #


def load_table(
    path: PathLike | Table,
    *,
    user_col: str | int | None = None,
    item_col: str | int | None = None,
    rating_col: str | int | None = None,
    time_col: str | int | None = None,
    sep: str = ",",
    header: bool = True,
    min_rating: float | None = None,
    k_core: int | tuple[int, int] | None = None,
    split: str = "temporal",
    fractions: Sequence[float] = (0.7, 0.2, 0.1),
    duplicates: str = "first",
    cold_items: str = "drop",
    name: str | None = None,
    return_maps: bool = False,
) -> InteractionData | tuple[InteractionData, IdMaps]:
    """Loads a table of interactions as an implicit-feedback :class:`InteractionData`.

    Steps, in order (a :class:`Table` from :func:`from_columns` may replace the file):

    1. :func:`read_table` (``user_col`` ... ``header``);
    2. keep rows with ``rating >= min_rating`` (all rows if None: every row is a positive);
    3. repeated (user, item) pairs: keep the earliest (``duplicates="first"``), the latest
       (``"last"``), or raise (``"error"``);
    4. iterative :func:`k_core` with ``(user_min, item_min)`` (an int ``k`` means ``(k, k)``),
       where ``user_min`` is raised to 3: a user needs one interaction in each split;
    5. re-map raw ids to contiguous ids in increasing raw-id order (:class:`IdMaps`);
    6. per user, order by (timestamp, file position) (file order without ``time_col``) and split:

       * ``"temporal"``: the first ``ceil(p_train n)`` rows to train, up to
         ``ceil((p_train + p_valid) n)`` to valid, the rest to test, each split >= 1
         (:func:`~diffrec_jax.data.split_counts`, as the MovieLens loader);
       * ``"leave_one_out"``: the last row to test, the one before to valid, the rest to train;

    7. ``cold_items="drop"`` (default) removes valid/test rows of items that have no train row
       and re-maps the items again, so every item is trainable and the dataset round-trips
       through the DiffRec ``.npy`` format (:func:`write_diffrec_npy`); ``"keep"`` keeps them
       (their train column is empty).

    Values are 1.0; within a CSR row, items are in chronological order (what T-DiffRec's time
    weights need).

    Args:
        path: the file, or a :class:`Table`.
        user_col, item_col, rating_col, time_col, sep, header: see :func:`read_table`.
        min_rating: rating threshold for implicit feedback.
        k_core: ``k`` or ``(user_min, item_min)``; None: no k-core beyond 3 rows per user.
        split: ``"temporal"`` or ``"leave_one_out"``.
        fractions: (train, valid, test) shares of the temporal split.
        duplicates: ``"first"``, ``"last"`` or ``"error"``.
        cold_items: ``"drop"`` or ``"keep"``.
        name: dataset name (default: the file stem).
        return_maps: also return the :class:`IdMaps` of the final ids.

    Returns:
        The validated :class:`InteractionData`, or ``(data, maps)`` with ``return_maps``.

    Raises:
        DataError: malformed input (see :func:`read_table`), ``min_rating`` without a rating
            column, or nothing left after filtering.
        ValueError: bad ``split``, ``fractions``, ``duplicates``, ``cold_items`` or ``k_core``.
    """
    if split not in ("temporal", "leave_one_out"):
        raise ValueError(f"split must be 'temporal' or 'leave_one_out', got {split!r}")
    if cold_items not in ("drop", "keep"):
        raise ValueError(f"cold_items must be 'drop' or 'keep', got {cold_items!r}")
    if split == "temporal":
        check_split(fractions)
    table = _as_table(path, dict(user_col=user_col, item_col=item_col, rating_col=rating_col,
                                 time_col=time_col, sep=sep, header=header))
    p = _prepare(table, min_rating=min_rating, k_core_min=k_core, duplicates=duplicates,
                 min_per_user=3)
    if split == "temporal":
        part = assign_splits(p.users, p.n_users, fractions)
    else:
        counts = np.bincount(p.users, minlength=p.n_users)
        end = np.cumsum(counts)[p.users]  # one past the user's last row
        pos = np.arange(p.users.shape[0])
        part = np.where(pos == end - 1, 2, np.where(pos == end - 2, 1, 0)).astype(np.int8)
    users, items, maps, n_items = p.users, p.items, p.maps, p.n_items
    if cold_items == "drop":
        in_train = np.zeros(n_items, bool)
        in_train[items[part == 0]] = True
        if not in_train.all():
            keep = in_train[items]
            users, items, part = users[keep], items[keep], part[keep]
            new_id = np.cumsum(in_train) - 1
            items = new_id[items]
            maps = IdMaps(maps.users, maps.items[in_train], 0)
            n_items = int(in_train.sum())
    for k, s in enumerate(_SPLITS):
        if not (part == k).any():
            raise DataError(
                f"{table.source}: the {s} split is empty: every {s} row is of an item without "
                "train rows (cold_items='drop'); use more data, another split or cold_items='keep'"
            )
    csrs = {
        s: CSR.from_pairs(users[part == k], items[part == k], p.n_users, n_items)
        for k, s in enumerate(_SPLITS)
    }
    data = InteractionData(
        name=name or Path(table.source).stem,
        n_users=p.n_users,
        n_items=n_items,
        train=csrs["train"],
        valid=csrs["valid"],
        test=csrs["test"],
    )
    validate(data, source=table.source)
    return (data, maps) if return_maps else data


def write_diffrec_npy(
    data: InteractionData, out_dir: PathLike, *, maps: IdMaps | None = None
) -> Path:
    """Writes a dataset in DiffRec's ``*_list.npy`` format, read back by ``load_diffrec_npy``.

    Files: ``train_list.npy``, ``valid_list.npy``, ``test_list.npy`` (int64 ``[N, 2]`` rows
    ``(user, item)``, each user's items in CSR row order, i.e. chronological for our loaders),
    ``item_emb.npy`` when ``data.item_emb`` is set, and ``id_maps.npz`` when ``maps`` is given.
    Point a config at the folder with ``--config.data.source=diffrec_npy
    --config.data.dir=<out_dir>``.

    The format derives ``n_users``/``n_items`` from the train file, so every user and item
    must have a train row (``load_table(..., cold_items="drop")`` guarantees the items).

    Args:
        data: the dataset.
        out_dir: folder (created).
        maps: optional raw-id maps to store beside the splits.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        DataError: a user or an item without train rows (the format could not express it).
    """
    tr_users = np.unique(data.train.user_ids())
    tr_items = np.unique(data.train.indices)
    if tr_users.size != data.n_users or tr_items.size != data.n_items:
        raise DataError(
            f"{out_dir}: cannot write {data.name!r} in the DiffRec .npy format: "
            f"{data.n_users - tr_users.size} user(s) and {data.n_items - tr_items.size} item(s) "
            "have no train row (the format derives the sizes from train_list.npy); load the table "
            "with cold_items='drop'"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for s in _SPLITS:
        u, i = data.split(s).to_pairs()
        np.save(out / f"{s}_list.npy", np.stack([u, i.astype(np.int64)], axis=1))
    if data.item_emb is not None:
        np.save(out / "item_emb.npy", data.item_emb)
    if maps is not None:
        maps.save(out / "id_maps.npz")
    return out


# --------------------------------------------------------------------------- #
# Sequence datasets
# --------------------------------------------------------------------------- #


def to_sequences(
    source: PathLike | Table,
    *,
    user_col: str | int | None = None,
    item_col: str | int | None = None,
    rating_col: str | int | None = None,
    time_col: str | int | None = None,
    sep: str = ",",
    header: bool = True,
    min_rating: float | None = None,
    k_core: int | tuple[int, int] | None = None,
    duplicates: str = "first",
    max_len: int = 50,
    on_long: str = "truncate",
    name: str | None = None,
    save_to: PathLike | None = None,
    return_maps: bool = False,
) -> Any:
    """Per-user chronological sequences of a table, split leave-one-out (DiffuRec / SASRec).

    Steps 1-5 of :func:`load_table` (reading, ``min_rating``, ``duplicates``, ``k_core`` with
    at least 3 rows per user, re-mapping), then per user the items ordered by (timestamp, file
    position) form a sequence ``s`` and
    :func:`~diffrec_jax.data.sequence_data.leave_one_out` makes the examples: train on every
    prefix of ``s[:-2]``, valid ``s[:-2] -> s[-2]``, test ``s[:-1] -> s[-1]``. Items get ids
    ``1..n_items`` (0 pads, left padding), so ``maps.item_offset == 1``.

    Args:
        source: the file, or a :class:`Table`.
        user_col, item_col, rating_col, time_col, sep, header: see :func:`read_table`.
        min_rating, k_core, duplicates: see :func:`load_table`. Repeated items are common in
            sequences; ``duplicates="first"`` drops repeats of a (user, item) pair.
        max_len: ``L``, history length kept (the most recent items).
        on_long: ``"truncate"`` or ``"error"`` for longer histories.
        name: dataset name (default: the file stem).
        save_to: if given, also write the full sequences as DiffuRec's ``dataset.npz`` at this
            path (``id_maps.npz`` beside it), which ``config.data.source="diffurec_npz"`` reads.
        return_maps: also return the :class:`IdMaps`.

    Returns:
        :class:`~diffrec_jax.data.sequences.SequenceData`, or ``(data, maps)``.
    """
    table = _as_table(source, dict(user_col=user_col, item_col=item_col, rating_col=rating_col,
                                   time_col=time_col, sep=sep, header=header))
    p = _prepare(table, min_rating=min_rating, k_core_min=k_core, duplicates=duplicates,
                 min_per_user=3)
    offsets = np.zeros(p.n_users + 1, np.int64)
    np.cumsum(np.bincount(p.users, minlength=p.n_users), out=offsets[1:])
    items = (p.items + 1).astype(np.int64)
    nm = name or Path(table.source).stem
    data = leave_one_out(items, offsets, p.n_items, max_len=max_len, on_long=on_long, name=nm,
                         where=table.source)
    maps = IdMaps(p.maps.users, p.maps.items, 1)
    if save_to is not None:
        _write_diffurec_npz(Path(save_to), items, offsets, p.n_items, maps)
    return (data, maps) if return_maps else data


def _write_diffurec_npz(
    path: Path, items: np.ndarray, offsets: np.ndarray, n_items: int, maps: IdMaps
) -> None:
    """Writes full sequences (ids ``1..n_items``) in DiffuRec's ``dataset.npz`` layout."""
    lens = np.diff(offsets)
    U = lens.size
    last = offsets[1:] - 1
    keep = np.ones(items.size, bool)
    keep[last] = False
    keep[last - 1] = False
    train_off = np.zeros(U + 1, np.int64)
    np.cumsum(lens - 2, out=train_off[1:])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        train_items=items[keep].astype(np.int64),
        train_offsets=train_off,
        val_item=items[last - 1].astype(np.int64),
        test_item=items[last].astype(np.int64),
        num_items=np.int64(n_items),
        num_users=np.int64(U),
    )
    maps.save(path.parent / "id_maps.npz")
