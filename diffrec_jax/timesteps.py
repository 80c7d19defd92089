"""Timestep samplers: uniform and loss-aware importance sampling (Nichol & Dhariwal 2021, Sec. 3.3).

The loss history that importance sampling reads is an array pytree (:class:`LossHistory`) kept in
the train state and updated inside the jitted train step with one vectorised scatter: no Python
lists, no host synchronisation.

Importance sampling, as DiffRec does it (spec section 5.2-5.3):

* a FIFO of the last ``H`` (=10) weighted losses is kept for each step ``t``;
* until every step has ``H`` entries, ``t ~ Uniform{0..T-1}`` and ``p_hat = 1``;
* afterwards ``q_t ∝ sqrt(mean_h L_{t,h}^2)``, ``p_t = (1 - u) q_t + u / T`` with ``u = 0.001``,
  ``t ~ p`` and ``p_hat_t = T p_t``; the training loss is ``mean_B(L_B / p_hat_B)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossHistory(NamedTuple):
    """Ring of recent per-step losses.

    Attributes:
      values: float32 ``[T, H]``; row ``t`` holds its ``counts[t]`` most recent losses, oldest first.
      counts: int32 ``[T]``, number of valid entries per row (at most ``H``).
    """

    values: jnp.ndarray
    counts: jnp.ndarray


def init_loss_history(num_steps: int, history_size: int = 10) -> LossHistory:
    """An empty :class:`LossHistory` for ``num_steps`` steps."""
    return LossHistory(
        jnp.zeros((num_steps, history_size), jnp.float32), jnp.zeros((num_steps,), jnp.int32)
    )


def update_loss_history(
    hist: LossHistory, t_B: jnp.ndarray, loss_B: jnp.ndarray, mask_B: jnp.ndarray | None = None
) -> LossHistory:
    """Appends each example's loss to its step's FIFO, in batch order, in one scatter.

    Equivalent to the sequential rule: for each example ``b`` in order, if row ``t_b`` is not full
    write at ``counts[t_b]`` and increment, else shift the row left and write at the end.

    Args:
      hist: current history.
      t_B: int ``[B]`` steps.
      loss_B: float ``[B]`` losses (gradients are stopped).
      mask_B: optional bool ``[B]``; padded examples (False) are ignored.
    """
    T, H = hist.values.shape
    loss_B = jax.lax.stop_gradient(loss_B).astype(jnp.float32)
    if mask_B is None:
        mask_B = jnp.ones(t_B.shape, bool)
    onehot_BxT = jax.nn.one_hot(t_B, T, dtype=jnp.int32) * mask_B[:, None].astype(jnp.int32)
    # rank of each example among the (valid) examples of the same step that precede it
    rank_B = jnp.take_along_axis(jnp.cumsum(onehot_BxT, axis=0), t_B[:, None], axis=1)[:, 0] - 1
    n_new_T = onehot_BxT.sum(axis=0)
    total_T = hist.counts + n_new_T
    new_counts_T = jnp.minimum(total_T, H)
    shift_T = total_T - new_counts_T  # how far the old entries move left
    # old entries: position j takes old[j + shift] when that is a valid old entry
    src_TxH = jnp.arange(H)[None, :] + shift_T[:, None]
    old_valid = src_TxH < hist.counts[:, None]
    shifted = jnp.where(
        old_valid, jnp.take_along_axis(hist.values, jnp.clip(src_TxH, 0, H - 1), axis=1), 0.0
    )
    # new entries: example b lands at counts[t] + rank - shift[t]; negative means pushed out
    pos_B = jnp.take(hist.counts - shift_T, t_B) + rank_B
    keep_B = mask_B & (pos_B >= 0)
    rows_B = jnp.where(keep_B, t_B, T)  # out of bounds -> dropped
    values = shifted.at[rows_B, jnp.clip(pos_B, 0, H - 1)].set(loss_B, mode="drop")
    return LossHistory(values, new_counts_T.astype(jnp.int32))


def importance_probs(hist: LossHistory, uniform_prob: float = 0.001) -> jnp.ndarray:
    """``p_t = (1-u) sqrt(mean L_t^2) / sum(...) + u / T``, float32 ``[T]``."""
    T = hist.values.shape[0]
    rms_T = jnp.sqrt(jnp.mean(jnp.square(hist.values), axis=1))
    q_T = rms_T / jnp.maximum(rms_T.sum(), 1e-30)
    return (1.0 - uniform_prob) * q_T + uniform_prob / T


def sample_uniform(key: jax.Array, batch_size: int, num_steps: int):
    """``t ~ Uniform{0..T-1}``; returns ``(t_B, p_hat_B)`` with ``p_hat = 1``."""
    t_B = jax.random.randint(key, (batch_size,), 0, num_steps)
    return t_B, jnp.ones((batch_size,), jnp.float32)


def sample_importance(
    key: jax.Array, hist: LossHistory, batch_size: int, uniform_prob: float = 0.001
):
    """Loss-aware sampling with a uniform warm-up until every history row is full.

    Returns:
      ``(t_B, p_hat_B)`` where ``p_hat = T p_t`` (1 during warm-up); divide losses by ``p_hat``.
    """
    T, H = hist.values.shape
    t_uni, p_uni = sample_uniform(key, batch_size, T)
    probs_T = importance_probs(hist, uniform_prob)
    t_imp = jax.random.choice(key, T, (batch_size,), replace=True, p=probs_T)
    p_imp = jnp.take(probs_T, t_imp) * T
    warm = jnp.all(hist.counts >= H)
    return jnp.where(warm, t_imp, t_uni), jnp.where(warm, p_imp, p_uni)


def sample_timesteps(
    key: jax.Array,
    hist: LossHistory,
    batch_size: int,
    *,
    method: str = "importance",
    uniform_prob: float = 0.001,
):
    """Dispatches to :func:`sample_uniform` or :func:`sample_importance` (``method`` is static)."""
    if method == "uniform":
        return sample_uniform(key, batch_size, hist.values.shape[0])
    if method == "importance":
        return sample_importance(key, hist, batch_size, uniform_prob)
    raise ValueError(f"timestep sampling method must be 'uniform' or 'importance', got {method!r}")
