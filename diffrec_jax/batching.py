"""Index batches: which rows each optimizer or evaluation step sees.

Every function is a pure function of its arguments (``(seed, epoch)`` for the shuffles), so a
resumed run sees the same batches as an uninterrupted one. The last partial batch is padded
with row 0 and masked (mask False), so one shape compiles.
"""

from __future__ import annotations

import math

import numpy as np


def padded_batches(order: np.ndarray, batch_size: int, multiple_of: int = 1):
    """Splits ``order`` into batches of ``batch_size`` real rows, each padded (mask False) to a
    multiple of ``multiple_of`` (the device count); returns ``idx, mask`` of shape ``[nb, Bp]``.

    The rows in each batch do not depend on ``multiple_of``, so 1 and N devices see the same data.
    """
    n = len(order)
    nb = max(1, math.ceil(n / batch_size))
    bp = math.ceil(batch_size / multiple_of) * multiple_of
    idx = np.zeros((nb, bp), np.int32)
    mask = np.zeros((nb, bp), bool)
    for b in range(nb):
        chunk = order[b * batch_size : (b + 1) * batch_size]
        idx[b, : len(chunk)] = chunk
        mask[b, : len(chunk)] = True
    return idx, mask


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, sampling: str = "permutation",
                  multiple_of: int = 1):
    """Index batches of one epoch, a pure function of ``(seed, epoch)``.

    Returns:
      ``(idx_SxB int32, mask_SxB bool)``. ``permutation``: ``ceil(n / B)`` batches of a shuffled
      pass (last one padded, mask False on padding). ``independent``: ``floor(n / B)`` batches, each
      ``B`` distinct rows drawn uniformly and independently of the other batches (DreamRec).
    """
    rng = np.random.default_rng([seed, epoch])
    if sampling == "permutation":
        return padded_batches(rng.permutation(n).astype(np.int32), batch_size, multiple_of)
    steps = max(1, n // batch_size)
    idx = np.stack([rng.choice(n, batch_size, replace=False) for _ in range(steps)]).astype(np.int32)
    return idx, np.ones_like(idx, bool)


def steps_per_epoch(n: int, batch_size: int, sampling: str = "permutation") -> int:
    """Optimizer steps of one :func:`epoch_batches` epoch."""
    return math.ceil(n / batch_size) if sampling == "permutation" else max(1, n // batch_size)


def length_buckets(lengths_N: np.ndarray, buckets, max_len: int) -> tuple[np.ndarray, tuple]:
    """Bucket index of each row (the smallest width ``>=`` its length) and the sorted widths."""
    widths = tuple(sorted({int(b) for b in buckets if 0 < int(b) < max_len} | {int(max_len)}))
    return np.searchsorted(np.asarray(widths), lengths_N, side="left"), widths


def bucketed_epoch_batches(bucket_N: np.ndarray, n_buckets: int, batch_size: int, seed: int, epoch: int):
    """Batches of rows of one length bucket, a pure function of ``(seed, epoch)``.

    Each bucket's rows are shuffled and cut into batches (the last one padded, mask False); the
    batches of all buckets are then shuffled together, so consecutive steps mix lengths.

    Returns:
      list of ``(bucket, idx_B int32, mask_B bool)`` in training order.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    out = []
    for b in range(n_buckets):
        rows = np.flatnonzero(bucket_N == b)
        if rows.size == 0:
            continue
        idx, mask = padded_batches(rng.permutation(rows).astype(np.int32), min(batch_size, rows.size))
        if idx.shape[1] < batch_size:  # one compiled shape per width
            pad = batch_size - idx.shape[1]
            idx = np.pad(idx, ((0, 0), (0, pad)))
            mask = np.pad(mask, ((0, 0), (0, pad)))
        out += [(b, idx[i], mask[i]) for i in range(idx.shape[0])]
    return [out[i] for i in rng.permutation(len(out))]
