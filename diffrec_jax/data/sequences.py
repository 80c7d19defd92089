"""Sequential-recommendation data: padded histories with next-item targets, loaders, splits.

Host side only (NumPy, no JAX). One example is a pair ``(history, target)``: the items a user
(or a session) interacted with before ``target``, oldest first.

Layout of a split (:class:`SeqSplit`), with ``N`` examples and ``L = max_len``:

* ``seq``: int32 ``[N, L]`` item ids, padded with ``pad_id``;
* ``lengths``: int32 ``[N]`` number of real items in the row, ``0`` for an empty history;
* ``targets``: int32 ``[N]`` the next item.

Padding id convention (:class:`SequenceData`): the embedding table of a model has
``n_items + 1`` rows; items occupy ``n_items`` consecutive ids and the remaining id is the padding
id. Each loader keeps its paper's native convention, so the reference code's quirks (the padding
row is scored, padded positions are attended) are reproduced exactly:

* DiffuRec / SASRec format (:func:`load_diffurec_npz`): items ``1..N``, ``pad_id = 0``, histories
  **left**-padded (``pad_side="left"``): the most recent item is always in column ``L-1``;
* DreamRec format (:func:`load_dreamrec_npz`): items ``0..I-1``, ``pad_id = I``, histories
  **right**-padded (``pad_side="right"``): the most recent item is in column ``lengths-1``.
  DreamRec's files store ``len_seq = max(#items, 1)``; we store the true count (0 for an empty
  history); a model that gathers column ``max(lengths - 1, 0)`` does exactly what the reference does.

Histories longer than ``max_len`` (``on_long``): ``"truncate"`` keeps the ``max_len`` most recent
items (what both references do when they build windows), ``"error"`` raises :class:`DataError`.

Splits:

* :func:`leave_one_out`: per-user chronological sequences ``s``; train examples are every prefix of
  ``s[:-2]`` (history ``s[:k]``, target ``s[k]``, ``k >= 1``), valid is ``s[:-2] -> s[-2]``, test is
  ``s[:-1] -> s[-1]`` (DiffuRec, SASRec);
* :func:`session_split`: DreamRec's chronological split of sessions (first 80 % of the sessions for
  training, then 10 % / 10 %); every position of a session is an example, the first one with an
  empty history.

Every problem with a file raises :class:`DataError` naming the file and the problem, before any
JAX work.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from diffrec_jax.data.interactions import DataError

__all__ = [
    "SeqSplit",
    "SequenceData",
    "leave_one_out",
    "load_diffurec_npz",
    "load_dreamrec_npz",
    "make_synthetic_sequences",
    "pad_windows",
    "session_split",
]

PathLike = str | os.PathLike
_SPLITS = ("train", "valid", "test")


# --------------------------------------------------------------------------- #
# Types
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class SeqSplit:
    """One split of (history, next item) examples.

    Attributes:
        seq: int32 ``[N, L]`` padded histories, oldest item first.
        lengths: int32 ``[N]`` number of real items per row (0 = empty history).
        targets: int32 ``[N]`` next items.
    """

    seq: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])


@dataclasses.dataclass(frozen=True)
class SequenceData:
    """A sequential dataset: ``train``/``valid``/``test`` splits and the id convention.

    Attributes:
        name: dataset name (used in results and error messages).
        train, valid, test: :class:`SeqSplit` with the same ``max_len``.
        n_items: number of real items; the table has ``n_items + 1`` rows.
        pad_id: padding id (``0`` or ``n_items``).
        pad_side: ``"left"`` (most recent item in the last column) or ``"right"``.
        max_len: ``L``, the width of every ``seq``.
    """

    name: str
    train: SeqSplit
    valid: SeqSplit
    test: SeqSplit
    n_items: int
    pad_id: int
    pad_side: str
    max_len: int

    @property
    def num_embeddings(self) -> int:
        """Rows of the item table: ``n_items + 1`` (items and the padding id)."""
        return self.n_items + 1

    @property
    def item_ids(self) -> tuple[int, int]:
        """``[lo, hi)`` range of the real item ids."""
        lo = 1 if self.pad_id == 0 else 0
        return lo, lo + self.n_items

    def split(self, which: str) -> SeqSplit:
        if which not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {which!r}")
        return getattr(self, which)

    def mask(self, which: str) -> np.ndarray:
        """bool ``[N, L]``: True on real items of split ``which``."""
        return self.split(which).seq != self.pad_id

    def train_items(self) -> np.ndarray:
        """bool ``[num_embeddings]``: the ids that occur anywhere in the train split (as a target
        or in a history; the padding id is False)."""
        seen = np.zeros(self.num_embeddings, bool)
        tr = self.train
        seen[tr.targets] = True
        seen[tr.seq[tr.seq != self.pad_id]] = True
        seen[self.pad_id] = False
        return seen

    def cold_target_fraction(self) -> dict:
        """Per split, the fraction of rows whose target never occurs in the train split.

        A model cannot learn those items' embeddings from the training data: they keep their
        initial values, which matters for dot-product rankers (see the README's DreamRec notes).
        """
        seen = self.train_items()
        return {s: float(np.mean(~seen[self.split(s).targets])) if len(self.split(s)) else 0.0
                for s in _SPLITS}

    def summary(self) -> dict:
        return {
            "name": self.name,
            "n_items": self.n_items,
            "pad_id": self.pad_id,
            "pad_side": self.pad_side,
            "max_len": self.max_len,
            **{f"n_{s}": len(self.split(s)) for s in _SPLITS},
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"SequenceData({s['name']!r}: {s['n_items']} items, pad {s['pad_id']} "
            f"({s['pad_side']}), L={s['max_len']}, train/valid/test "
            f"{s['n_train']}/{s['n_valid']}/{s['n_test']})"
        )


# --------------------------------------------------------------------------- #
# Building padded windows
# --------------------------------------------------------------------------- #


def pad_windows(
    items: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    max_len: int,
    *,
    pad_id: int,
    pad_side: str,
    on_long: str = "truncate",
    where: str = "sequences",
) -> tuple[np.ndarray, np.ndarray]:
    """Pads the windows ``items[starts[n]:ends[n]]`` into an ``[N, L]`` matrix (vectorised).

    A window longer than ``L`` keeps its last ``L`` items (``on_long="truncate"``) or raises.

    Args:
        items: int ``[M]`` concatenated item ids.
        starts, ends: int ``[N]`` window bounds into ``items`` (``starts <= ends``).
        max_len: ``L``.
        pad_id: padding id.
        pad_side: ``"left"`` or ``"right"``.
        on_long: ``"truncate"`` or ``"error"``.
        where: source named in errors.

    Returns:
        ``(seq_NxL int32, lengths_N int32)``.
    """
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    if on_long not in ("truncate", "error"):
        raise ValueError(f"on_long must be 'truncate' or 'error', got {on_long!r}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    full = ends - starts
    if full.size and full.min() < 0:
        raise DataError(f"{where}: a window ends before it starts")
    if on_long == "error" and full.size and full.max() > max_len:
        n = int(np.argmax(full > max_len))
        raise DataError(
            f"{where}: history {n} has {int(full[n])} items, more than max_len={max_len} "
            f"({int(np.sum(full > max_len))} such rows); raise max_len or use on_long='truncate'"
        )
    lengths = np.minimum(full, max_len)
    first = ends - lengths  # keep the most recent items
    pos = np.arange(max_len, dtype=np.int64)[None, :]
    if pad_side == "left":
        src = first[:, None] + pos - (max_len - lengths)[:, None]
        valid = pos >= (max_len - lengths)[:, None]
    else:
        src = first[:, None] + pos
        valid = pos < lengths[:, None]
    items = np.asarray(items)
    if items.size == 0:
        seq = np.full(src.shape, pad_id, np.int32)
    else:
        seq = np.where(valid, items[np.clip(src, 0, items.size - 1)], pad_id).astype(np.int32)
    return seq, lengths.astype(np.int32)


# --------------------------------------------------------------------------- #
# Splits
# --------------------------------------------------------------------------- #


def leave_one_out(
    items: np.ndarray,
    offsets: np.ndarray,
    n_items: int,
    *,
    max_len: int = 50,
    on_long: str = "truncate",
    name: str = "sequences",
    where: str | None = None,
) -> SequenceData:
    """Leave-one-out split of per-user chronological sequences (DiffuRec / SASRec protocol).

    With the full sequence ``s`` of a user (``len(s) >= 3``): train examples are
    ``(s[:k], s[k])`` for ``k = 1..len(s)-3`` (every prefix of ``s[:-2]``), valid is
    ``(s[:-2], s[-2])`` and test is ``(s[:-1], s[-1])``. Users are kept in order; histories are
    left-padded with 0 (items are ``1..n_items``).

    Args:
        items: int ``[M]`` concatenated sequences, ids in ``1..n_items``.
        offsets: int ``[U + 1]`` CSR offsets.
        n_items: number of items.
        max_len: ``L``.
        on_long: ``"truncate"`` (keep the most recent ``L``) or ``"error"``.
        name: dataset name.
        where: source named in errors (default: ``name``).

    Raises:
        DataError: a user with fewer than 3 items, ids out of range, bad offsets.
    """
    where = where or name
    items = np.asarray(items)
    offsets = np.asarray(offsets, np.int64)
    _check_csr(items, offsets, 1, n_items, where, "sequences")
    lens = np.diff(offsets)
    if lens.size == 0:
        raise DataError(f"{where}: no users")
    if lens.min() < 3:
        u = int(np.argmin(lens))
        raise DataError(
            f"{where}: user {u} has {int(lens[u])} items; leave-one-out needs >= 3 per user"
        )
    kw = dict(pad_id=0, pad_side="left", on_long=on_long)
    # train: prefixes of s[:-2] -> offsets shrunk by 2 at the end of every row
    train_off = np.stack([offsets[:-1], offsets[1:] - 2], 1)
    tr_starts, tr_tpos = _prefix_windows_pairs(train_off, min_history=1)
    tr_seq, tr_len = pad_windows(items, tr_starts, tr_tpos, max_len, where=f"{where} (train)", **kw)
    va_seq, va_len = pad_windows(
        items, offsets[:-1], offsets[1:] - 2, max_len, where=f"{where} (valid)", **kw
    )
    te_seq, te_len = pad_windows(
        items, offsets[:-1], offsets[1:] - 1, max_len, where=f"{where} (test)", **kw
    )
    data = SequenceData(
        name=name,
        train=SeqSplit(tr_seq, tr_len, items[tr_tpos].astype(np.int32)),
        valid=SeqSplit(va_seq, va_len, items[offsets[1:] - 2].astype(np.int32)),
        test=SeqSplit(te_seq, te_len, items[offsets[1:] - 1].astype(np.int32)),
        n_items=int(n_items),
        pad_id=0,
        pad_side="left",
        max_len=int(max_len),
    )
    validate_sequences(data, where)
    return data


def _prefix_windows_pairs(bounds: np.ndarray, min_history: int) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`_prefix_windows` for rows given as ``[U, 2]`` (start, end) bounds."""
    lens = bounds[:, 1] - bounds[:, 0]
    n_ex = np.maximum(lens - min_history, 0)
    row = np.repeat(np.arange(lens.size), n_ex)
    first = np.zeros(n_ex.size + 1, np.int64)
    np.cumsum(n_ex, out=first[1:])
    k = np.arange(row.size, dtype=np.int64) - first[row] + min_history
    return bounds[row, 0], bounds[row, 0] + k


def session_split(
    items: np.ndarray,
    offsets: np.ndarray,
    n_items: int,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    max_len: int = 10,
    on_long: str = "truncate",
    name: str = "sessions",
    where: str | None = None,
) -> SequenceData:
    """DreamRec's chronological split: sessions in time order, cut 80/10/10 by session.

    The first ``round(f_train S)`` sessions go to train, the next ``round(f_valid S)`` to valid, the
    rest to test. A session ``x_1..x_n`` yields ``n`` examples ``[] -> x_1, [x_1] -> x_2, ...`` with
    histories truncated to the last ``max_len`` items. Items are ``0..n_items-1``, right-padded with
    ``pad_id = n_items``.

    Args:
        items: int ``[M]`` concatenated sessions (chronological order of sessions and items).
        offsets: int ``[S + 1]``.
        n_items: number of items.
        fractions: train/valid/test shares of the sessions (sum 1).
        max_len: ``L``.
        on_long: ``"truncate"`` (DreamRec's behaviour) or ``"error"``.
    """
    where = where or name
    items = np.asarray(items)
    offsets = np.asarray(offsets, np.int64)
    _check_csr(items, offsets, 0, n_items - 1, where, "sessions")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative shares summing to 1, got {fractions}")
    S = offsets.size - 1
    n_tr = int(round(fractions[0] * S))
    n_va = int(round(fractions[1] * S))
    cuts = [0, n_tr, n_tr + n_va, S]
    splits = []
    for i, sname in enumerate(_SPLITS):
        bounds = np.stack([offsets[cuts[i] : cuts[i + 1]], offsets[cuts[i] + 1 : cuts[i + 1] + 1]], 1)
        starts, tpos = _prefix_windows_pairs(bounds.reshape(-1, 2), min_history=0)
        seq, lens = pad_windows(
            items, starts, tpos, max_len, pad_id=n_items, pad_side="right", on_long=on_long,
            where=f"{where} ({sname})",
        )
        splits.append(SeqSplit(seq, lens, items[tpos].astype(np.int32)))
    data = SequenceData(name, *splits, n_items=int(n_items), pad_id=int(n_items),
                        pad_side="right", max_len=int(max_len))
    validate_sequences(data, where)
    return data


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #


def _check_csr(items, offsets, lo, hi, where, what) -> None:
    if offsets.ndim != 1 or offsets.size < 1:
        raise DataError(f"{where}: {what} offsets must be a 1-D array of U+1 entries")
    if offsets[0] != 0 or offsets[-1] != items.size:
        raise DataError(
            f"{where}: {what} offsets must start at 0 and end at the number of items "
            f"({items.size}), got {int(offsets[0])}..{int(offsets[-1])}"
        )
    if np.any(np.diff(offsets) < 0):
        raise DataError(f"{where}: {what} offsets are not non-decreasing")
    if items.size and (items.min() < lo or items.max() > hi):
        raise DataError(
            f"{where}: {what} contain item ids outside [{lo}, {hi}] "
            f"(min {int(items.min())}, max {int(items.max())})"
        )


def validate_sequences(data: SequenceData, where: str | None = None) -> None:
    """Checks a :class:`SequenceData`; raises :class:`DataError` naming ``where`` and the split.

    Checks: int32 arrays of the right shapes, no empty split, ids in range, targets never the
    padding id, ``lengths`` in ``[0, L]`` and equal to the number of non-padding entries, and the
    real items contiguous on the documented side.
    """
    where = where or data.name
    lo, hi = data.item_ids
    L = data.max_len
    for s in _SPLITS:
        sp = data.split(s)
        w = f"{where} ({s})"
        if len(sp) == 0:
            raise DataError(f"{w}: the split is empty")
        if sp.seq.dtype != np.int32 or sp.lengths.dtype != np.int32 or sp.targets.dtype != np.int32:
            raise DataError(f"{w}: arrays must be int32")
        if sp.seq.shape != (len(sp), L) or sp.lengths.shape != (len(sp),):
            raise DataError(
                f"{w}: expected seq [{len(sp)}, {L}] and lengths [{len(sp)}], got "
                f"{sp.seq.shape} and {sp.lengths.shape}"
            )
        if sp.targets.min() < lo or sp.targets.max() >= hi:
            raise DataError(f"{w}: targets outside the item ids [{lo}, {hi})")
        real = sp.seq != data.pad_id
        if sp.seq.min() < min(lo, data.pad_id) or sp.seq.max() > max(hi - 1, data.pad_id):
            raise DataError(f"{w}: history ids outside [{min(lo, data.pad_id)}, {max(hi - 1, data.pad_id)}]")
        if np.any(real.sum(1) != sp.lengths):
            n = int(np.argmax(real.sum(1) != sp.lengths))
            raise DataError(f"{w}: row {n}: lengths={int(sp.lengths[n])} but {int(real[n].sum())} real items")
        pos = np.arange(L)[None, :]
        expect = pos >= L - sp.lengths[:, None] if data.pad_side == "left" else pos < sp.lengths[:, None]
        if np.any(real != expect):
            n = int(np.argmax(np.any(real != expect, 1)))
            raise DataError(f"{w}: row {n}: real items are not contiguous on the {data.pad_side}-padded layout")


# --------------------------------------------------------------------------- #
# Loaders (.npz only, never pickles)
# --------------------------------------------------------------------------- #


def _open_npz(path: Path, required: Sequence[str]) -> dict:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise DataError(f"{path}: not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            missing = [k for k in required if k not in files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (has {sorted(files)})")
            return {k: z[k] for k in files}
    except DataError:
        raise
    except ValueError as e:  # object arrays need pickle: refused
        raise DataError(f"{path}: cannot be read without pickle ({e}); convert it to plain arrays") from e
    except Exception as e:  # noqa: BLE001 - zip/format errors
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e


def _find_npz(path: PathLike, default_names: Sequence[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        for n in default_names:
            if (p / n).exists():
                return p / n
        cands = sorted(p.glob("*.npz"))
        if len(cands) == 1:
            return cands[0]
        raise DataError(f"{p}: expected one .npz file (e.g. {default_names[0]}), found {len(cands)}")
    return p


def _int_array(z: dict, key: str, path: Path, ndim: int) -> np.ndarray:
    a = z[key]
    if not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{path}: array {key!r} must hold integers, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise DataError(f"{path}: array {key!r} must have {ndim} dimensions, got shape {a.shape}")
    return a


def load_diffurec_npz(
    path: PathLike,
    *,
    max_len: int = 50,
    on_long: str = "truncate",
    name: str | None = None,
) -> SequenceData:
    """Loads DiffuRec's ``dataset.npz`` (``shared/data/diffurec/<ds>/``) as a leave-one-out split.

    A folder that holds only the reference's ``dataset.pkl`` (or a ``.pkl`` path) is read through
    the restricted unpickler (:func:`diffrec_jax.safe_pickle.safe_load`: no code can run) and
    checked by :func:`diffrec_jax.safe_pickle.diffurec_arrays`; a malformed or hostile pickle is a
    :class:`DataError` naming the file.

    Arrays read (``allow_pickle=False``): ``train_items`` int ``[M]`` and ``train_offsets``
    ``[U+1]`` (each user's chronological sequence without its last two items), ``val_item`` and
    ``test_item`` ``[U]``, ``num_items`` (items are ``1..N``, 0 is padding). The full sequence of
    user ``u`` is ``train[u] + [val[u], test[u]]``; examples follow :func:`leave_one_out` (the
    reference's ``utils.py``): training on every prefix of ``train[u]``, valid ``train[u] -> val``,
    test ``train[u] + [val] -> test``.

    Args:
        path: the ``.npz`` file or its folder.
        max_len: ``L`` (50 in the reference).
        on_long: ``"truncate"`` (the reference keeps the last ``L`` items) or ``"error"``.
        name: dataset name (default: the folder name).
    """
    p = Path(path)
    if p.is_dir() and not list(p.glob("*.npz")):
        if not (p / "dataset.pkl").is_file():
            raise DataError(f"{p}: no dataset.npz or dataset.pkl (DiffuRec's layout) in this folder")
        p = p / "dataset.pkl"
    if p.suffix == ".pkl":  # the reference's own file, through the restricted unpickler
        from diffrec_jax.safe_pickle import diffurec_arrays, safe_load

        z = diffurec_arrays(safe_load(p), source=str(p))  # DataError / UnsafePickleError name the file
    else:
        p = _find_npz(p, ("dataset.npz",))
        z = _open_npz(p, ("train_items", "train_offsets", "val_item", "test_item", "num_items"))
    tr = _int_array(z, "train_items", p, 1)
    off = _int_array(z, "train_offsets", p, 1).astype(np.int64)
    va = _int_array(z, "val_item", p, 1)
    te = _int_array(z, "test_item", p, 1)
    n_items = int(_int_array(z, "num_items", p, 0))
    if n_items < 1:
        raise DataError(f"{p}: num_items must be >= 1, got {n_items}")
    U = off.size - 1
    if U < 1:
        raise DataError(f"{p}: no users (train_offsets has {off.size} entries)")
    if va.shape != (U,) or te.shape != (U,):
        raise DataError(f"{p}: val_item {va.shape} and test_item {te.shape} must have U={U} entries")
    if "num_users" in z and int(z["num_users"]) != U:
        raise DataError(f"{p}: num_users={int(z['num_users'])} but train_offsets describe {U} users")
    for key, a in (("train_items", tr), ("val_item", va), ("test_item", te)):
        if a.size and (a.min() < 1 or a.max() > n_items):
            raise DataError(
                f"{p}: {key} has ids outside 1..num_items={n_items} (min {int(a.min())}, "
                f"max {int(a.max())}); 0 is the padding id"
            )
    _check_csr(tr, off, 1, n_items, str(p), "train_items")
    lens = np.diff(off)
    if lens.min() < 1:
        u = int(np.argmin(lens))
        raise DataError(f"{p}: user {u} has an empty training sequence (no history for validation)")
    # full sequences: train[u] + val[u] + test[u]
    full_off = off + 2 * np.arange(U + 1, dtype=np.int64)
    full = np.empty(tr.size + 2 * U, np.int32)
    rows = np.repeat(np.arange(U), lens)
    full[np.arange(tr.size) + 2 * rows] = tr
    full[full_off[1:] - 2] = va
    full[full_off[1:] - 1] = te
    return leave_one_out(
        full, full_off, n_items, max_len=max_len, on_long=on_long,
        name=name or p.parent.name, where=str(p),
    )


def load_dreamrec_npz(
    path: PathLike,
    *,
    max_len: int | None = None,
    on_long: str = "error",
    name: str | None = None,
) -> SequenceData:
    """Loads DreamRec's plain copy (``shared/data/dreamrec/yc/yc.npz``) with its given splits.

    Arrays read (``allow_pickle=False``): ``item_num``, ``seq_size`` and, per split ``train``,
    ``val``, ``test``: ``{split}_seq`` int ``[N, seq_size]`` (oldest first, right-padded with
    ``item_num``), ``{split}_len_seq`` ``[N]`` (``max(#items, 1)``) and ``{split}_next`` ``[N]``.
    Rows keep their file order. A file without a split (KuaiRec's ``ks_partial.npz`` has no train)
    is refused.

    Args:
        path: the ``.npz`` file or its folder.
        max_len: ``L`` (default ``seq_size``). A larger value pads more columns; a smaller one
            applies ``on_long`` to the longer histories.
        on_long: ``"error"`` (default) or ``"truncate"`` (keep the most recent items).
        name: dataset name (default: the folder name).
    """
    p = _find_npz(path, ("yc.npz", "ks.npz", "ks_partial.npz"))
    z = _open_npz(p, ("item_num", "seq_size"))
    I = int(_int_array(z, "item_num", p, 0))
    S = int(_int_array(z, "seq_size", p, 0))
    if I < 1 or S < 1:
        raise DataError(f"{p}: item_num ({I}) and seq_size ({S}) must be >= 1")
    L = S if max_len is None else int(max_len)
    splits = []
    for ours, theirs in zip(_SPLITS, ("train", "val", "test")):
        keys = [f"{theirs}_seq", f"{theirs}_len_seq", f"{theirs}_next"]
        missing = [k for k in keys if k not in z]
        if missing:
            raise DataError(
                f"{p}: the {theirs!r} split is missing (no {missing}); DreamRec needs train, val "
                f"and test (KuaiRec's copy here has no train split)"
            )
        seq = _int_array(z, keys[0], p, 2)
        lq = _int_array(z, keys[1], p, 1)
        nxt = _int_array(z, keys[2], p, 1)
        N = seq.shape[0]
        w = f"{p} ({theirs})"
        if N == 0:
            raise DataError(f"{w}: the split is empty")
        if seq.shape[1] != S or lq.shape != (N,) or nxt.shape != (N,):
            raise DataError(
                f"{w}: expected {keys[0]} [N, {S}], {keys[1]} [N], {keys[2]} [N]; got "
                f"{seq.shape}, {lq.shape}, {nxt.shape}"
            )
        if seq.min() < 0 or seq.max() > I:
            raise DataError(f"{w}: {keys[0]} has ids outside 0..item_num={I} (item_num is the padding id)")
        if nxt.min() < 0 or nxt.max() >= I:
            raise DataError(f"{w}: {keys[2]} has ids outside 0..{I - 1}")
        real = seq != I
        count = real.sum(1)
        if np.any(real[:, 1:] & ~real[:, :-1]):
            n = int(np.argmax(np.any(real[:, 1:] & ~real[:, :-1], 1)))
            raise DataError(f"{w}: row {n}: padding before a real item (expected padding at the end)")
        if lq.min() < 1 or lq.max() > S or np.any(lq != np.maximum(count, 1)):
            n = int(np.argmax(lq != np.maximum(count, 1)))
            raise DataError(
                f"{w}: row {n}: len_seq={int(lq[n])} does not match its {int(count[n])} real items "
                f"(expected max(#items, 1) in 1..{S})"
            )
        rows = np.arange(N, dtype=np.int64) * S
        flat = seq.reshape(-1)
        out_seq, out_len = pad_windows(
            flat, rows, rows + count, L, pad_id=I, pad_side="right", on_long=on_long, where=w
        )
        splits.append(SeqSplit(out_seq, out_len, nxt.astype(np.int32)))
    data = SequenceData(name or p.parent.name, *splits, n_items=I, pad_id=I, pad_side="right", max_len=L)
    validate_sequences(data, str(p))
    return data


# --------------------------------------------------------------------------- #
# Synthetic sequences
# --------------------------------------------------------------------------- #


def make_synthetic_sequences(
    n_users: int = 300,
    n_items: int = 100,
    *,
    mean_len: float = 12.0,
    layout: str = "loo",
    max_len: int = 10,
    n_successors: int = 3,
    stickiness: float = 0.8,
    seed: int = 0,
    name: str = "synthetic_seq",
) -> SequenceData:
    """A seeded Markov-chain sequence dataset with learnable next-item structure.

    Each item ``i`` gets ``n_successors`` random successors; a sequence starts at a popularity-
    weighted item and moves, with probability ``stickiness``, to a uniformly chosen successor of
    the current item, otherwise to a popularity-weighted random item. A model that learns the
    transition table beats popularity clearly. Lengths are ``3 + Poisson(mean_len - 3)``.

    Args:
        n_users: users (``layout="loo"``) or sessions (``layout="sessions"``).
        n_items: items.
        mean_len: mean sequence length.
        layout: ``"loo"`` (DiffuRec/SASRec convention, :func:`leave_one_out`) or ``"sessions"``
            (DreamRec convention, :func:`session_split` 80/10/10).
        max_len: ``L``.
        n_successors: out-degree of the transition graph.
        stickiness: probability of following the graph.
        seed: generator seed (all draws from ``np.random.default_rng(seed)``).
    """
    if layout not in ("loo", "sessions"):
        raise ValueError(f"layout must be 'loo' or 'sessions', got {layout!r}")
    if n_items < n_successors + 1 or n_users < 3:
        raise ValueError("need n_items > n_successors and n_users >= 3")
    rng = np.random.default_rng(seed)
    succ = np.stack([rng.choice(n_items, n_successors, replace=False) for _ in range(n_items)])
    pop = 1.0 / (1.0 + rng.permutation(n_items))
    pop /= pop.sum()
    lens = 3 + rng.poisson(max(mean_len - 3.0, 0.0), n_users)
    total = int(lens.sum())
    follow = rng.random(total) < stickiness
    jump = rng.choice(n_items, total, p=pop)
    pick = rng.integers(0, n_successors, total)
    seqs = np.empty(total, np.int64)
    pos = 0
    for n in lens:
        cur = jump[pos]
        seqs[pos] = cur
        for j in range(pos + 1, pos + n):
            cur = succ[cur, pick[j]] if follow[j] else jump[j]
            seqs[j] = cur
        pos += n
    offsets = np.zeros(n_users + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    if layout == "loo":
        return leave_one_out(seqs + 1, offsets, n_items, max_len=max_len, name=name)
    return session_split(seqs, offsets, n_items, max_len=max_len, name=name)
