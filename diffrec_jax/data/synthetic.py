"""Seeded synthetic implicit-feedback data with learnable low-rank structure.

Users and items get latent factors; items also get a long-tailed popularity. Each
user draws a set of items without replacement from
``softmax(u . v / (temperature * sqrt(n_factors)) + popularity_weight * log_popularity)``,
the set is put in a random chronological order, and the rows are split per user
with the same rule as the MovieLens temporal split
(:func:`diffrec_jax.data.splits.split_counts`). A recommender that uses
the co-occurrence structure therefore beats a popularity ranking clearly, which
makes the data useful for smoke tests of training and evaluation code.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffrec_jax.data.containers import CSR, InteractionData
from diffrec_jax.data.splits import assign_splits, check_split
from diffrec_jax.data.validation import validate

__all__ = ["make_synthetic"]

_CHUNK = 512  # users per sampling chunk (fixed: the result must not depend on memory).


def make_synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    *,
    n_factors: int = 8,
    mean_items_per_user: float = 40,
    split: Sequence[float] = (0.7, 0.2, 0.1),
    seed: int = 0,
    name: str = "synthetic",
    temperature: float = 0.35,
    popularity_weight: float = 0.7,
) -> InteractionData:
    """Generate a deterministic synthetic dataset.

    Generative process (all draws from ``np.random.default_rng(seed)``):

    1. User factors ``U ~ N(0, I)`` ``[n_users, n_factors]`` and item factors
       ``V ~ N(0, I)`` ``[n_items, n_factors]``.
    2. Item popularity: a random permutation of Zipf ranks,
       ``log_pop_i = -log(1 + rank_i)`` (a long tail).
    3. Per-user count ``n_u = round(Gamma(2, mean_items_per_user / 2))`` clipped to
       ``[5, n_items // 2]``.
    4. The user's items: the top ``n_u`` of ``logits + Gumbel noise`` with
       ``logits = U V^T / (temperature * sqrt(n_factors)) + popularity_weight * log_pop``,
       which samples without replacement from ``softmax(logits)``.
    5. A random chronological order of those items, then the per-user split of
       :func:`~diffrec_jax.data.splits.split_counts` (every user gets >= 1
       item in each split since ``n_u >= 5``).

    Args:
        n_users: number of users (>= 1).
        n_items: number of items (>= 10, so that a user can have 5 items).
        n_factors: latent dimension (>= 1).
        mean_items_per_user: mean of the per-user count before clipping (>= 5).
        split: (train, valid, test) fractions, positive, summing to 1.
        seed: RNG seed; the output is a deterministic function of all arguments.
        name: dataset name.
        temperature: softmax temperature of the affinity term (smaller: users
            stick closer to their taste).
        popularity_weight: weight of the log-popularity term.

    Returns:
        The validated dataset; ``item_emb`` is float32 ``[n_items, n_factors]``,
        the true item factors ``V``.

    Raises:
        ValueError: on invalid arguments.
    """
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    if n_items < 10:
        raise ValueError(f"n_items must be >= 10 (a user needs >= 5 items), got {n_items}")
    if n_factors < 1:
        raise ValueError(f"n_factors must be >= 1, got {n_factors}")
    if not mean_items_per_user >= 5:
        raise ValueError(f"mean_items_per_user must be >= 5, got {mean_items_per_user}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_split(split)

    rng = np.random.default_rng(seed)
    user_f = rng.standard_normal((n_users, n_factors))
    item_f = rng.standard_normal((n_items, n_factors))
    ranks = rng.permutation(n_items)
    log_pop = -np.log1p(ranks.astype(np.float64))
    cap = n_items // 2
    counts = np.rint(rng.gamma(2.0, mean_items_per_user / 2.0, size=n_users))
    counts = np.clip(counts, 5, cap).astype(np.int64)

    scale = 1.0 / (temperature * np.sqrt(n_factors))
    bias = popularity_weight * log_pop
    items_out = []
    for lo in range(0, n_users, _CHUNK):
        hi = min(lo + _CHUNK, n_users)
        c = counts[lo:hi]
        k = int(c.max())
        keys = (user_f[lo:hi] @ item_f.T) * scale + bias
        keys += rng.gumbel(size=keys.shape)
        # Top-k by key (Gumbel top-k = sampling without replacement from softmax).
        if k < n_items:
            top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(n_items), keys.shape).copy()
        top_keys = np.take_along_axis(keys, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-top_keys, axis=1, kind="stable"), axis=1)
        # Keep the first c_u per row, then shuffle them into a random "time" order.
        valid = np.arange(k)[None, :] < c[:, None]
        when = np.where(valid, rng.random(top.shape), 2.0)
        perm = np.argsort(when, axis=1, kind="stable")
        top = np.take_along_axis(top, perm, axis=1)
        items_out.append(top[valid])  # row-major: grouped by user, chronological
    items = np.concatenate(items_out).astype(np.int64)
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)

    part = assign_splits(users, n_users, split)
    csrs = [
        CSR.from_pairs(users[part == p], items[part == p], n_users, n_items) for p in range(3)
    ]
    data = InteractionData(
        name=name,
        n_users=n_users,
        n_items=n_items,
        train=csrs[0],
        valid=csrs[1],
        test=csrs[2],
        item_emb=item_f.astype(np.float32),
    )
    validate(data, source=f"make_synthetic(seed={seed})")
    return data
