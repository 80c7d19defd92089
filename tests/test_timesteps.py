"""Tests of :mod:`diffrec_jax.timesteps`: the loss-history FIFO and the timestep samplers.

The vectorised :func:`update_loss_history` is compared with a plain sequential Python version of
the reference rule (spec section 5.2); the importance sampler with its probabilities (section 5.3).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrec_jax import timesteps


def reference_update(values, counts, t_B, loss_B, mask_B=None):
    """Spec 5.2, one example at a time in batch order: append, or shift left and append."""
    values = np.array(values, np.float32, copy=True)
    counts = np.array(counts, np.int32, copy=True)
    H = values.shape[1]
    for b, (t, loss) in enumerate(zip(t_B, loss_B)):
        if mask_B is not None and not mask_B[b]:
            continue
        if counts[t] < H:
            values[t, counts[t]] = loss
            counts[t] += 1
        else:
            values[t, :-1] = values[t, 1:].copy()
            values[t, -1] = loss
    return values, counts


_update = jax.jit(timesteps.update_loss_history)


def _assert_same(hist, values, counts):
    np.testing.assert_array_equal(np.asarray(hist.counts), counts)
    np.testing.assert_array_equal(np.asarray(hist.values), values)


def test_init_loss_history():
    hist = timesteps.init_loss_history(7, 4)
    chex.assert_shape(hist.values, (7, 4))
    chex.assert_shape(hist.counts, (7,))
    assert hist.values.dtype == jnp.float32 and hist.counts.dtype == jnp.int32
    assert timesteps.init_loss_history(5).values.shape == (5, 10)


def test_update_small_hand_example():
    hist = timesteps.init_loss_history(3, 3)
    hist = _update(hist, jnp.array([1, 1]), jnp.array([1.0, 2.0]))
    np.testing.assert_array_equal(np.asarray(hist.values[1]), [1.0, 2.0, 0.0])
    # five more losses on the same row in one batch: the row keeps the last three
    hist = _update(
        hist, jnp.array([1, 1, 2, 1, 1, 1]), jnp.array([3.0, 4.0, 9.0, 5.0, 6.0, 7.0])
    )
    np.testing.assert_array_equal(np.asarray(hist.values[1]), [5.0, 6.0, 7.0])
    np.testing.assert_array_equal(np.asarray(hist.values[2]), [9.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(hist.counts), [0, 3, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_matches_sequential_reference(seed):
    """Random batches (with masks, skewed steps, batches longer than H) over many steps."""
    rng = np.random.default_rng(seed)
    T, H = 5, 4
    hist = timesteps.init_loss_history(T, H)
    values, counts = np.zeros((T, H), np.float32), np.zeros((T,), np.int32)
    for step in range(40):
        B = (3, 9, 16)[step % 3]
        if step % 5 == 0:  # one step gets the whole (long) batch
            t_B = np.full((B,), rng.integers(T), np.int32)
        else:
            p = rng.dirichlet(np.ones(T) * 0.5)
            t_B = rng.choice(T, size=B, p=p).astype(np.int32)
        loss_B = rng.exponential(size=B).astype(np.float32)
        mask_B = None if step % 2 else rng.random(B) < 0.7
        hist = _update(hist, jnp.asarray(t_B), jnp.asarray(loss_B), mask_B)
        values, counts = reference_update(values, counts, t_B, loss_B, mask_B)
        _assert_same(hist, values, counts)
    assert np.all(counts == H)  # every row has wrapped around by now


def test_update_fully_masked_batch_is_a_no_op():
    hist = timesteps.init_loss_history(4, 3)
    hist = _update(hist, jnp.array([0, 1, 1]), jnp.array([1.0, 2.0, 3.0]))
    after = _update(
        hist, jnp.array([1, 2, 3]), jnp.array([7.0, 8.0, 9.0]), jnp.zeros((3,), bool)
    )
    chex.assert_trees_all_equal(after, hist)


def test_update_stops_gradients():
    hist = timesteps.init_loss_history(3, 2)

    def f(loss):
        h = timesteps.update_loss_history(hist, jnp.array([0, 2]), loss)
        return jnp.sum(h.values)

    np.testing.assert_array_equal(np.asarray(jax.grad(f)(jnp.array([1.0, 2.0]))), 0.0)


def _full_history(T, H, rng):
    hist = timesteps.init_loss_history(T, H)
    scale = np.linspace(0.1, 3.0, T)  # different loss sizes per step
    for _ in range(3):
        t_B = np.repeat(np.arange(T), H).astype(np.int32)
        loss_B = (scale[t_B] * rng.uniform(0.5, 1.5, size=t_B.size)).astype(np.float32)
        hist = _update(hist, jnp.asarray(t_B), jnp.asarray(loss_B))
    return hist


def test_importance_probs_matches_numpy():
    rng = np.random.default_rng(0)
    hist = _full_history(6, 5, rng)
    v = np.asarray(hist.values, np.float64)
    rms = np.sqrt(np.mean(v**2, axis=1))
    want = 0.999 * rms / rms.sum() + 0.001 / 6
    got = timesteps.importance_probs(hist)
    chex.assert_shape(got, (6,))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert float(jnp.sum(got)) == pytest.approx(1.0, abs=1e-6)
    u = timesteps.importance_probs(hist, uniform_prob=1.0)
    np.testing.assert_allclose(u, 1.0 / 6, rtol=1e-6)


def test_uniform_warm_up_until_every_row_is_full():
    """p_hat = 1 while any row has fewer than H entries; importance sampling afterwards."""
    T, H, B = 4, 3, 8
    rng = np.random.default_rng(1)
    sample = jax.jit(timesteps.sample_importance, static_argnums=2)
    hist = timesteps.init_loss_history(T, H)
    key = jax.random.PRNGKey(0)
    for step in range(200):
        key, k = jax.random.split(key)
        t_B, p_hat = sample(k, hist, B)
        chex.assert_shape([t_B, p_hat], (B,))
        assert np.all((np.asarray(t_B) >= 0) & (np.asarray(t_B) < T))
        if np.all(np.asarray(hist.counts) >= H):
            break
        np.testing.assert_array_equal(np.asarray(p_hat), 1.0)
        # losses of very different sizes, so the importance p_hat is far from 1
        loss = (10.0 ** np.asarray(t_B)).astype(np.float32)
        hist = _update(hist, t_B, jnp.asarray(loss * rng.uniform(1, 2, B)))
    else:
        pytest.fail("the history never filled up")
    assert step > 0
    probs = timesteps.importance_probs(hist)
    np.testing.assert_allclose(p_hat, T * np.asarray(probs)[np.asarray(t_B)], rtol=1e-6)
    assert not np.allclose(np.asarray(p_hat), 1.0)

    # one entry missing from a single row is enough to stay in warm-up
    almost = hist._replace(counts=hist.counts.at[2].set(H - 1))
    _, p_hat = sample(jax.random.PRNGKey(5), almost, B)
    np.testing.assert_array_equal(np.asarray(p_hat), 1.0)


def test_importance_sampling_frequencies():
    """After warm-up, t is drawn from ``importance_probs`` (chi-square check) and p_hat = T p_t."""
    T, H, n = 6, 5, 20000
    hist = _full_history(T, H, np.random.default_rng(2))
    probs = np.asarray(timesteps.importance_probs(hist), np.float64)
    t_B, p_hat = jax.jit(timesteps.sample_importance, static_argnums=2)(
        jax.random.PRNGKey(11), hist, n
    )
    t_B = np.asarray(t_B)
    observed = np.bincount(t_B, minlength=T)
    expected = probs * n
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    # 5 degrees of freedom: P(chi2 > 25) is about 1.4e-4
    assert chi2 < 25.0, (observed, expected)
    np.testing.assert_allclose(np.asarray(p_hat), T * probs[t_B], rtol=1e-6)
    # p_hat has mean about 1 under uniform sampling: here it is E_p[T p]; compare in closed form
    assert float(np.mean(p_hat)) == pytest.approx(T * np.sum(probs**2), rel=0.02)


def test_sample_uniform_and_dispatch():
    hist = timesteps.init_loss_history(7, 2)
    t_B, p_hat = timesteps.sample_uniform(jax.random.PRNGKey(0), 5000, 7)
    chex.assert_shape([t_B, p_hat], (5000,))
    counts = np.bincount(np.asarray(t_B), minlength=7)
    assert counts.min() > 600 and counts.max() < 830 and counts.sum() == 5000
    np.testing.assert_array_equal(np.asarray(p_hat), 1.0)
    t2, p2 = timesteps.sample_timesteps(jax.random.PRNGKey(0), hist, 5000, method="uniform")
    chex.assert_trees_all_equal((t2, p2), (t_B, p_hat))
    t3, p3 = timesteps.sample_timesteps(jax.random.PRNGKey(1), hist, 8)
    chex.assert_shape([t3, p3], (8,))
    with pytest.raises(ValueError):
        timesteps.sample_timesteps(jax.random.PRNGKey(0), hist, 8, method="loss-second-moment")
