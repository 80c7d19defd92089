"""Sequential data sources: DiffuRec's and DreamRec's ``.npz`` files, synthetic sequences.

Host side only (NumPy, no JAX). The containers (:class:`SeqSplit`, :class:`SequenceData`), the
padded windows and the splits (:func:`leave_one_out`, :func:`session_split`) are in
:mod:`diffrec_jax.data.sequence_data` (its module docstring describes the layout and the padding
conventions) and are re-exported here, so ``from diffrec_jax.data.sequences import SequenceData``
keeps working.

* :func:`load_diffurec_npz`: DiffuRec's ``dataset.npz`` (or the reference's ``dataset.pkl``
  through the restricted unpickler), split leave-one-out;
* :func:`load_dreamrec_npz`: DreamRec's plain ``.npz`` copy with its given splits;
* :func:`make_synthetic_sequences`: a seeded Markov-chain dataset.

Every problem with a file raises :class:`DataError` naming the file and the problem, before any
JAX work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from diffrec_jax.data.containers import SPLITS, DataError
from diffrec_jax.data.sequence_data import (
    SeqSplit,
    SequenceData,
    check_offsets,
    leave_one_out,
    pad_windows,
    session_split,
    validate_sequences,
)

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
    the restricted unpickler (:func:`diffrec_jax.data.safe_pickle.safe_load`: no code can run) and
    checked by :func:`diffrec_jax.data.safe_pickle.diffurec_arrays`; a malformed or hostile pickle is a
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
        from diffrec_jax.data.safe_pickle import diffurec_arrays, safe_load

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
    check_offsets(tr, off, 1, n_items, str(p), "train_items")
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
    for ours, theirs in zip(SPLITS, ("train", "val", "test")):
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
