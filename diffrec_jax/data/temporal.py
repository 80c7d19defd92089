"""T-DiffRec's time-aware reweighting of interaction rows (spec section 9)."""

from __future__ import annotations

import dataclasses

import numpy as np

from diffrec_jax.data.containers import CSR, InteractionData


def time_weighted(csr: CSR, w_min: float, w_max: float) -> CSR:
    """Replaces each row's values by ``linspace(w_min, w_max, n_u)`` in the row's stored order.

    The rows of the DiffRec files (and of our MovieLens loader) are chronological, so the oldest
    interaction gets ``w_min`` and the newest ``w_max``; a row with a single interaction gets
    ``w_min``, as ``linspace`` with one point (and the reference) gives.

    Args:
      csr: rows in chronological order.
      w_min: weight of the oldest interaction, in (0, w_max].
      w_max: weight of the newest interaction.
    """
    if not 0.0 < w_min <= w_max:
        raise ValueError(f"time weights need 0 < w_min <= w_max, got w_min={w_min}, w_max={w_max}")
    lengths = csr.row_lengths()
    # position of each entry within its row, vectorised
    starts = np.repeat(csr.indptr[:-1], lengths)
    pos = np.arange(csr.nnz, dtype=np.int64) - starts
    denom = np.repeat(np.maximum(lengths - 1, 1), lengths).astype(np.float64)
    frac = pos / denom  # 0 for a single-entry row
    values = (w_min + (w_max - w_min) * frac).astype(np.float32)
    return CSR(csr.indptr, csr.indices, values, csr.n_items)


def with_time_weights(data: InteractionData, w_min: float, w_max: float) -> InteractionData:
    """``data`` with T-DiffRec-weighted train rows (valid/test and history masks unchanged)."""
    return dataclasses.replace(data, train=time_weighted(data.train, w_min, w_max))
