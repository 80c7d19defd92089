"""Schedules and discrete forward kernels over lists (corruption of a list), with their posteriors.

The part of the spec (``shared/specs/dcdr.md``, section 8) that this file implements:

* **Discrete forward kernels over lists** ``x`` = a list of ``n`` candidate indices, steps
  ``t = 1..T`` with ``beta_t`` and ``abar_t = prod_{s<=t} (1 - beta_s)``, ``abar_0 = 1``:

  - ``perm_uniform`` (DCDR-P, exact, [design]): with prob. ``beta_t`` replace the list by a
    uniform permutation. ``q(x_t = y | x_0) = abar_t 1[y = x_0] + (1 - abar_t) / K``,
    ``K = n!``; the posterior ``q(x_{t-1} | x_t, x_0)`` is a mixture of point masses on ``x_t``,
    ``x_0`` and the uniform law (:func:`perm_posterior_weights`).
  - ``perm_swap`` (DCDR-P, matches the paper's "swapping", [design]): step ``s`` applies
    ``k_s ~ Binomial(n_swaps_max, beta_s)`` uniform random transpositions; no cheap exact
    posterior, so the reverse step is "predict ``x_0``" (x0-parameterisation).
  - ``token_uniform`` (DCDR-T, [design]): per position, with prob. ``beta_t`` resample the item
    uniformly among the ``n`` candidates (multinomial diffusion, duplicates allowed):
    ``q(x_t^k | x_0^k) = abar_t 1[x_t^k = x_0^k] + (1 - abar_t) / n`` and the standard
    categorical posterior (:func:`token_posterior`).

The per-position reverse transition of every kernel (:func:`transition_logprobs`) is here too; the
decoding and beam search that use it are :mod:`diffrec_jax.models.dcdr.beam`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DiscreteSchedule",
    "KERNELS",
    "LOGP_FLOOR",
    "make_discrete_schedule",
    "onehot",
    "perm_log_marginal",
    "perm_posterior_prob",
    "perm_posterior_weights",
    "perm_q_sample",
    "q_sample",
    "swap_q_sample",
    "token_marginal",
    "token_posterior",
    "token_q_sample",
    "transition_logprobs",
]

KERNELS = ("perm_uniform", "perm_swap", "token_uniform")
LOGP_FLOOR = -1e4  # floor of log-probabilities (finite, so a masked candidate keeps a defined score)


class DiscreteSchedule(NamedTuple):
    """``[T + 1]`` arrays indexed by the step ``t = 0..T`` (``t = 0`` is the clean list).

    Attributes:
      betas: ``beta_t`` (``beta_0 = 0``).
      alphas_bar: ``abar_t = prod_{s=1..t} (1 - beta_s)`` (``abar_0 = 1``).
    """

    betas: jnp.ndarray
    alphas_bar: jnp.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.betas.shape[-1]) - 1


def make_discrete_schedule(num_steps: int, kind: str = "cosine", beta_min: float = 0.02,
                           beta_max: float = 0.5) -> DiscreteSchedule:
    """Builds ``beta_1..beta_T``.

    Args:
      num_steps: ``T``.
      kind: ``"linear"`` (``beta_t = linspace(beta_min, beta_max, T)``) or ``"cosine"``
        (``abar_t = cos^2(pi/2 (t/T + s)/(1 + s)) / cos^2(pi/2 s/(1 + s))``, ``s = 0.008``,
        ``beta_t = min(1 - abar_t / abar_{t-1}, 0.999)``; ``beta_min/max`` unused).
      beta_min, beta_max: linear bounds.

    Returns:
      A :class:`DiscreteSchedule` (float32).
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
    if kind == "linear":
        if not 0 < beta_min <= beta_max <= 1:
            raise ValueError(f"need 0 < beta_min <= beta_max <= 1, got {beta_min}, {beta_max}")
        b = np.linspace(beta_min, beta_max, num_steps, dtype=np.float64)
    elif kind == "cosine":
        s = 0.008
        u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        ab = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        b = np.minimum(1.0 - ab[1:] / ab[:-1], 0.999)
    else:
        raise ValueError(f"schedule kind must be 'linear' or 'cosine', got {kind!r}")
    betas = np.concatenate([[0.0], b])
    abar = np.cumprod(1.0 - betas)
    return DiscreteSchedule(jnp.asarray(betas, jnp.float32), jnp.asarray(abar, jnp.float32))


def onehot(x, n):
    return jax.nn.one_hot(x, n, dtype=jnp.float32)


def token_marginal(x0_L: jnp.ndarray, t: jnp.ndarray, sched: DiscreteSchedule, n: int) -> jnp.ndarray:
    """``q(x_t^k = j | x_0) = abar_t 1[j = x_0^k] + (1 - abar_t) / n`` (DCDR-T).

    Args:
      x0_L: int ``[..., L]`` clean lists.
      t: int step(s) broadcastable to ``x0_L.shape[:-1]``.
      sched: the schedule.
      n: vocabulary (candidates).

    Returns:
      float32 ``[..., L, n]``.
    """
    ab = sched.alphas_bar[t][..., None, None]
    return ab * onehot(x0_L, n) + (1.0 - ab) / n


def token_q_sample(key: jax.Array, x0_L: jnp.ndarray, t: jnp.ndarray, sched: DiscreteSchedule,
                   n: int) -> jnp.ndarray:
    """Draws ``x_t ~ q(x_t | x_0)`` for DCDR-T: each position independently resampled uniformly
    with probability ``1 - abar_t`` (the draw may return the same item).

    Args:
      key: PRNG key.
      x0_L: int ``[B, L]``.
      t: int ``[B]`` steps.
      sched, n: schedule and vocabulary.

    Returns:
      int32 ``[B, L]``.
    """
    k1, k2 = jax.random.split(key)
    keep = jax.random.uniform(k1, x0_L.shape) < sched.alphas_bar[t][:, None]
    rnd = jax.random.randint(k2, x0_L.shape, 0, n)
    return jnp.where(keep, x0_L, rnd).astype(jnp.int32)


def token_posterior(x_t_L: jnp.ndarray, x0_probs: jnp.ndarray, t: jnp.ndarray,
                    sched: DiscreteSchedule, n: int) -> jnp.ndarray:
    """``sum_l pi(l) q(x_{t-1}^k = j | x_t^k, x_0^k = l)`` per position (DCDR-T), exact.

    With ``f_j = alpha_t 1[j = x_t^k] + beta_t / n`` (one forward step) and the prior
    ``abar_{t-1} 1[j = l] + (1 - abar_{t-1}) / n``, Bayes gives
    ``q(j | x_t, l) = f_j (abar_{t-1} 1[j = l] + (1 - abar_{t-1}) / n) / Z_l`` with
    ``Z_l = q(x_t^k | l) = abar_t 1[l = x_t^k] + (1 - abar_t) / n``; mixing over ``pi``:
    ``f_j (abar_{t-1} pi_j / Z_j + (1 - abar_{t-1}) / n sum_l pi_l / Z_l)``.

    Args:
      x_t_L: int ``[..., L]``.
      x0_probs: ``[..., L, n]`` a distribution over ``x_0^k`` (one-hot for a known ``x_0``).
      t: int step(s) ``>= 1``, broadcastable to ``x_t_L.shape[:-1]``.
      sched, n: schedule and vocabulary.

    Returns:
      float32 ``[..., L, n]``, rows summing to 1.
    """
    t = jnp.asarray(t)
    ab = sched.alphas_bar[t][..., None, None]
    ab_prev = sched.alphas_bar[t - 1][..., None, None]
    beta = sched.betas[t][..., None, None]
    xt1 = onehot(x_t_L, n)
    f = (1.0 - beta) * xt1 + beta / n
    z = ab * xt1 + (1.0 - ab) / n  # Z_l for every l
    w = x0_probs / z
    return f * (ab_prev * w + (1.0 - ab_prev) / n * jnp.sum(w, -1, keepdims=True))


def _inv_factorial(n: int) -> float:
    return math.exp(-math.lgamma(n + 1))


def perm_log_marginal(x_t: jnp.ndarray, x0: jnp.ndarray, t: jnp.ndarray, sched: DiscreteSchedule) -> jnp.ndarray:
    """``log q(x_t | x_0) = log(abar_t 1[x_t = x_0] + (1 - abar_t) / n!)`` (DCDR-P uniform).

    Args:
      x_t, x0: int ``[..., n]`` permutations.
      t: int step(s) broadcastable to the batch shape.

    Returns:
      float32 ``[...]``.
    """
    n = x_t.shape[-1]
    ab = sched.alphas_bar[t]
    eq = jnp.all(x_t == x0, -1)
    return jnp.log(ab * eq + (1.0 - ab) * _inv_factorial(n))


def perm_q_sample(key: jax.Array, x0: jnp.ndarray, t: jnp.ndarray, sched: DiscreteSchedule) -> jnp.ndarray:
    """Draws ``x_t ~ q(x_t | x_0)`` for DCDR-P uniform: keep ``x_0`` with prob. ``abar_t``, else a
    uniform permutation of its entries.

    Args:
      key: PRNG key.
      x0: int ``[B, n]``.
      t: int ``[B]``.

    Returns:
      int32 ``[B, n]``.
    """
    k1, k2 = jax.random.split(key)
    keep = jax.random.uniform(k1, x0.shape[:1]) < sched.alphas_bar[t]
    order = jnp.argsort(jax.random.uniform(k2, x0.shape), axis=-1)
    shuffled = jnp.take_along_axis(x0, order, axis=-1)
    return jnp.where(keep[:, None], x0, shuffled).astype(jnp.int32)


def perm_posterior_weights(x_t: jnp.ndarray, x0: jnp.ndarray, t: jnp.ndarray,
                           sched: DiscreteSchedule) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """``q(x_{t-1} = y | x_t, x_0) = w_xt 1[y = x_t] + w_x0 1[y = x_0] + w_unif / K`` (DCDR-P).

    Bayes with one forward step ``alpha_t 1[y = x_t] + beta_t / K`` and the prior
    ``abar_{t-1} 1[y = x_0] + (1 - abar_{t-1}) / K`` over the ``K = n!`` permutations. For
    ``x_t != x_0`` (``Z = (1 - abar_t) / K``):

        w_xt = alpha_t (1 - abar_{t-1}) / (1 - abar_t),  w_x0 = beta_t abar_{t-1} / (1 - abar_t),
        w_unif = beta_t (1 - abar_{t-1}) / (1 - abar_t);

    for ``x_t = x_0`` the two point masses coincide (``w_x0 = 0``, ``Z = abar_t + (1-abar_t)/K``):

        w_xt = (abar_t + (alpha_t (1 - abar_{t-1}) + beta_t abar_{t-1}) / K) / Z,
        w_unif = beta_t (1 - abar_{t-1}) / (K Z).

    Args:
      x_t, x0: int ``[..., n]`` permutations.
      t: int step(s) ``>= 1``.

    Returns:
      ``(w_xt, w_x0, w_unif)``, float32 ``[...]`` each, summing to 1.
    """
    n = x_t.shape[-1]
    inv_k = _inv_factorial(n)
    t = jnp.asarray(t)
    ab, ab_prev, beta = sched.alphas_bar[t], sched.alphas_bar[t - 1], sched.betas[t]
    alpha = 1.0 - beta
    eq = jnp.all(x_t == x0, -1)
    one_m = jnp.maximum(1.0 - ab, 1e-12)
    ne = (alpha * (1.0 - ab_prev) / one_m, beta * ab_prev / one_m, beta * (1.0 - ab_prev) / one_m)
    z = ab + (1.0 - ab) * inv_k
    e = ((ab + (alpha * (1.0 - ab_prev) + beta * ab_prev) * inv_k) / z, jnp.zeros_like(z),
         beta * (1.0 - ab_prev) * inv_k / z)
    return tuple(jnp.where(eq, a, b) for a, b in zip(e, ne))


def perm_posterior_prob(y: jnp.ndarray, x_t: jnp.ndarray, x0: jnp.ndarray, t: jnp.ndarray,
                        sched: DiscreteSchedule) -> jnp.ndarray:
    """``q(x_{t-1} = y | x_t, x_0)`` for permutations ``y`` (closed form of
    :func:`perm_posterior_weights`)."""
    w_xt, w_x0, w_u = perm_posterior_weights(x_t, x0, t, sched)
    n = x_t.shape[-1]
    return (w_xt * jnp.all(y == x_t, -1) + w_x0 * jnp.all(y == x0, -1)
            + w_u * _inv_factorial(n))


def swap_q_sample(key: jax.Array, x0: jnp.ndarray, t: jnp.ndarray, sched: DiscreteSchedule,
                  n_swaps_max: int) -> jnp.ndarray:
    """Draws ``x_t`` for DCDR-P swap: ``sum_{s<=t} k_s`` uniform random transpositions of ``x_0``,
    ``k_s ~ Binomial(n_swaps_max, beta_s)``.

    Args:
      key: PRNG key.
      x0: int ``[B, n]``.
      t: int ``[B]``.
      n_swaps_max: the Binomial's number of trials per step.

    Returns:
      int32 ``[B, n]`` permutations.
    """
    B, n = x0.shape
    T = sched.num_steps
    k1, k2, k3 = jax.random.split(key, 3)
    trials = jax.random.uniform(k1, (B, T, n_swaps_max)) < sched.betas[1:][None, :, None]
    active_step = (jnp.arange(1, T + 1)[None, :] <= t[:, None])[:, :, None]
    n_swaps = jnp.sum(trials & active_step, axis=(1, 2))  # [B]
    max_swaps = T * n_swaps_max
    i = jax.random.randint(k2, (max_swaps, B), 0, n)
    j = (i + jax.random.randint(k3, (max_swaps, B), 1, n)) % n  # j != i

    def body(s, x):
        a = jnp.take_along_axis(x, i[s][:, None], 1)[:, 0]
        b = jnp.take_along_axis(x, j[s][:, None], 1)[:, 0]
        rows = jnp.arange(B)
        y = x.at[rows, i[s]].set(b).at[rows, j[s]].set(a)
        return jnp.where((s < n_swaps)[:, None], y, x)

    return jax.lax.fori_loop(0, max_swaps, body, x0.astype(jnp.int32))


def q_sample(kernel: str, key: jax.Array, x0: jnp.ndarray, t: jnp.ndarray, sched: DiscreteSchedule,
             n_swaps_max: int = 1) -> jnp.ndarray:
    """``x_t ~ q(x_t | x_0)`` for a kernel name of :data:`KERNELS`."""
    if kernel == "perm_uniform":
        return perm_q_sample(key, x0, t, sched)
    if kernel == "perm_swap":
        return swap_q_sample(key, x0, t, sched, n_swaps_max)
    if kernel == "token_uniform":
        return token_q_sample(key, x0, t, sched, x0.shape[-1])
    raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")


def transition_logprobs(kernel: str, x_t: jnp.ndarray, x0_logits: jnp.ndarray, t: jnp.ndarray,
                        sched: DiscreteSchedule) -> jnp.ndarray:
    """Per-position log-probabilities of ``x_{t-1}`` given ``x_t`` and the predicted ``x_0``.

    With ``pi_k = softmax(x0_logits[k])`` (the denoiser's ``p_theta(x_0^k | ...)``):

    * ``token_uniform``: exact, ``sum_l pi_k(l) q(x_{t-1}^k | x_t^k, l)`` (:func:`token_posterior`);
    * ``perm_uniform``: the per-position marginal of ``sum_{x_0} q(x_{t-1} | x_t, x_0) p(x_0)``
      with the ``x_0 != x_t`` weights, ``w_xt 1[j = x_t^k] + w_x0 pi_k(j) + w_unif / n``
      ([design]: ``p(x_0)`` is taken as the product of the per-position ``pi_k``, whose mass on
      ``x_t`` enters through ``w_x0``);
    * ``perm_swap``: ``pi_k`` itself (reverse step = "predict ``x_0``", no re-noising).

    Args:
      kernel: a name of :data:`KERNELS`.
      x_t: int ``[..., n]``.
      x0_logits: ``[..., n, n]`` pointer logits (position x candidate).
      t: int step(s) ``>= 1`` broadcastable to the batch shape.
      sched: the schedule.

    Returns:
      float32 ``[..., n, n]`` log-probabilities, floored at ``-1e4``.
    """
    n = x_t.shape[-1]
    if kernel == "perm_swap":
        lp = jax.nn.log_softmax(x0_logits, -1)
    elif kernel == "token_uniform":
        lp = jnp.log(token_posterior(x_t, jax.nn.softmax(x0_logits, -1), t, sched, n))
    elif kernel == "perm_uniform":
        t = jnp.asarray(t)
        ab, ab_prev, beta = sched.alphas_bar[t], sched.alphas_bar[t - 1], sched.betas[t]
        one_m = jnp.maximum(1.0 - ab, 1e-12)
        w_xt = ((1.0 - beta) * (1.0 - ab_prev) / one_m)[..., None, None]
        w_x0 = (beta * ab_prev / one_m)[..., None, None]
        w_u = (beta * (1.0 - ab_prev) / one_m)[..., None, None]
        p = w_xt * onehot(x_t, n) + w_x0 * jax.nn.softmax(x0_logits, -1) + w_u / n
        lp = jnp.log(p)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")
    return jnp.maximum(lp, LOGP_FLOOR)
