"""Reading your own interaction table (CSV, other delimited text, Parquet), every field checked.

Host side only (NumPy, ``csv``; ``pyarrow`` only for Parquet, imported when needed).
:func:`read_table` reads a file and :func:`from_columns` takes arrays you already hold (e.g. a
pandas DataFrame's columns); both give a :class:`Table` of raw columns, not yet filtered or
re-mapped. The preparation and splitting into datasets is :mod:`diffrec_jax.data.tabular` (which
re-exports these names).

Every malformed input raises :class:`~diffrec_jax.data.DataError` naming the file and the
problem (the line number for CSV, the row for Parquet).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from diffrec_jax.data.containers import DataError

__all__ = ["Table", "from_columns", "read_table"]

PathLike = str | os.PathLike
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


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



# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _where(src: str, label: str, row: int) -> str:
    return f"{src}: {label} {row}"



def show_value(v: Any) -> str:
    """``repr`` of a value without NumPy's scalar wrappers (``'x'``, not ``np.str_('x')``).

    Shared by the messages of :mod:`diffrec_jax.data.tabular`.
    """
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
                f"{_where(src, label, int(rows[r]))}: {what} id {show_value(values[r])} is not text "
                "or an integer"
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
                    f"{_where(src, label, int(rows[r]))}: {what} {show_value(v)} is not a number"
                ) from None
        raise  # unreachable: some value failed as a whole but none alone
    bad = ~np.isfinite(out)
    if bad.any():
        r = int(np.argmax(bad))
        raise DataError(
            f"{_where(src, label, int(rows[r]))}: non-finite {what} {show_value(values[r])}")
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
