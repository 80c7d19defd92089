"""Your own data: a CSV or Parquet table of (user, item[, rating, timestamp]) rows.

Host side only (NumPy, ``csv``; ``pyarrow`` only for Parquet, imported when needed). The
pipeline, each step a function of its own:

1. :func:`read_table` (or :func:`from_columns` for arrays you already hold, e.g. a pandas
   DataFrame's columns): raw columns in a :class:`Table`, every field checked;
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

import csv
import io
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from diffrec_jax.data.interactions import (
    CSR,
    DataError,
    InteractionData,
    _check_split,
    _split_sorted,
    validate,
)

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
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


# --------------------------------------------------------------------------- #
# Types
# --------------------------------------------------------------------------- #


class Table(NamedTuple):
    """Raw interaction rows as read from a file (host side, not yet filtered or re-mapped).

    Attributes:
        users: ``[N]`` raw user ids: int64 when every id is a canonical integer, else ``str``.
        items: ``[N]`` raw item ids, same convention.
        ratings: float64 ``[N]`` (finite) or None without a rating column.
        timestamps: int64 or float64 ``[N]`` or None without a time column. Date-time text
            is stored as int64 microseconds since 1970-01-01.
        rows: int64 ``[N]`` where each row came from: CSV line number (1-based) or Parquet /
            array row (0-based), used in error messages.
        source: the file (or a description of the arrays).
        row_label: ``"line"`` (CSV) or ``"row"``.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    rows: np.ndarray
    source: str
    row_label: str = "row"

    def __len__(self) -> int:
        return int(self.users.shape[0])


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
            f"unknown raw {what} id {_show(raw[np.argmax(miss)])} (filtered out or never seen)")
    return pos.astype(np.int64) + offset


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _where(src: str, label: str, row: int) -> str:
    return f"{src}: {label} {row}"


def _show(v: Any) -> str:
    """``repr`` of a value without NumPy's scalar wrappers (``'x'``, not ``np.str_('x')``)."""
    return repr(v.item() if isinstance(v, np.generic) else v)


def _ids(values: np.ndarray, rows: np.ndarray, src: str, label: str, what: str) -> np.ndarray:
    """Raw ids from text or numbers: int64 when every id is a canonical integer, else str.

    Args:
        values: ``[N]`` str, integer or object array.
        rows: int64 ``[N]`` row labels for messages.

    Returns:
        int64 or ``str`` array ``[N]``.
    """
    if values.dtype.kind in "iu":
        if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
            r = int(np.argmax(values > np.iinfo(np.int64).max))
            raise DataError(f"{_where(src, label, int(rows[r]))}: {what} id {values[r]} too large")
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        raise DataError(
            f"{src}: {what} ids are floating point ({values.dtype}); ids must be integers or text"
        )
    if values.dtype.kind == "O":
        bad = np.array([not isinstance(v, (str, int, np.integer)) for v in values], bool)
        if bad.any():
            r = int(np.argmax(bad))
            raise DataError(
                f"{_where(src, label, int(rows[r]))}: {what} id {_show(values[r])} is not text or an "
                "integer"
            )
    text = np.char.strip(values.astype(str))
    empty = np.char.str_len(text) == 0
    if empty.any():
        r = int(np.argmax(empty))
        raise DataError(f"{_where(src, label, int(rows[r]))}: empty {what} id")
    try:
        ints = text.astype(np.int64)
    except (ValueError, OverflowError):
        return text
    # Only canonical spellings become integers ("007" and "7" stay distinct as text).
    return ints if np.array_equal(ints.astype(str), text) else text


def _float_col(values: np.ndarray, rows: np.ndarray, src: str, label: str, what: str) -> np.ndarray:
    """A finite float64 column; DataError naming the first bad row."""
    try:
        out = np.asarray(values, dtype=np.float64) if values.dtype.kind != "U" else \
            np.char.strip(values).astype(np.float64)
    except (ValueError, TypeError):
        for r, v in enumerate(values):
            try:
                float(v)
            except (ValueError, TypeError):
                raise DataError(
                    f"{_where(src, label, int(rows[r]))}: {what} {_show(v)} is not a number"
                ) from None
        raise  # unreachable: some value failed as a whole but none alone
    bad = ~np.isfinite(out)
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(f"{_where(src, label, int(rows[r]))}: non-finite {what} {_show(values[r])}")
    return out


def _time_col(values: np.ndarray, rows: np.ndarray, src: str, label: str) -> np.ndarray:
    """Timestamps: integers (int64), numbers (float64) or ISO 8601 date-times (int64 us).

    Args:
        values: ``[N]`` str, numeric or datetime64 array.

    Returns:
        int64 or float64 ``[N]``.
    """
    if values.dtype.kind == "M":
        if np.isnat(values).any():
            r = int(np.argmax(np.isnat(values)))
            raise DataError(f"{_where(src, label, int(rows[r]))}: missing timestamp (NaT)")
        return values.astype("datetime64[us]").astype(np.int64)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        return _float_col(values, rows, src, label, "timestamp")
    text = np.char.strip(values.astype(str))
    try:
        return text.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    try:
        return _float_col(text, rows, src, label, "timestamp")
    except DataError:
        pass
    # Date-time text. A purely numeric value cannot be mixed in (numpy would read it as a year).
    numeric = np.zeros(text.shape[0], bool)
    for r, v in enumerate(text):
        try:
            float(v)
            numeric[r] = True
            continue
        except ValueError:
            pass
        try:
            ok = not np.isnat(np.datetime64(v, "us"))
        except ValueError:
            ok = False
        if not ok:
            raise DataError(
                f"{_where(src, label, int(rows[r]))}: timestamp {str(v)!r} is neither a number nor "
                "an ISO 8601 date-time (e.g. 2024-01-31 or 2024-01-31T12:00:00)"
            )
    if numeric.any():
        r = int(np.argmax(numeric))
        raise DataError(
            f"{_where(src, label, int(rows[r]))}: timestamp {str(text[r])!r} is a number but other "
            "rows hold date-times; the column mixes both"
        )
    return text.astype("datetime64[us]").astype(np.int64)


def _resolve_cols(
    names: list[str] | None, wanted: dict[str, Any], n_fields: int, src: str
) -> dict[str, int]:
    """Column indices of the requested columns (by header name or 0-based index)."""
    out, seen = {}, {}
    for role, col in wanted.items():
        if col is None:
            continue
        if isinstance(col, (int, np.integer)) and not isinstance(col, bool):
            idx = int(col)
            if not 0 <= idx < n_fields:
                raise DataError(
                    f"{src}: {role}_col={idx} is out of range: the table has {n_fields} columns"
                )
        elif isinstance(col, str):
            if names is None:
                raise DataError(
                    f"{src}: {role}_col={col!r} is a name but header=False; give a 0-based "
                    "column index or read the header"
                )
            if col not in names:
                raise DataError(f"{src}: no column {col!r} ({role}_col); the header has {names}")
            idx = names.index(col)
        else:
            raise TypeError(f"{role}_col must be a column name or index, got {col!r}")
        if idx in seen:
            raise ValueError(f"{role}_col and {seen[idx]}_col name the same column {col!r}")
        seen[idx] = role
        out[role] = idx
    return out


def _read_csv(path: Path, wanted: dict[str, Any], sep: str, header: bool) -> dict:
    """Parses a delimited text file strictly into columns of strings.

    Returns:
        ``{role: str [N]}`` plus ``"_rows"``: int64 ``[N]`` line numbers (1-based).
    """
    src = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{src}: cannot read file: {e}") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{src}: line {line}: not UTF-8 text ({e.reason})") from None
    if not sep:
        raise ValueError("sep must be a non-empty string")
    if len(sep) == 1:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)

        def records():
            while True:
                try:
                    rec = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    raise DataError(f"{src}: line {reader.line_num}: malformed CSV ({e})") from None
                yield reader.line_num, rec
    else:  # multi-character separators (e.g. MovieLens '::'): plain split, no quoting

        def records():
            for i, line in enumerate(text.splitlines(), start=1):
                yield i, line.split(sep) if line.strip() else []

    names: list[str] | None = None
    cols: dict[str, int] | None = None
    n_fields = 0
    vals: dict[str, list[str]] = {}
    rows: list[int] = []
    for ln, rec in records():
        if not rec or all(not f.strip() for f in rec):
            continue  # blank line
        if cols is None:
            n_fields = len(rec)
            if header:
                names = [f.strip() for f in rec]
                dup = {n for n in names if names.count(n) > 1}
                if dup:
                    raise DataError(
                        f"{src}: line {ln}: repeated column name(s) {sorted(dup)} in the header")
            cols = _resolve_cols(names, wanted, n_fields, src)
            vals = {role: [] for role in cols}
            if header:
                continue
        if len(rec) != n_fields:
            shown = sep.join(rec)
            raise DataError(
                f"{src}: line {ln}: expected {n_fields} fields separated by {sep!r} "
                f"({'as the header' if header else 'as the first line'}), got {len(rec)}: "
                f"{shown[:80]!r}"
            )
        for role, idx in cols.items():
            vals[role].append(rec[idx])
        rows.append(ln)
    if cols is None:
        raise DataError(f"{src}: empty file (no header and no rows)")
    if not rows:
        raise DataError(f"{src}: no data rows" + (" after the header" if header else ""))
    out = {role: np.asarray(v, dtype=str) for role, v in vals.items()}
    out["_rows"] = np.asarray(rows, np.int64)
    return out


def _read_parquet(path: Path, wanted: dict[str, Any]) -> dict:
    """Reads the requested Parquet columns with pyarrow.

    Returns:
        ``{role: array [N]}`` plus ``"_rows"``: int64 ``[N]`` row indices (0-based).
    """
    src = str(path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f"{src}: reading Parquet needs pyarrow, which is not installed: `pip install pyarrow` "
            "(or `pip install diffrec_jax[tfds]`, which brings it), or save the table as CSV"
        ) from None
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{src}: not a readable Parquet file ({e})") from e
    names = list(schema.names)
    cols = _resolve_cols(names, wanted, len(names), src)
    try:
        table = pq.read_table(path, columns=[names[i] for i in cols.values()])
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{src}: cannot read the Parquet data ({e})") from e
    out = {}
    for role, idx in cols.items():
        col = table.column(names[idx]).combine_chunks()
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        if col.null_count:
            r = int(np.argmax(np.asarray(col.is_null())))
            raise DataError(f"{src}: row {r}: missing {role} value (null in column {names[idx]!r})")
        t = col.type
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            arr = col.cast(pa.timestamp("us")).to_numpy(zero_copy_only=False)
        elif pa.types.is_integer(t) or pa.types.is_floating(t):
            arr = col.to_numpy(zero_copy_only=False)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            arr = np.asarray(col.to_pylist(), dtype=str)
        elif pa.types.is_decimal(t):
            arr = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        else:
            raise DataError(f"{src}: column {names[idx]!r} ({role}) has unsupported type {t}")
        out[role] = arr
    out["_rows"] = np.arange(table.num_rows, dtype=np.int64)
    if table.num_rows == 0:
        raise DataError(f"{src}: no data rows")
    return out


def _make_table(cols: dict, src: str, label: str) -> Table:
    rows = cols["_rows"]
    return Table(
        users=_ids(cols["user"], rows, src, label, "user"),
        items=_ids(cols["item"], rows, src, label, "item"),
        ratings=(None if "rating" not in cols
                 else _float_col(cols["rating"], rows, src, label, "rating")),
        timestamps=None if "time" not in cols else _time_col(cols["time"], rows, src, label),
        rows=rows,
        source=src,
        row_label=label,
    )


def read_table(
    path: PathLike,
    *,
    user_col: str | int,
    item_col: str | int,
    rating_col: str | int | None = None,
    time_col: str | int | None = None,
    sep: str = ",",
    header: bool = True,
    format: str | None = None,
) -> Table:
    """Reads a CSV (or other delimited text) or Parquet table of interactions.

    CSV: UTF-8 text (a byte-order mark is accepted), parsed with the ``csv`` module
    (quoting allowed) for a one-character ``sep``, or split on a longer ``sep`` such as
    MovieLens' ``'::'``. Blank lines are skipped; every other line must have the same number
    of fields as the header (or the first line when ``header=False``). Parquet needs
    ``pyarrow``; integer, string, float, timestamp and date columns are read.

    Ids: a column whose values are all canonical integers (``"42"``, not ``"042"``) becomes
    int64, any other column is kept as text. Ratings must be finite numbers. Timestamps may
    be integers, numbers or ISO 8601 date-times (stored as int64 microseconds).

    Args:
        path: ``.csv``/``.tsv``/``.txt``/... or ``.parquet`` file.
        user_col: user column: header name or 0-based index.
        item_col: item column.
        rating_col: optional rating column (needed for ``min_rating``).
        time_col: optional timestamp column (else the file order is the time order).
        sep: field separator of text files (``","``, ``"\\t"``, ``"::"`` ...).
        header: whether the first non-blank line of a text file names the columns.
        format: ``"csv"`` or ``"parquet"``; default from the suffix (``.parquet``/``.pq``
            -> Parquet, anything else -> text).

    Returns:
        The :class:`Table` (``N`` rows in file order).

    Raises:
        DataError: missing or unreadable file, undecodable text, unknown column, wrong
            number of fields, empty id, non-numeric or non-finite rating, bad timestamp, null
            Parquet value (naming the line or row).
        ImportError: a Parquet file without ``pyarrow`` installed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    fmt = format or ("parquet" if path.suffix.lower() in _PARQUET_SUFFIXES else "csv")
    wanted = {"user": user_col, "item": item_col, "rating": rating_col, "time": time_col}
    if fmt == "parquet":
        return _make_table(_read_parquet(path, wanted), str(path), "row")
    if fmt != "csv":
        raise ValueError(f"format must be 'csv' or 'parquet', got {format!r}")
    return _make_table(_read_csv(path, wanted, sep, header), str(path), "line")


def from_columns(
    users: Any,
    items: Any,
    ratings: Any = None,
    timestamps: Any = None,
    *,
    source: str = "columns",
) -> Table:
    """A :class:`Table` from arrays already in memory (NumPy arrays, lists, DataFrame columns).

    Args:
        users: ``[N]`` raw user ids (integers or text).
        items: ``[N]`` raw item ids.
        ratings: optional ``[N]`` numbers.
        timestamps: optional ``[N]`` integers, numbers, ``datetime64`` or ISO 8601 text.
        source: name used in error messages.

    Returns:
        The checked table; ``rows`` are the 0-based positions.
    """
    cols = {"user": np.asarray(users), "item": np.asarray(items)}
    if ratings is not None:
        cols["rating"] = np.asarray(ratings)
    if timestamps is not None:
        cols["time"] = np.asarray(timestamps)
    n = cols["user"].shape[0] if cols["user"].ndim == 1 else -1
    for role, arr in cols.items():
        if arr.ndim != 1 or arr.shape[0] != n:
            raise DataError(
                f"{source}: every column must be 1-D of the same length; got "
                + ", ".join(f"{k} {v.shape}" for k, v in cols.items())
            )
    if n == 0:
        raise DataError(f"{source}: no rows")
    cols["_rows"] = np.arange(n, dtype=np.int64)
    return _make_table(cols, source, "row")


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
                f"{_show(table.users[idx[r]])}, item {_show(table.items[idx[r]])} on {label}s {where} "
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
        _check_split(fractions)
    table = _as_table(path, dict(user_col=user_col, item_col=item_col, rating_col=rating_col,
                                 time_col=time_col, sep=sep, header=header))
    p = _prepare(table, min_rating=min_rating, k_core_min=k_core, duplicates=duplicates,
                 min_per_user=3)
    if split == "temporal":
        part = _split_sorted(p.users, p.n_users, fractions)
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
    :func:`~diffrec_jax.data.sequences.leave_one_out` makes the examples: train on every
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
    from diffrec_jax.data.sequences import leave_one_out

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

