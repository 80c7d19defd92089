"""DiffRec model: denoiser architecture, embedding, init, loss, and the projected reverse chain."""

import math
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import diffrec_ml1m, test as test_config  # noqa: E402
from diffrec_jax import samplers, timesteps  # noqa: E402
from diffrec_jax.data import make_synthetic  # noqa: E402
from diffrec_jax.models import count_params, get_model  # noqa: E402
from diffrec_jax.models.diffrec import projected_reverse_applies  # noqa: E402
from diffrec_jax.models.mlp import DiffRecDenoiser, timestep_embedding  # noqa: E402


def test_ml1m_denoiser_has_the_reference_parameter_count():
    abstract = nnx.eval_shape(lambda: DiffRecDenoiser(2810, (200, 600), rngs=nnx.Rngs(0)))
    assert count_params(nnx.state(abstract, nnx.Param)) == 3_622_320


def test_timestep_embedding_cos_first_raw_steps():
    emb = np.asarray(timestep_embedding(jnp.array([0, 3]), 10))
    half = 5
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]), rtol=1e-6)
    np.testing.assert_allclose(emb[0], [1] * 5 + [0] * 5)
    assert timestep_embedding(jnp.array([1]), 7).shape == (1, 7)  # odd width: zero column


def test_init_statistics_match_the_reference():
    m = DiffRecDenoiser(2000, (300,), rngs=nnx.Rngs(0))
    k = np.asarray(m.in_layers[0].kernel[...])
    assert k.std() == pytest.approx(math.sqrt(2 / (2010 + 300)), rel=0.02)
    assert abs(k).max() > 3 * k.std()  # untruncated normal
    b = np.asarray(m.out_layers[-1].bias[...])
    assert b.std() == pytest.approx(0.001, rel=0.1)
    mz = DiffRecDenoiser(50, (8,), init="xavier", rngs=nnx.Rngs(0))
    assert np.all(np.asarray(mz.out_layers[-1].bias[...]) == 0)


def test_dropout_only_with_a_key():
    m = DiffRecDenoiser(40, (8,), rngs=nnx.Rngs(0))
    x = jnp.ones((3, 40))
    t = jnp.zeros((3,), jnp.int32)
    np.testing.assert_array_equal(m(x, t), m(x, t))
    assert not np.allclose(m(x, t, dropout_key=jax.random.key(1)), m(x, t))


def _tiny(**sampling):
    cfg = test_config.get_config()
    cfg.diffusion.steps = 8
    for k, v in sampling.items():
        cfg.sampling[k] = v
    data = make_synthetic(40, 60, mean_items_per_user=10, seed=0)
    return cfg, data


@pytest.mark.slow
def test_loss_shapes_history_and_padding():
    cfg, data = _tiny()
    model = get_model(cfg, data)
    _, params, hist = model.init(jax.random.key(0))
    x = jnp.asarray(data.train.to_dense()[:8])
    mask = jnp.array([True] * 6 + [False] * 2)
    loss, (hist2, _) = model.loss(params, hist, x, mask, jax.random.key(1))
    chex.assert_shape(loss, ())
    assert np.isfinite(float(loss))
    assert int(hist2.counts.sum()) == 6  # padded rows are not recorded
    loss_only6, _ = model.loss(params, hist, x[:6], mask[:6], jax.random.key(1))
    assert np.isfinite(float(loss_only6))


@pytest.mark.parametrize("steps", [0, 3])
def test_projected_reverse_equals_the_generic_sampler(steps):
    cfg, data = _tiny(noise_steps=steps)
    fast = get_model(cfg, data)
    cfg_slow, _ = _tiny(noise_steps=steps, fast=False)
    slow = get_model(cfg_slow, data)
    assert projected_reverse_applies(fast)
    _, params, hist = fast.init(jax.random.key(0))
    slow.init(jax.random.key(0))
    x = jnp.asarray(data.train.to_dense())
    keys = jax.random.split(jax.random.key(5), x.shape[0])
    a = fast.score(params, hist, x, keys)
    b = slow.score(params, hist, x, keys)
    chex.assert_shape(a, x.shape)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-5)
    # and the generic path is the core's diffrec_reverse
    den = lambda xx, t, c: slow._denoise_fn(params)(xx, t)  # noqa: E731
    c = samplers.diffrec_reverse(den, slow.schedule, x, keys, noise_steps=steps)
    np.testing.assert_allclose(np.asarray(b), np.asarray(c), atol=1e-6)


def test_projected_reverse_not_used_with_sampling_noise():
    cfg, data = _tiny(noise=True)
    assert not projected_reverse_applies(get_model(cfg, data))


def test_ml1m_config_is_the_reference_setting():
    c = diffrec_ml1m.get_config()
    assert (c.optim.lr, tuple(c.model.dims), c.diffusion.steps) == (1e-3, (200, 600), 40)
    assert (c.diffusion.noise_scale, c.diffusion.noise_min, c.diffusion.noise_max) == (0.005, 0.005, 0.01)
    assert c.diffusion.reweight and c.diffusion.mean_type == "x0" and c.sampling.noise_steps == 0
    assert c.train.batch_size == 400 and c.model.dropout == 0.5


def test_importance_history_is_part_of_the_state():
    cfg, data = _tiny()
    _, _, hist = get_model(cfg, data).init(jax.random.key(0))
    assert isinstance(hist, timesteps.LossHistory)
    chex.assert_shape(hist.values, (8, cfg.diffusion.history_size))
