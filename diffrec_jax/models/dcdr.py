"""DCDR: discrete conditional diffusion for reranking (Lin et al., WWW 2024 Companion), rebuilt.

**A reconstruction by design, not a port.** The paper's code and data are not public and its
full text was not available; ``shared/specs/dcdr.md`` tags every element as [paper] (abstract /
consistent summaries), [summary] or [design] (our choice, standard discrete-diffusion machinery).
This module implements that spec (its section 8):

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

* **Conditional denoiser** ``p_theta(x_0 | x_t, t, u, C, c)`` ([design] after [paper]): a
  bidirectional pre-LN Transformer over ``1 + n + n`` tokens (user token = user id embedding +
  projected mean of the history's item embeddings + step embedding; ``n`` list tokens = the item
  at each position of ``x_t`` + position embedding + the embedded response code ``c_k`` of that
  position; ``n`` candidate tokens); **pointer outputs**
  ``logits[k, j] = (W_q h_k) . (W_k g_j) / sqrt(d)`` over the candidates. The response codes are
  0 no click, 1 click, 2 click + like, 3 unexposed; a 5th embedding is the dropped condition
  (condition dropout, enabling classifier-free guidance).

* **Training** ([design]): ``t ~ U{1..T}``, ``x_t ~ q(x_t | x_0)``, loss
  ``-(1/n) sum_k log p_theta(x_0^k | ...)`` (x0 cross-entropy); ``c`` = the logged responses.

* **Inference** ([summary]: starting sequences, beam search, early stop; [paper]: evaluator):
  start from the initial ranking as ``x_{t_s}``; each step forms per-position distributions of
  ``x_{t-1}`` (:func:`transition_logprobs`: the exact posterior mixed over the predicted ``x_0``
  for ``token_uniform``, the posterior mixture's per-position marginal for ``perm_uniform``, the
  ``x_0`` prediction itself for ``perm_swap``), decodes the ``B`` best *valid permutations* of
  each beam (:func:`decode_topb`, left to right without replacement; ``B = 1`` is greedy), keeps
  the ``B`` best distinct lists by accumulated log-probability, and stops early once the beam's
  set of lists stops changing (:func:`generate`). A list-wise **evaluator**
  (:class:`ListEvaluator`, per-position click / like probabilities, BCE on the logs) picks the
  final list among the beam.

* **Conditioning** ([design]): the condition ``c*`` is set by a rule (``config.infer.condition``:
  all-positive, observed, all-negative, or clicks on the first ``k`` slots). Two ways to make the
  reverse process follow it: classifier-free guidance on the denoiser's own use of ``c``
  (``guidance``), and classifier guidance with the evaluator as the likelihood
  (:func:`evaluator_guide`: beam score + ``lambda log P_evaluator(c* | list)``). On the synthetic
  world the denoiser trained on logged responses barely reads ``c`` (the responses say little
  about the list: 0.19 nats for the exact posterior), so only the second moves the lists; the
  exact Bayes posterior (:func:`diffrec_jax.data.rerank_synthetic.bayes_conditional`) shows which
  conditions can raise the utility at all.

The point-wise reranker baseline (:class:`PointwiseRanker`) is trained on the same logs.

Everything here is functional JAX on dict parameter trees; the training loop is
:mod:`diffrec_jax.rerank_train`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DCDR",
    "DiscreteSchedule",
    "KERNELS",
    "ListEvaluator",
    "PointwiseRanker",
    "decode_topb",
    "evaluator_guide",
    "generate",
    "greedy_decode",
    "make_discrete_schedule",
    "perm_log_marginal",
    "perm_posterior_prob",
    "perm_posterior_weights",
    "perm_q_sample",
    "swap_q_sample",
    "token_marginal",
    "token_posterior",
    "token_q_sample",
    "transition_logprobs",
]

KERNELS = ("perm_uniform", "perm_swap", "token_uniform")
N_CODES = 4  # response codes 0..3; index 4 is the dropped (null) condition
NULL_CODE = 4
INVALID = -1e30  # score of an empty beam slot (finite, so arithmetic stays defined)
_LOGP_FLOOR = -1e4


# ----------------------------------------------------------------------------------------------
# Schedules and forward kernels
# ----------------------------------------------------------------------------------------------


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


def _onehot(x, n):
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
    return ab * _onehot(x0_L, n) + (1.0 - ab) / n


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
    xt1 = _onehot(x_t_L, n)
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
        p = w_xt * _onehot(x_t, n) + w_x0 * jax.nn.softmax(x0_logits, -1) + w_u / n
        lp = jnp.log(p)
    else:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")
    return jnp.maximum(lp, _LOGP_FLOOR)


# ----------------------------------------------------------------------------------------------
# Valid-list decoding and beam search
# ----------------------------------------------------------------------------------------------


def decode_topb(logp_LxN: jnp.ndarray, beam: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The ``beam`` most likely valid permutations under per-position log-probabilities.

    Left to right, every partial list is extended by each unused candidate, scored by the sum of
    ``logp[k, x_k]``, and the best ``beam`` partial lists are kept (beam search over positions,
    without replacement). ``beam = 1`` is greedy decoding (:func:`greedy_decode`). Slots beyond
    the number of distinct lists found carry score :data:`INVALID` (they are still valid
    permutations).

    Args:
      logp_LxN: ``[L, N]`` log-probabilities, ``L <= N`` positions over ``N`` candidates.
      beam: ``B``.

    Returns:
      ``(lists int32 [B, L], scores float32 [B])``, best first.
    """
    L, N = logp_LxN.shape
    logp = jnp.maximum(logp_LxN, _LOGP_FLOOR)
    seqs = jnp.zeros((beam, L), jnp.int32)
    score = jnp.full((beam,), INVALID, jnp.float32).at[0].set(0.0)
    used = jnp.zeros((beam, N), bool)
    rows = jnp.arange(beam)
    for k in range(L):
        cand = score[:, None] + jnp.where(used, -jnp.inf, logp[k][None, :])
        top_v, top_i = jax.lax.top_k(cand.reshape(-1), beam)
        parent, choice = top_i // N, top_i % N
        seqs = seqs[parent].at[:, k].set(choice.astype(jnp.int32))
        used = used[parent].at[rows, choice].set(True)
        score = jnp.where(score[parent] <= INVALID / 2, INVALID, top_v)
    return seqs, score


def greedy_decode_jax(logp_LxN: jnp.ndarray) -> jnp.ndarray:
    """:func:`decode_topb` with one beam: the greedy valid permutation, int32 ``[L]``."""
    return decode_topb(logp_LxN, 1)[0][0]


def greedy_decode(logp_LxN: np.ndarray) -> np.ndarray:
    """Reference greedy decoding (NumPy): position by position, the best unused candidate."""
    L, N = logp_LxN.shape
    used = np.zeros(N, bool)
    out = np.zeros(L, np.int32)
    for k in range(L):
        row = np.where(used, -np.inf, np.maximum(logp_LxN[k], _LOGP_FLOOR))
        out[k] = int(np.argmax(row))
        used[out[k]] = True
    return out


def _merge_beams(seqs: jnp.ndarray, scores: jnp.ndarray, beam: int, aux: jnp.ndarray | None = None):
    """Best ``beam`` distinct lists among ``[M, n]`` candidates (duplicates keep the best score);
    ``(lists, scores)``, plus the chosen rows of ``aux`` ``[M]`` when given."""
    order = jnp.argsort(-scores)
    seqs, scores = seqs[order], scores[order]
    same = jnp.all(seqs[:, None, :] == seqs[None, :, :], -1)  # [M, M]
    earlier = jnp.tril(jnp.ones_like(same), k=-1)
    dup = jnp.any(same & earlier, axis=1)
    scores = jnp.where(dup, INVALID, scores)
    top_v, top_i = jax.lax.top_k(scores, beam)
    if aux is None:
        return seqs[top_i], top_v
    return seqs[top_i], top_v, aux[order][top_i]


def _same_set(a: jnp.ndarray, sa: jnp.ndarray, b: jnp.ndarray, sb: jnp.ndarray) -> jnp.ndarray:
    """Whether the valid lists of two beams (``[B, n]`` with scores) form the same set."""
    va, vb = sa > INVALID / 2, sb > INVALID / 2
    same = jnp.all(a[:, None, :] == b[None, :, :], -1) & va[:, None] & vb[None, :]
    return (jnp.sum(va) == jnp.sum(vb)) & jnp.all(jnp.any(same, 1) | ~va)


def generate(
    logits_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    init: jnp.ndarray,
    *,
    kernel: str,
    sched: DiscreteSchedule,
    t_start: int,
    beam: int = 1,
    early_stop: bool = True,
    guide_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Reverse process from the initial lists with beam search and early stop (host loop).

    ``x_{t_s}`` = ``init``. At each step ``t = t_s..1`` every beam list ``x_t`` gets per-position
    log-probabilities of ``x_{t-1}`` (:func:`transition_logprobs` of ``logits_fn(x_t, t)``), its
    ``B`` best valid permutations (:func:`decode_topb`) are scored by the beam score plus their
    log-probability, and the ``B`` best distinct lists form the next beam. A request stops (its
    beam frozen) when the set of its beam lists does not change in a step (``early_stop``); the
    loop ends when all requests stopped or ``t`` reaches 0.

    Args:
      logits_fn: ``(x_RxBxn int32, t int) -> [R, B, n, n]`` pointer logits of ``p(x_0 | x_t)``
        (a closure over the request's context and condition).
      init: int ``[R, n]`` initial lists, or ``[R, B, n]`` ``B`` starting sequences per request
        (e.g. the initial list and noised copies of it; all start live).
      kernel, sched: the diffusion kernel and schedule.
      t_start: ``t_s`` in ``1..T`` (the "noise scale" knob).
      beam: ``B``.
      early_stop: freeze a request whose beam set is a fixed point.
      guide_fn: optional ``(lists int32 [R, M, n]) -> [R, M]`` guidance term (e.g. ``lambda``
        times an evaluator's ``log P(c | list)``: classifier guidance on the condition,
        [design]). A beam's ranking score is then its accumulated log-probability plus the
        guide of its *current* list, so candidates are compared by ``log p + guide`` at every
        step and the returned lists are sorted by it.

    Returns:
      ``(lists int32 [R, B, n], scores float32 [R, B], steps int32 [R])``; ``steps`` = reverse
      steps a request took before it stopped.
    """
    if not 1 <= t_start <= sched.num_steps:
        raise ValueError(f"t_start must be in 1..{sched.num_steps}, got {t_start}")
    if init.ndim == 3:  # several starting sequences per request, all live
        R, b0, n = init.shape
        if b0 != beam:
            raise ValueError(f"init has {b0} starting sequences per request, beam is {beam}")
        seqs = init.astype(jnp.int32)
        scores = jnp.zeros((R, beam), jnp.float32)
    else:
        R, n = init.shape
        seqs = jnp.broadcast_to(init[:, None, :], (R, beam, n)).astype(jnp.int32)
        scores = jnp.full((R, beam), INVALID, jnp.float32).at[:, 0].set(0.0)
    done = jnp.zeros((R,), bool)
    steps = jnp.zeros((R,), jnp.int32)
    expand, merge = _beam_expand(kernel, beam), _beam_merge(beam)
    guide = None
    if guide_fn is not None:
        guide = guide_fn(seqs)
        scores = jnp.where(scores > INVALID / 2, scores + guide, INVALID)
    for t in range(t_start, 0, -1):
        logits = logits_fn(seqs, t)
        base = scores if guide is None else jnp.where(scores > INVALID / 2, scores - guide, INVALID)
        dec, tot = expand(seqs, base, logits, jnp.int32(t), sched)
        if guide_fn is None:
            new_seqs, new_scores, fixed = merge(seqs, scores, dec, tot)
        else:
            g_dec = guide_fn(dec)
            tot = jnp.where(tot > INVALID / 2, tot + g_dec, INVALID)
            new_seqs, new_scores, fixed, new_guide = merge(seqs, scores, dec, tot, g_dec)
            guide = jnp.where(done[:, None], guide, new_guide)
        new_seqs = jnp.where(done[:, None, None], seqs, new_seqs)
        new_scores = jnp.where(done[:, None], scores, new_scores)
        steps = steps + (~done).astype(jnp.int32)
        if early_stop:
            done = done | fixed
        seqs, scores = new_seqs, new_scores
        if early_stop and bool(jnp.all(done)):
            break
    return seqs, scores, steps


_STEP_CACHE: dict = {}


def _beam_expand(kernel: str, beam: int):
    """Jitted ``(seqs, scores, logits, t, sched) -> (cands [R, B*B, n], scores [R, B*B])``: the ``B``
    best valid permutations of every beam list under its transition log-probabilities, scored by
    the beam score plus their log-probability."""
    key = ("expand", kernel, beam)
    if key not in _STEP_CACHE:

        @jax.jit
        def expand(seqs, scores, logits, t, sched):
            lp = transition_logprobs(kernel, seqs, logits, t, sched)  # [R, B, n, n]
            dec, dsc = jax.vmap(jax.vmap(lambda l: decode_topb(l, beam)))(lp)  # [R,B,B,n], [R,B,B]
            valid = (scores[:, :, None] > INVALID / 2) & (dsc > INVALID / 2)
            tot = jnp.where(valid, scores[:, :, None] + dsc, INVALID)
            R, B, _, n = dec.shape
            return dec.reshape(R, B * B, n), tot.reshape(R, B * B)

        _STEP_CACHE[key] = expand
    return _STEP_CACHE[key]


def _beam_merge(beam: int):
    """Jitted ``(seqs, scores, cands, cand_scores[, cand_aux]) -> (new_seqs, new_scores, fixed[,
    new_aux])``: the ``B`` best distinct candidates and whether the beam's set of lists stayed the
    same (and the candidates' ``cand_aux`` values that came along)."""
    key = ("merge", beam)
    if key not in _STEP_CACHE:

        @jax.jit
        def merge(seqs, scores, cands, cand_scores, cand_aux=None):
            if cand_aux is None:
                ms, msc = jax.vmap(lambda s, c: _merge_beams(s, c, beam))(cands, cand_scores)
            else:  # carry a per-candidate value (the guide) along with the chosen lists
                ms, msc, ma = jax.vmap(lambda s, c, a: _merge_beams(s, c, beam, a))(cands, cand_scores, cand_aux)
            fixed = jax.vmap(_same_set)(seqs, scores, ms, msc)
            return (ms, msc, fixed) if cand_aux is None else (ms, msc, fixed, ma)

        _STEP_CACHE[key] = merge
    return _STEP_CACHE[key]


# ----------------------------------------------------------------------------------------------
# Networks (functional): embeddings, a pre-LN Transformer, heads
# ----------------------------------------------------------------------------------------------


def _dense_init(key, n_in, n_out, scale=1.0):
    return {"w": jax.random.normal(key, (n_in, n_out), jnp.float32) * scale / math.sqrt(n_in),
            "b": jnp.zeros((n_out,), jnp.float32)}


def _dense(p, x):
    return x @ p["w"] + p["b"]


def _ln_init(d):
    return {"g": jnp.ones((d,), jnp.float32), "b": jnp.zeros((d,), jnp.float32)}


def _ln(p, x, eps=1e-6):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * p["g"] + p["b"]


def _drop(x, rate, key):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def init_transformer(key: jax.Array, d: int, n_layers: int, ffn_mult: int = 4) -> dict:
    """Parameters of ``n_layers`` pre-LN blocks (``h += MHA(LN h)``, ``h += FFN(LN h)``) + final LN."""
    blocks = []
    for k in jax.random.split(key, n_layers):
        ks = jax.random.split(k, 4)
        blocks.append({
            "ln1": _ln_init(d), "qkv": _dense_init(ks[0], d, 3 * d), "o": _dense_init(ks[1], d, d, 0.5),
            "ln2": _ln_init(d), "f1": _dense_init(ks[2], d, ffn_mult * d),
            "f2": _dense_init(ks[3], ffn_mult * d, d, 0.5),
        })
    return {"blocks": blocks, "ln_f": _ln_init(d)}


def transformer(p: dict, h_BxSxD: jnp.ndarray, n_heads: int, rate: float = 0.0,
                key: jax.Array | None = None, causal: bool = False) -> jnp.ndarray:
    """Pre-LN Transformer over ``S`` tokens, bidirectional or causal.

    Args:
      p: :func:`init_transformer` parameters.
      h_BxSxD: ``[B, S, d]`` tokens.
      n_heads: attention heads (``d`` divisible by it).
      rate: dropout rate on the residual branches (training only, with ``key``).
      key: PRNG key or None.
      causal: token ``i`` attends to tokens ``<= i`` only (a top-down examination order when the
        list follows a user token).

    Returns:
      ``[B, S, d]``.
    """
    B, S, D = h_BxSxD.shape
    hd = D // n_heads
    h = h_BxSxD
    for i, blk in enumerate(p["blocks"]):
        ka = kb = None
        if key is not None:
            ka, kb = jax.random.split(jax.random.fold_in(key, i))
        x = _ln(blk["ln1"], h)
        q, k, v = jnp.split(_dense(blk["qkv"], x), 3, -1)
        q, k, v = (a.reshape(B, S, n_heads, hd) for a in (q, k, v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        if causal:
            logits = jnp.where(jnp.tril(jnp.ones((S, S), bool)), logits, -1e9)
        att = jax.nn.softmax(logits, -1)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(B, S, D)
        h = h + _drop(_dense(blk["o"], o), rate, ka)
        x = _ln(blk["ln2"], h)
        h = h + _drop(_dense(blk["f2"], jax.nn.gelu(_dense(blk["f1"], x))), rate, kb)
    return _ln(p["ln_f"], h)


class Context(NamedTuple):
    """Request context on device: ``user [B]``, ``cands [B, n]`` item ids, ``hist [B, H]`` items
    and ``rank [B, n]`` the initial-ranking position of each candidate (the ranking stage's output,
    available at reranking time; ``None`` to leave it out)."""

    user: jnp.ndarray
    cands: jnp.ndarray
    hist: jnp.ndarray
    rank: jnp.ndarray | None = None

    def repeat(self, b: int) -> "Context":
        """Every request repeated ``b`` times (``[R] -> [R * b]``)."""
        return Context(*(None if a is None else jnp.repeat(a, b, axis=0) for a in self))


def init_rank(init: jnp.ndarray) -> jnp.ndarray:
    """Position of each candidate in the initial list (the inverse permutation), int32 ``[B, n]``."""
    return jnp.argsort(init, axis=-1).astype(jnp.int32)


def _init_embeddings(key, n_users, n_items, n_cats, d, n) -> dict:
    ks = jax.random.split(key, 5)
    return {
        "user": 0.1 * jax.random.normal(ks[0], (n_users, d), jnp.float32),
        "item": 0.1 * jax.random.normal(ks[1], (n_items, d), jnp.float32),
        "cat": 0.1 * jax.random.normal(ks[2], (n_cats, d), jnp.float32),
        "hist": _dense_init(ks[3], d, d),
        "rank": 0.1 * jax.random.normal(ks[4], (n, d), jnp.float32),
    }


def _embed(p: dict, item_cat: jnp.ndarray, ctx: Context, use_ids: bool = True,
           use_rank: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(user [B, d], cands [B, n, d])``: user id embedding + projected mean history item
    embedding; candidate = item id embedding + category embedding (+ embedding of its position in
    the initial ranking when ``ctx.rank`` is given). With ``use_ids = False`` the user and item id
    embeddings are left out (features: category, initial rank, and the history's categories)."""
    def item_repr(items):
        e = p["cat"][item_cat[items]]
        return e + p["item"][items] if use_ids else e

    u = _dense(p["hist"], jnp.mean(item_repr(ctx.hist), 1))
    if use_ids:
        u = u + p["user"][ctx.user]
    c = item_repr(ctx.cands)
    if use_rank and ctx.rank is not None:
        c = c + p["rank"][ctx.rank]
    return u, c


class _Sizes(NamedTuple):
    n_users: int
    n_items: int
    n_cats: int
    n: int
    m: int


def _sizes(world) -> _Sizes:
    return _Sizes(world.n_users, world.n_items, world.n_cats, world.n, world.m)


def _mget(m: Any, field: str, default: Any) -> Any:
    return m.get(field, default) if hasattr(m, "get") else getattr(m, field, default)


class DCDR:
    """The conditional denoiser ``p_theta(x_0 | x_t, t, u, C, c)`` with pointer outputs, its loss
    and the reverse process (module docstring).

    Config (``config.model``): ``kernel`` (:data:`KERNELS`), ``steps`` (T), ``schedule``
    (linear | cosine), ``beta_min``, ``beta_max``, ``n_swaps_max``, ``emb_dim``, ``n_layers``,
    ``n_heads``, ``dropout``, ``cond_dropout``.
    """

    name = "dcdr"
    DEFAULTS = {"kernel": "perm_uniform", "steps": 10, "schedule": "linear", "beta_min": 0.05,
                "beta_max": 0.3, "n_swaps_max": 1, "emb_dim": 64, "n_layers": 2, "n_heads": 4,
                "dropout": 0.1, "cond_dropout": 0.1}

    def __init__(self, config: Any, world: Any):
        m = config.model
        g = lambda f: _mget(m, f, self.DEFAULTS[f])  # noqa: E731
        self.kernel = g("kernel")
        if self.kernel not in KERNELS:
            raise ValueError(f"config.model.kernel must be one of {KERNELS}, got {self.kernel!r}")
        self.sizes = _sizes(world)
        self.sched = make_discrete_schedule(int(g("steps")), g("schedule"), float(g("beta_min")),
                                            float(g("beta_max")))
        self.n_swaps_max = int(g("n_swaps_max"))
        self.d = int(g("emb_dim"))
        self.n_layers = int(g("n_layers"))
        self.n_heads = int(g("n_heads"))
        self.rate = float(g("dropout"))
        self.cond_dropout = float(g("cond_dropout"))
        self.use_ids = bool(_mget(m, "use_ids", True))
        self.use_rank = bool(_mget(m, "use_rank", True))
        if self.d % self.n_heads:
            raise ValueError(f"config.model.emb_dim ({self.d}) must be divisible by n_heads ({self.n_heads})")
        self.item_cat = jnp.asarray(world.item_cat)

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses bad DCDR fields, naming them."""
        m = config.model
        k = _mget(m, "kernel", DCDR.DEFAULTS["kernel"])
        if k not in KERNELS:
            raise ValueError(f"config.model.kernel must be one of {KERNELS}, got {k!r}")
        for f in ("steps", "emb_dim", "n_layers", "n_heads", "n_swaps_max"):
            v = _mget(m, f, DCDR.DEFAULTS[f])
            if int(v) != v or v < 1:
                raise ValueError(f"config.model.{f} must be an integer >= 1, got {v}")
        for f in ("dropout", "cond_dropout"):
            v = _mget(m, f, DCDR.DEFAULTS[f])
            if not 0 <= v < 1:
                raise ValueError(f"config.model.{f} must be in [0, 1), got {v}")

    def init(self, key: jax.Array):
        """``(None, params, {})``."""
        s, d = self.sizes, self.d
        ks = jax.random.split(key, 8)
        params = {
            "emb": _init_embeddings(ks[0], s.n_users, s.n_items, s.n_cats, d, s.n),
            "pos": 0.1 * jax.random.normal(ks[1], (s.n, d), jnp.float32),
            "cond": 0.1 * jax.random.normal(ks[2], (N_CODES + 1, d), jnp.float32),
            "time": 0.1 * jax.random.normal(ks[3], (self.sched.num_steps + 1, d), jnp.float32),
            "type": 0.1 * jax.random.normal(ks[4], (3, d), jnp.float32),
            "tf": init_transformer(ks[5], d, self.n_layers),
            "ptr_q": _dense_init(ks[6], d, d),
            "ptr_k": _dense_init(ks[7], d, d),
        }
        return None, params, {}

    def logits(self, params: dict, ctx: Context, x_t: jnp.ndarray, t: jnp.ndarray, cond: jnp.ndarray,
               key: jax.Array | None = None) -> jnp.ndarray:
        """Pointer logits of ``p_theta(x_0^k = j | x_t, t, u, C, c)``.

        Args:
          params: parameters.
          ctx: request context (batch ``B``).
          x_t: int ``[B, n]`` noisy lists (candidate indices).
          t: int ``[B]`` steps.
          cond: int ``[B, n]`` response codes (``NULL_CODE`` = dropped condition).
          key: dropout key (training) or None.

        Returns:
          ``[B, n, n]`` logits (position x candidate).
        """
        u, c = _embed(params["emb"], self.item_cat, ctx, self.use_ids, self.use_rank)  # [B, d], [B, n, d]
        B, n, d = c.shape
        user_tok = u + params["time"][t] + params["type"][0]
        xt_emb = jnp.take_along_axis(c, x_t[:, :, None], 1)
        list_tok = xt_emb + params["pos"][None, :n] + params["cond"][cond] + params["type"][1]
        cand_tok = c + params["type"][2]
        h = jnp.concatenate([user_tok[:, None], list_tok, cand_tok], 1)
        h = transformer(params["tf"], h, self.n_heads, self.rate, key)
        q = _dense(params["ptr_q"], h[:, 1 : n + 1])
        k = _dense(params["ptr_k"], h[:, n + 1 :])
        return jnp.einsum("bkd,bjd->bkj", q, k) / math.sqrt(d)

    def loss(self, params: dict, ctx: Context, x0: jnp.ndarray, cond: jnp.ndarray, mask_B: jnp.ndarray,
             key: jax.Array):
        """x0 cross-entropy ``-(1/n) sum_k log p_theta(x_0^k | x_t, t, u, C, c)``, ``t ~ U{1..T}``.

        Args:
          params: parameters.
          ctx: request context.
          x0: int ``[B, n]`` logged lists.
          cond: int ``[B, n]`` their response codes.
          mask_B: ``[B]`` bool, False on padding rows.
          key: PRNG key.

        Returns:
          ``(loss, {"ce", "acc"})``.
        """
        kt, kq, kc, kd = jax.random.split(key, 4)
        B = x0.shape[0]
        t = jax.random.randint(kt, (B,), 1, self.sched.num_steps + 1)
        x_t = q_sample(self.kernel, kq, x0, t, self.sched, self.n_swaps_max)
        drop = jax.random.uniform(kc, (B,)) < self.cond_dropout
        cond = jnp.where(drop[:, None], NULL_CODE, cond)
        lg = self.logits(params, ctx, x_t, t, cond, kd)
        lp = jax.nn.log_softmax(lg, -1)
        nll = -jnp.take_along_axis(lp, x0[:, :, None], -1)[..., 0].mean(-1)  # [B]
        w = mask_B.astype(jnp.float32)
        ce = jnp.sum(nll * w) / jnp.maximum(w.sum(), 1.0)
        acc = jnp.sum(jnp.mean(jnp.argmax(lg, -1) == x0, -1) * w) / jnp.maximum(w.sum(), 1.0)
        return ce, {"ce": ce, "acc": acc}

    @functools.cached_property
    def jit_logits(self):
        """:meth:`logits` jitted once per model (a fresh ``jax.jit`` per batch would recompile)."""
        return jax.jit(lambda p, ctx, x, t, c: self.logits(p, ctx, x, t, c))

    def make_logits_fn(self, params: dict, ctx: Context, cond: jnp.ndarray, guidance: float = 0.0):
        """``(x_RxBxn, t) -> [R, B, n, n]`` for :func:`generate`; with ``guidance = w > 0``,
        classifier-free guidance ``(1 + w) l(c) - w l(null)`` ([design], optional)."""
        fn = self.jit_logits

        def logits_fn(x, t):
            R, B, n = x.shape
            rep = lambda a: jnp.repeat(a, B, axis=0)  # noqa: E731
            c2 = ctx.repeat(B)
            tt = jnp.full((R * B,), t, jnp.int32)
            lg = fn(params, c2, x.reshape(R * B, n), tt, rep(cond))
            if guidance:
                lg0 = fn(params, c2, x.reshape(R * B, n), tt, jnp.full((R * B, n), NULL_CODE, jnp.int32))
                lg = (1.0 + guidance) * lg - guidance * lg0
            return lg.reshape(R, B, n, n)

        return logits_fn

    def generate(self, params: dict, ctx: Context, init: jnp.ndarray, cond: jnp.ndarray, *,
                 t_start: int, beam: int = 4, early_stop: bool = True, guidance: float = 0.0,
                 noise_start: bool = False, key: jax.Array | None = None,
                 guide_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None):
        """Reverse process from ``init`` under condition ``cond`` (see :func:`generate`).

        ``guidance`` is classifier-free guidance on the denoiser's own use of ``cond``;
        ``guide_fn`` adds a classifier-guidance term to the beam scores (see :func:`generate`;
        :func:`evaluator_guide` builds one from a :class:`ListEvaluator`).

        With ``noise_start`` ([design], the spec's optional "noise it with ``q(x_{t_s} | x_init)``"),
        the beam starts from ``B`` sequences: the initial list and ``B - 1`` draws of
        ``q(x_{t_s} | x_init)`` (``key`` required).
        """
        if noise_start and beam > 1:
            if key is None:
                raise ValueError("noise_start needs a key")
            R, n = init.shape
            rep = jnp.repeat(init, beam - 1, axis=0)
            noised = q_sample(self.kernel, key, rep, jnp.full((R * (beam - 1),), t_start, jnp.int32),
                              self.sched, self.n_swaps_max)
            if self.kernel == "token_uniform":  # a starting sequence must be a valid list
                noised = jax.vmap(lambda x: greedy_decode_jax(jnp.log(_onehot(x, n) + 1e-3)))(noised)
            init = jnp.concatenate([init[:, None], noised.reshape(R, beam - 1, n)], 1)
        return generate(self.make_logits_fn(params, ctx, cond, guidance), init, kernel=self.kernel,
                        sched=self.sched, t_start=t_start, beam=beam, early_stop=early_stop,
                        guide_fn=guide_fn)


def evaluator_guide(evaluator: "ListEvaluator", eparams, ctx: Context, cond: jnp.ndarray,
                    weight: float) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """``guide_fn`` for :func:`generate`: ``weight * log P_evaluator(cond | list)`` of every list.

    Classifier guidance on the response condition ([design]): the beam is steered towards lists
    whose responses, as the evaluator predicts them, match ``cond``. With the true click model
    in place of the evaluator this is the ideal conditional generator's likelihood term
    (:func:`diffrec_jax.data.rerank_synthetic.bayes_conditional`).

    Args:
      evaluator, eparams: a trained :class:`ListEvaluator`.
      ctx: request context (batch ``R``).
      cond: int ``[R, n]`` response codes.
      weight: ``lambda >= 0``.
    """
    fn = evaluator.jit_condition_loglik

    def guide_fn(lists):
        R, M, n = lists.shape
        ll = fn(eparams, ctx.repeat(M), lists.reshape(R * M, n), jnp.repeat(cond, M, axis=0))
        return weight * ll.reshape(R, M)

    return guide_fn


class ListEvaluator:
    """List-wise evaluator: per-position click and like probabilities of a whole list.

    ``logit_k = MLP-free head(h_k) + <u, e_{L_k}> + b_{L_k} + b^pos_k`` where ``h`` is a
    Transformer over ``[user token, list tokens]`` (list token = candidate embedding + position
    embedding), so it can model position, preference and the mutual influence of items (e.g.
    repeated categories); with ``causal`` (config ``evaluator.causal``) position ``k`` sees only the
    user and positions ``<= k``, a top-down examination order as in DLCM-style rerankers.

    ``kind = "pairwise"`` ([design]) replaces the Transformer by a mutual-influence model: an item
    term plus the summed influence of every earlier item on item ``k``, each a small MLP of the two
    item embeddings, their distance and a same-category indicator (a standard diversity feature):
    ``logit_k = b^pos_k + f(x_k, u) + sum_{j<k} g(x_j, x_k, k - j, 1[cat_j = cat_k])``.

    Trained with per-position BCE on the exposed slots of the logs; utility
    ``= sum_{k<=m} P(click_k)``.
    """

    name = "list_evaluator"

    def __init__(self, config: Any, world: Any):
        m = config.evaluator
        self.use_ids = bool(_mget(m, "use_ids", True))
        self.use_rank = bool(_mget(m, "use_rank", True))
        self.causal = bool(_mget(m, "causal", False))
        self.kind = _mget(m, "kind", "transformer")
        if self.kind not in ("transformer", "pairwise"):
            raise ValueError(f"config.evaluator.kind must be 'transformer' or 'pairwise', got {self.kind!r}")
        self.sizes = _sizes(world)
        self.d = int(_mget(m, "emb_dim", 64))
        self.n_layers = int(_mget(m, "n_layers", 2))
        self.n_heads = int(_mget(m, "n_heads", 4))
        self.rate = float(_mget(m, "dropout", 0.1))
        self.item_cat = jnp.asarray(world.item_cat)

    def init(self, key):
        s, d = self.sizes, self.d
        ks = jax.random.split(key, 5)
        params = {
            "emb": _init_embeddings(ks[0], s.n_users, s.n_items, s.n_cats, d, s.n),
            "item_bias": jnp.zeros((s.n_items,), jnp.float32),
            "pos": 0.1 * jax.random.normal(ks[1], (s.n, d), jnp.float32),
            "pos_bias": jnp.zeros((s.n, 2), jnp.float32),
            "type": 0.1 * jax.random.normal(ks[2], (2, d), jnp.float32),
            "head": _dense_init(ks[4], d, 2, 0.1),
        }
        if self.kind == "transformer":
            params["tf"] = init_transformer(ks[3], d, self.n_layers)
        else:
            kp = jax.random.split(ks[3], 5)
            params.update({
                "item1": _dense_init(kp[0], d, d), "item2": _dense_init(kp[1], d, 2, 0.1),
                "dist": 0.1 * jax.random.normal(kp[2], (s.n, d), jnp.float32),
                "pair1": _dense_init(kp[3], 3 * d + 1, d), "pair2": _dense_init(kp[4], d, 2, 0.1),
            })
        return None, params, {}

    def _pairwise(self, params, u, x, cats, key):
        """Item term ``MLP(x_k + u)`` plus the summed influence of every earlier item,
        ``sum_{j<k} MLP([x_j, x_k, pos(k - j), 1[cat_j = cat_k]])``, ``[B, n, 2]``."""
        B, n, d = x.shape
        item = _dense(params["item2"], _drop(jax.nn.gelu(_dense(params["item1"], x + u[:, None])), self.rate, key))
        j, k = jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij")  # [n, n]: (j, k)
        dist = params["dist"][jnp.clip(k - j, 0, n - 1)]  # [n, n, d]
        same = (cats[:, :, None] == cats[:, None, :]).astype(jnp.float32)[..., None]  # [B, j, k, 1]
        feats = jnp.concatenate([jnp.broadcast_to(x[:, :, None], (B, n, n, d)),
                                 jnp.broadcast_to(x[:, None, :], (B, n, n, d)),
                                 jnp.broadcast_to(dist[None], (B, n, n, d)), same], -1)
        pair = _dense(params["pair2"], jax.nn.gelu(_dense(params["pair1"], feats)))  # [B, j, k, 2]
        before = (j < k).astype(jnp.float32)[None, :, :, None]
        return item + jnp.sum(pair * before, 1)

    def logits(self, params, ctx: Context, lists: jnp.ndarray, key=None) -> jnp.ndarray:
        """``[B, n, 2]`` click / like logits of each position of ``lists`` (int ``[B, n]``)."""
        u, c = _embed(params["emb"], self.item_cat, ctx, self.use_ids, self.use_rank)
        B, n, d = c.shape
        x = jnp.take_along_axis(c, lists[:, :, None], 1)
        items = jnp.take_along_axis(ctx.cands, lists, 1)
        if self.kind == "pairwise":
            out = self._pairwise(params, u, x, self.item_cat[items], key) + params["pos_bias"][None, :n]
            if self.use_ids:
                out = out + (jnp.einsum("bd,bkd->bk", u, x) + params["item_bias"][items])[..., None]
            return out
        h = jnp.concatenate([(u + params["type"][0])[:, None],
                             x + params["pos"][None, :n] + params["type"][1]], 1)
        h = transformer(params["tf"], h, self.n_heads, self.rate, key, causal=self.causal)[:, 1:]
        base = jnp.einsum("bd,bkd->bk", u, x)
        if self.use_ids:
            base = base + params["item_bias"][items]
        return _dense(params["head"], h) + base[..., None] + params["pos_bias"][None, :n]

    def loss(self, params, ctx: Context, lists, clicks, likes, mask_B, key):
        """Mean BCE of clicks and likes over the exposed slots of the valid rows."""
        lg = self.logits(params, ctx, lists, key)
        m = self.sizes.m
        y = jnp.stack([clicks, likes], -1)[:, :m]
        bce = jnp.mean(_bce(lg[:, :m], y), axis=(1, 2))
        w = mask_B.astype(jnp.float32)
        loss = jnp.sum(bce * w) / jnp.maximum(w.sum(), 1.0)
        return loss, {"bce": loss}

    def condition_loglik(self, params, ctx: Context, lists, cond) -> jnp.ndarray:
        """The evaluator's ``log P(responses = cond | list)``, ``[B]`` (the likelihood term of
        classifier guidance on the condition, [design]).

        The click head gives ``P(click_k)``, the like head ``P(click_k and like_k)`` (it is trained
        on likes that are 0 without a click), so code 0 scores ``log(1 - P(click))``, code 1
        ``log(P(click) - P(click and like))``, code 2 ``log P(click and like)``; codes 3
        (unexposed) and 4 (null) and the slots ``k >= m`` add nothing.

        Args:
          params: evaluator parameters.
          ctx: request context (batch ``B``).
          lists: int ``[B, n]``.
          cond: int ``[B, n]`` response codes.
        """
        lg = self.logits(params, ctx, lists)
        m = self.sizes.m
        lc, ll, cond = lg[:, :m, 0], lg[:, :m, 1], cond[:, :m]
        p_c = jax.nn.sigmoid(lc)
        p_cl = jnp.minimum(jax.nn.sigmoid(ll), p_c)
        per = jnp.where(cond == 0, jax.nn.log_sigmoid(-lc), 0.0)
        per = per + jnp.where(cond == 1, jnp.log(jnp.maximum(p_c - p_cl, 1e-6)), 0.0)
        per = per + jnp.where(cond == 2, jnp.log(jnp.maximum(p_cl, 1e-6)), 0.0)
        return per.sum(-1)

    @functools.cached_property
    def jit_condition_loglik(self):
        """:meth:`condition_loglik` jitted once per evaluator."""
        return jax.jit(self.condition_loglik)

    def utility(self, params, ctx: Context, lists) -> jnp.ndarray:
        """Predicted expected clicks ``sum_{k<=m} sigmoid(click_logit_k)``, ``[B]``."""
        return jnp.sum(jax.nn.sigmoid(self.logits(params, ctx, lists)[:, : self.sizes.m, 0]), -1)


class PointwiseRanker:
    """Point-wise reranker baseline trained on the same logs.

    ``logit(u, i, k) = MLP([u, e_i, u * e_i]) + <u, e_i> + b_i + b^pos_k`` (BCE on clicks of the
    exposed slots; the position bias absorbs the logging position); at inference candidates are
    sorted by ``logit`` without the position term.
    """

    name = "pointwise"

    def __init__(self, config: Any, world: Any):
        m = config.pointwise
        self.use_ids = bool(_mget(m, "use_ids", True))
        self.use_rank = bool(_mget(m, "use_rank", True))
        self.sizes = _sizes(world)
        self.d = int(_mget(m, "emb_dim", 64))
        self.rate = float(_mget(m, "dropout", 0.1))
        self.item_cat = jnp.asarray(world.item_cat)

    def init(self, key):
        s, d = self.sizes, self.d
        ks = jax.random.split(key, 3)
        params = {
            "emb": _init_embeddings(ks[0], s.n_users, s.n_items, s.n_cats, d, s.n),
            "item_bias": jnp.zeros((s.n_items,), jnp.float32),
            "pos_bias": jnp.zeros((s.n,), jnp.float32),
            "h1": _dense_init(ks[1], 3 * d, d),
            "h2": _dense_init(ks[2], d, 1, 0.1),
        }
        return None, params, {}

    def item_logits(self, params, ctx: Context, key=None) -> jnp.ndarray:
        """``[B, n]`` position-free click logits of the candidates."""
        u, c = _embed(params["emb"], self.item_cat, ctx, self.use_ids, self.use_rank)
        uu = jnp.broadcast_to(u[:, None], c.shape)
        f = jnp.concatenate([uu, c, uu * c], -1)
        h = _drop(jax.nn.gelu(_dense(params["h1"], f)), self.rate, key)
        out = _dense(params["h2"], h)[..., 0] + jnp.sum(uu * c, -1)
        return out + params["item_bias"][ctx.cands] if self.use_ids else out

    def loss(self, params, ctx: Context, lists, clicks, likes, mask_B, key):
        del likes
        m = self.sizes.m
        lg = jnp.take_along_axis(self.item_logits(params, ctx, key), lists, 1) + params["pos_bias"][None]
        bce = jnp.mean(_bce(lg[:, :m], clicks[:, :m]), 1)
        w = mask_B.astype(jnp.float32)
        loss = jnp.sum(bce * w) / jnp.maximum(w.sum(), 1.0)
        return loss, {"bce": loss}

    def rerank(self, params, ctx: Context) -> jnp.ndarray:
        """Candidates sorted by predicted click logit, int32 ``[B, n]``."""
        return jnp.argsort(-self.item_logits(params, ctx), -1).astype(jnp.int32)


def _bce(logits, y):
    return jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))
