"""Seeded Euclidean k-means in JAX: initialisation from a key, Lloyd iterations in ``lax.while_loop``.

L-DiffRec (spec section 8) clusters items by their pretrained embeddings into ``n_cate``
categories. The reference uses the ``kmeans_pytorch`` package: ``k`` distinct points drawn at
random as initial centres, then Lloyd iterations until the squared total centre shift drops below
a tolerance. :func:`kmeans` does the same as a pure function of ``(points, k, key)``:

* init ``"random"`` (the reference's): ``k`` distinct points chosen uniformly;
  ``"k-means++"``: Arthur & Vassilvitskii (2007), each next centre drawn with probability
  ``∝ D(x)^2``, the squared distance to the nearest centre chosen so far;
* Lloyd step: ``label_n = argmin_k ||x_n - c_k||^2``; ``c_k = mean{x_n : label_n = k}``. A cluster
  left empty keeps its previous centre (``kmeans_pytorch`` would produce NaN there);
* stop when ``(Σ_k ||c_k^new - c_k^old||)^2 < tol`` or after ``max_iter`` iterations.

The final labels are the assignment to the final centres, so ``labels`` and ``centres`` agree.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

INITS = ("random", "k-means++")


class KMeansResult(NamedTuple):
    """Output of :func:`kmeans`.

    Attributes:
      labels: int32 ``[N]``, cluster of each point in ``[0, k)``.
      centres: float32 ``[k, D]``.
      n_iter: int32 scalar, Lloyd iterations run.
      inertia: float32 scalar, ``Σ_n ||x_n - c_{label_n}||^2``.
    """

    labels: jnp.ndarray
    centres: jnp.ndarray
    n_iter: jnp.ndarray
    inertia: jnp.ndarray


def sq_distances(x_NxD: jnp.ndarray, c_KxD: jnp.ndarray) -> jnp.ndarray:
    """Squared Euclidean distances ``||x_n - c_k||^2``, float32 ``[N, K]`` (clamped at 0)."""
    d = (
        jnp.sum(x_NxD**2, axis=1, keepdims=True)
        - 2.0 * x_NxD @ c_KxD.T
        + jnp.sum(c_KxD**2, axis=1)[None, :]
    )
    return jnp.maximum(d, 0.0)


def _init_random(x_NxD: jnp.ndarray, k: int, key: jax.Array) -> jnp.ndarray:
    idx = jax.random.choice(key, x_NxD.shape[0], (k,), replace=False)
    return x_NxD[idx]


def _init_plusplus(x_NxD: jnp.ndarray, k: int, key: jax.Array) -> jnp.ndarray:
    N, D = x_NxD.shape
    k0, key = jax.random.split(key)
    first = x_NxD[jax.random.randint(k0, (), 0, N)]
    centres = jnp.zeros((k, D), x_NxD.dtype).at[0].set(first)
    d2_N = sq_distances(x_NxD, first[None])[:, 0]

    def body(j, carry):
        centres, d2_N = carry
        kj = jax.random.fold_in(key, j)
        # all points identical to chosen centres: fall back to uniform
        p_N = jnp.where(d2_N.sum() > 0, d2_N / jnp.maximum(d2_N.sum(), 1e-30), 1.0 / N)
        nxt = x_NxD[jax.random.choice(kj, N, (), p=p_N)]
        centres = centres.at[j].set(nxt)
        d2_N = jnp.minimum(d2_N, sq_distances(x_NxD, nxt[None])[:, 0])
        return centres, d2_N

    centres, _ = jax.lax.fori_loop(1, k, body, (centres, d2_N))
    return centres


def lloyd_step(x_NxD: jnp.ndarray, c_KxD: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One Lloyd iteration: assign to the nearest centre, move centres to their means.

    Returns:
      ``(labels_N, new_centres_KxD)``; an empty cluster keeps its centre.
    """
    K = c_KxD.shape[0]
    labels = jnp.argmin(sq_distances(x_NxD, c_KxD), axis=1).astype(jnp.int32)
    onehot_NxK = jax.nn.one_hot(labels, K, dtype=x_NxD.dtype)
    counts_K = onehot_NxK.sum(axis=0)
    sums_KxD = onehot_NxK.T @ x_NxD
    new = jnp.where(counts_K[:, None] > 0, sums_KxD / jnp.maximum(counts_K, 1.0)[:, None], c_KxD)
    return labels, new


def kmeans(
    points_NxD,
    k: int,
    key: jax.Array,
    *,
    init: str = "random",
    tol: float = 1e-4,
    max_iter: int = 1000,
) -> KMeansResult:
    """Clusters ``points`` into ``k`` groups (Euclidean k-means), deterministically for a key.

    Args:
      points_NxD: ``[N, D]`` points (cast to float32).
      k: number of clusters, ``1 <= k <= N``.
      key: PRNG key of the initialisation.
      init: ``"random"`` (k distinct points, as ``kmeans_pytorch``) or ``"k-means++"``.
      tol: stop when ``(Σ_k ||Δc_k||)^2 < tol`` (``kmeans_pytorch``'s criterion).
      max_iter: upper bound on Lloyd iterations.

    Returns:
      :class:`KMeansResult` with ``labels`` int32 ``[N]`` and ``centres`` float32 ``[k, D]``.
    """
    x = jnp.asarray(points_NxD, jnp.float32)
    if x.ndim != 2:
        raise ValueError(f"kmeans: points must be [N, D], got shape {x.shape}")
    N = x.shape[0]
    if not 1 <= k <= N:
        raise ValueError(f"kmeans: k must be in [1, N={N}], got {k}")
    if init not in INITS:
        raise ValueError(f"kmeans: init must be one of {INITS}, got {init!r}")
    if max_iter < 1:
        raise ValueError(f"kmeans: max_iter must be >= 1, got {max_iter}")
    return _kmeans(x, int(k), key, init, float(tol), int(max_iter))


@functools.partial(jax.jit, static_argnums=(1, 3, 4, 5))
def _kmeans(x, k, key, init, tol, max_iter):
    c0 = _init_random(x, k, key) if init == "random" else _init_plusplus(x, k, key)

    def cond(carry):
        _, it, shift = carry
        return (it < max_iter) & (shift >= tol)

    def body(carry):
        c, it, _ = carry
        _, new = lloyd_step(x, c)
        shift = jnp.sum(jnp.sqrt(jnp.sum((new - c) ** 2, axis=1))) ** 2
        return new, it + 1, shift

    centres, n_iter, _ = jax.lax.while_loop(
        cond, body, (c0, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, jnp.float32))
    )
    d2 = sq_distances(x, centres)
    labels = jnp.argmin(d2, axis=1).astype(jnp.int32)
    inertia = jnp.take_along_axis(d2, labels[:, None], axis=1).sum()
    return KMeansResult(labels, centres, n_iter, inertia)
