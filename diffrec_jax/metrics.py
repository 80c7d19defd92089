"""Full-ranking top-K metrics, computed on device.

For a user ``u`` with ground-truth set ``G_u`` and top-K list ``R_u`` (history items masked out
before ranking), with ``hits_j = 1[R_u[j] in G_u]`` at 0-based rank ``j``:

* ``recall@K    = |R_u[:K] ∩ G_u| / |G_u|`` (denominator ``|G_u|``, not ``min(K, |G_u|)``, as DiffRec);
* ``precision@K = |R_u[:K] ∩ G_u| / K``;
* ``ndcg@K      = DCG / IDCG`` with ``DCG = sum_{j<K} hits_j / log2(j + 2)`` and
  ``IDCG = sum_{j < min(|G_u|, K)} 1 / log2(j + 2)``;
* ``mrr@K       = 1 / (1 + first hit rank)`` or 0 without a hit in the top K;
* ``hr@K        = 1[any hit in the top K]`` (hit ratio; equals recall for one target item).

Each metric is averaged over users. ``average="all"`` divides by every user in the evaluation
(DiffRec's convention: users with an empty ``G_u`` count as 0); ``average="nonempty"`` divides by
the users with a non-empty ``G_u``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

METRICS = ("recall", "precision", "ndcg", "mrr", "hr")


def mask_scores(scores_BxI: jnp.ndarray, mask_BxI: jnp.ndarray) -> jnp.ndarray:
    """Sets masked (history) entries to ``-inf`` so they are never ranked."""
    return jnp.where(mask_BxI > 0, -jnp.inf, scores_BxI)


def topk_indices(scores_BxI: jnp.ndarray, k: int, chunk_size: int | None = None) -> jnp.ndarray:
    """Indices of the ``k`` largest scores per row, best first, ``[B, k]`` int32.

    With ``chunk_size``, the item axis is processed in chunks (top-k per chunk, then top-k of the
    candidates), so no more than ``B x (chunk_size + k)`` scores are sorted at once. The result is
    exact.
    """
    n = scores_BxI.shape[-1]
    if k > n:
        raise ValueError(f"top-k with k={k} is larger than the number of items {n}")
    if chunk_size is None or chunk_size >= n:
        return jax.lax.top_k(scores_BxI, k)[1].astype(jnp.int32)
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n
    padded = jnp.pad(scores_BxI, ((0, 0), (0, pad)), constant_values=-jnp.inf)
    chunks = padded.reshape(scores_BxI.shape[0], n_chunks, chunk_size)
    kk = min(k, chunk_size)
    vals, idx = jax.lax.top_k(chunks, kk)
    idx = idx + (jnp.arange(n_chunks) * chunk_size)[None, :, None]
    vals = vals.reshape(scores_BxI.shape[0], -1)
    idx = idx.reshape(scores_BxI.shape[0], -1)
    _, pos = jax.lax.top_k(vals, k)
    return jnp.take_along_axis(idx, pos, axis=1).astype(jnp.int32)


def hits_from_topk(topk_BxK: jnp.ndarray, truth_BxI: jnp.ndarray) -> jnp.ndarray:
    """``hits[b, j] = truth[b, topk[b, j]] > 0`` as float32 ``[B, K]``."""
    return (jnp.take_along_axis(truth_BxI, topk_BxK, axis=1) > 0).astype(jnp.float32)


def metric_sums(
    hits_BxK: jnp.ndarray, n_truth_B: jnp.ndarray, ks: Sequence[int]
) -> dict[str, jnp.ndarray]:
    """Per-user metric values summed over the batch, for every ``K`` in ``ks``.

    Args:
      hits_BxK: float ``[B, Kmax]`` hit indicators of the ranked list (``Kmax >= max(ks)``).
      n_truth_B: ``[B]`` sizes of the ground-truth sets (0 for padded or empty users).
      ks: cut-offs.

    Returns:
      ``{"recall@K": sum_u recall_u@K, ...}`` scalars, plus ``"_users"`` (number of rows with a
      non-empty ground truth) so batches can be summed and averaged afterwards.
    """
    kmax = hits_BxK.shape[1]
    if max(ks) > kmax:
        raise ValueError(f"a cut-off K={max(ks)} exceeds the ranked list length {kmax}")
    n_truth = n_truth_B.astype(jnp.float32)
    valid = n_truth > 0
    safe_n = jnp.maximum(n_truth, 1.0)
    disc_K = 1.0 / jnp.log2(jnp.arange(kmax, dtype=jnp.float32) + 2.0)
    cum_disc = jnp.cumsum(disc_K)
    cum_hits = jnp.cumsum(hits_BxK, axis=1)
    dcg_cum = jnp.cumsum(hits_BxK * disc_K[None, :], axis=1)
    ranks = jnp.arange(kmax)
    first_hit = jnp.min(jnp.where(hits_BxK > 0, ranks[None, :], kmax), axis=1)
    out = {}
    for k in ks:
        h = cum_hits[:, k - 1]
        idcg = cum_disc[jnp.clip(jnp.minimum(n_truth_B, k).astype(jnp.int32) - 1, 0, kmax - 1)]
        per = {
            "recall": h / safe_n,
            "precision": h / k,
            "ndcg": dcg_cum[:, k - 1] / idcg,
            "mrr": jnp.where(first_hit < k, 1.0 / (first_hit + 1.0), 0.0),
            "hr": (h > 0).astype(jnp.float32),
        }
        for name, v in per.items():
            out[f"{name}@{k}"] = jnp.sum(jnp.where(valid, v, 0.0))
    out["_users"] = jnp.sum(valid.astype(jnp.float32))
    return out


def finalize(sums: dict, n_users: int, average: str = "all", digits: int | None = None) -> dict:
    """Turns summed metrics into averages (host floats).

    Args:
      sums: accumulated output of :func:`metric_sums`.
      n_users: number of users evaluated (the divisor for ``average="all"``).
      average: ``"all"`` or ``"nonempty"``.
      digits: round to this many decimals (DiffRec prints 4), or keep full precision.
    """
    if average not in ("all", "nonempty"):
        raise ValueError(f"average must be 'all' or 'nonempty', got {average!r}")
    denom = float(n_users) if average == "all" else max(float(sums["_users"]), 1.0)
    out = {}
    for k, v in sums.items():
        if k.startswith("_"):
            continue
        val = float(v) / denom
        out[k] = round(val, digits) if digits is not None else val
    return out


def ranking_metrics(
    scores_BxI: jnp.ndarray,
    history_BxI: jnp.ndarray,
    truth_BxI: jnp.ndarray,
    ks: Sequence[int] = (10, 20),
    average: str = "all",
) -> dict:
    """Convenience: mask, rank, and average every metric for one score matrix (host floats)."""
    top = topk_indices(mask_scores(scores_BxI, history_BxI), max(ks))
    sums = metric_sums(hits_from_topk(top, truth_BxI), jnp.sum(truth_BxI > 0, axis=1), ks)
    return finalize(sums, scores_BxI.shape[0], average)
