"""MovieLens files: ``u.data`` (ML-100K) / ``ratings.dat`` (ML-1M) ratings and movie titles.

* :func:`load_movielens`: the ratings as implicit feedback with a per-user temporal split
  (:func:`~diffrec_jax.data.splits.split_counts`);
* :func:`load_movielens_titles`: ``{raw item id: title}`` from ``u.item`` / ``movies.dat``.

The TFDS copies of MovieLens are read by :mod:`diffrec_jax.data.tfds`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from diffrec_jax.data.containers import CSR, SPLITS, DataError, InteractionData
from diffrec_jax.data.splits import assign_splits, check_split
from diffrec_jax.data.validation import count_duplicates, pair_keys, validate

__all__ = ["load_movielens", "load_movielens_titles"]

PathLike = str | os.PathLike

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
    check_split(split)
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
    n_extra, first = count_duplicates(pair_keys(raw_u, raw_i, int(raw_items.shape[0])))
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
    part = assign_splits(uid, n_users, split)
    csrs = {
        s: CSR.from_pairs(uid[part == k], iid[part == k], n_users, n_items)
        for k, s in enumerate(SPLITS)
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
