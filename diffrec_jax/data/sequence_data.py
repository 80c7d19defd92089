"""Sequential-recommendation data: padded histories with next-item targets, and their splits.

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

Checks: :func:`validate_sequences`. The file loaders and the synthetic generator are in
:mod:`diffrec_jax.data.sequences`, which re-exports every name of this module.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from diffrec_jax.data.containers import SPLITS, DataError

__all__ = [
    "SeqSplit",
    "SequenceData",
    "check_offsets",
    "leave_one_out",
    "pad_windows",
    "session_split",
    "validate_sequences",
]


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
        if which not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {which!r}")
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
                for s in SPLITS}

    def summary(self) -> dict:
        return {
            "name": self.name,
            "n_items": self.n_items,
            "pad_id": self.pad_id,
            "pad_side": self.pad_side,
            "max_len": self.max_len,
            **{f"n_{s}": len(self.split(s)) for s in SPLITS},
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
    check_offsets(items, offsets, 1, n_items, where, "sequences")
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
    check_offsets(items, offsets, 0, n_items - 1, where, "sessions")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative shares summing to 1, got {fractions}")
    S = offsets.size - 1
    n_tr = int(round(fractions[0] * S))
    n_va = int(round(fractions[1] * S))
    cuts = [0, n_tr, n_tr + n_va, S]
    splits = []
    for i, sname in enumerate(SPLITS):
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


def check_offsets(items, offsets, lo, hi, where, what) -> None:
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
    for s in SPLITS:
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
