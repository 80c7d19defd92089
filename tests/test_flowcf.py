"""FlowCF: the discrete interpolation's endpoints and marginal (the defining property), the prior is
item popularity, the loss is finite and decreases, shapes, the sampler equals the hand-written
discrete Euler loop and is deterministic, the core's flow_sample, and a tiny model end to end
through the trainer. A few seconds each."""

import sys
import types
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import test as test_config  # noqa: E402
from diffrec_jax import models, samplers  # noqa: E402
from diffrec_jax.data import CSR  # noqa: E402
from diffrec_jax.models import flowcf  # noqa: E402
from diffrec_jax import training  # noqa: E402
from diffrec_jax.data import load as load_data  # noqa: E402
from diffrec_jax.training import interactions  # noqa: E402
from diffrec_jax.training.steps import TrainState  # noqa: E402


def _dense(seed=0, n_users=40, n_items=12):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < 0.3).astype(np.float64)
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0
    return x


def _data(x):
    u, i = np.nonzero(x)
    return types.SimpleNamespace(
        train=CSR.from_pairs(u, i, x.shape[0], x.shape[1]), n_users=x.shape[0], n_items=x.shape[1]
    )


def _cfg(n_steps=5, steps=2, **fields):
    c = test_config.get_config()
    c.model.name = "flowcf"
    c.diffusion.steps = n_steps
    c.model.dims = (16, 16)
    c.model.dropout = 0.1
    c.sampling.steps = steps
    for k, v in fields.items():
        c.model[k] = v
    return c


def _model(x, **kw):
    c = _cfg(**kw)
    models.validate_config(c)
    return models.get_model(c, _data(x))


def test_prior_is_item_popularity():
    x = _dense()
    m = _model(x)
    np.testing.assert_allclose(np.asarray(m.prior), x.sum(0) / x.shape[0], rtol=1e-6)


def test_interpolation_endpoints_binary_and_marginal():
    """x_t at t=0 is the prior sample, at t=1 the data; x_t binary; P(x_t=1) = t x1 + (1-t) p."""
    key = jax.random.key(0)
    B, I = 4000, 6
    p = jnp.asarray([0.05, 0.2, 0.5, 0.7, 0.9, 0.3])
    x1 = (jax.random.uniform(jax.random.key(1), (B, I)) < 0.5).astype(jnp.float32)
    x0 = jax.random.bernoulli(jax.random.key(2), p, (B, I)).astype(jnp.float32)
    chex.assert_trees_all_equal(flowcf.discrete_interpolate(x1, x0, 0.0, key), x0)
    chex.assert_trees_all_equal(flowcf.discrete_interpolate(x1, x0, 1.0, key), x1)
    # through the model: fresh prior draws at t = 0, the data at t = 1, per-row t
    x = _dense(n_users=B, n_items=I)
    m = _model(x)
    xd = jnp.asarray(x, jnp.float32)
    chex.assert_trees_all_equal(m.interpolate(xd, jnp.ones((B,)), key), xd)
    x_at0 = m.interpolate(xd, jnp.zeros((B,)), key)
    np.testing.assert_allclose(np.asarray(x_at0.mean(0)), np.asarray(m.prior), atol=0.04)
    for t in (0.2, 0.5, 0.8):
        xt = m.interpolate(xd, jnp.full((B,), t), jax.random.fold_in(key, int(t * 10)))
        chex.assert_shape(xt, (B, I))
        assert set(np.unique(np.asarray(xt)).tolist()) <= {0.0, 1.0}
        # entry-wise marginal P(x_t = 1 | x1) = t x1 + (1 - t) p, checked on the two x1 classes
        want = t * xd + (1 - t) * m.prior[None, :]
        for v in (0.0, 1.0):
            sel = np.asarray(xd) == v
            got = np.asarray(xt)[sel].mean()
            np.testing.assert_allclose(got, np.asarray(want)[sel].mean(), atol=0.02)
    # per-row t broadcast: each row keeps its own share of x1
    t_B = jnp.where(jnp.arange(B) % 2 == 0, 0.0, 1.0)
    mixed = m.interpolate(xd, t_B, key)
    chex.assert_trees_all_equal(mixed[1::2], xd[1::2])


@pytest.mark.slow
def test_loss_finite_and_decreasing():
    x = _dense(n_users=64, n_items=20)
    m = _model(x)
    _, params, st = m.init(jax.random.key(0))
    xd = jnp.asarray(x, jnp.float32)
    mask = jnp.ones((xd.shape[0],), bool)
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, key):
        (l, _), g = jax.value_and_grad(m.loss, has_aux=True)(params, st, xd, mask, key)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, l

    eval_key = jax.random.key(7)
    loss = jax.jit(lambda p, x, mk: m.loss(p, st, x, mk, eval_key)[0])
    l0 = float(loss(params, xd, mask))
    for i in range(60):
        params, opt, l = step(params, opt, jax.random.key(i))
        assert np.isfinite(float(l))
    l1 = float(loss(params, xd, mask))
    assert np.isfinite(l0) and l1 < 0.7 * l0
    # padding rows do not count
    half = mask.at[32:].set(False)
    np.testing.assert_allclose(
        float(loss(params, xd.at[32:].set(1.0), half)), float(loss(params, xd.at[32:].set(0.0), half)),
        rtol=1e-6)


def test_shapes_and_param_count():
    x = _dense(n_items=12)
    m = _model(x, dims=(8, 6))
    _, params, st = m.init(jax.random.key(0))
    # (12+10)*8+8 + 8*6+6 + 6*12+12 + emb 10*10+10
    assert models.count_params(params) == 22 * 8 + 8 + 8 * 6 + 6 + 6 * 12 + 12 + 110
    xb = jnp.asarray(x[:5], jnp.float32)
    s = m.score(params, st, xb, jax.random.key(1))
    chex.assert_shape(s, (5, 12))
    chex.assert_tree_all_finite(s)
    xf, x1 = m.sample(params, xb)
    chex.assert_shape((xf, x1), ((5, 12), (5, 12)))


def test_sampler_equals_hand_loop_keeps_history_and_is_deterministic():
    x = _dense()
    N, s = 6, 3
    m = _model(x, n_steps=N, steps=s)
    _, params, st = m.init(jax.random.key(3))
    xb = jnp.asarray(x[:8], jnp.float32)
    net = m._net(params)
    # hand-written loop (Python, the spec's update)
    xt = xb
    for k in range(N - s, N):
        t = k / N
        x1_hat = net(xt, jnp.full((8,), t, jnp.float32))
        if k == N - 1:
            break
        p = xt + (x1_hat - xt) / (1 - t) * (1.0 / N)
        xt = jnp.maximum((p > 0.5).astype(jnp.float32), xb)
    xf, got = m.sample(params, xb)
    np.testing.assert_allclose(np.asarray(got), np.asarray(x1_hat), rtol=1e-5, atol=1e-6)
    assert set(np.unique(np.asarray(xf)).tolist()) <= {0.0, 1.0}
    assert np.all(np.asarray(xf) >= np.asarray(xb))  # observed interactions are kept
    a = m.score(params, st, xb, jax.random.key(0))
    b = m.score(params, st, xb, jax.random.key(0))
    c = m.score(params, st, xb, jax.random.key(1))
    chex.assert_trees_all_equal(a, b)
    chex.assert_trees_all_equal(a, c)  # no randomness in the sampler at all
    # one step: the network's prediction at t = (N - 1) / N
    m1 = _model(x, n_steps=N, steps=1)
    m1.graphdef = m.graphdef
    np.testing.assert_allclose(
        np.asarray(m1.score(params, st, xb)),
        np.asarray(net(xb, jnp.full((8,), (N - 1) / N, jnp.float32))), rtol=1e-5, atol=1e-6)


def test_flow_sample_core():
    """Unprojected: a perfect x1-predictor reaches x1 from any grid; the last prediction is returned."""
    x1 = jnp.asarray([[1.0, -2.0, 0.5]])
    x0 = jnp.zeros_like(x1)
    xf, pred = samplers.flow_sample(lambda x, t: x1, x0, np.linspace(0.3, 1.0, 4))
    np.testing.assert_allclose(np.asarray(xf), np.asarray(x1), rtol=1e-6)
    chex.assert_trees_all_equal(pred, x1)
    # along the way the states are the straight line x_t = x0 + (t - t0)/(1 - t0) (x1 - x0)
    xm, _ = samplers.flow_sample(lambda x, t: x1, x0, np.asarray([0.0, 0.5]))
    np.testing.assert_allclose(np.asarray(xm), 0.5 * np.asarray(x1), rtol=1e-6)
    with pytest.raises(ValueError, match="increasing"):
        samplers.flow_sample(lambda x, t: x, x0, [0.5, 0.2])
    with pytest.raises(ValueError, match="< 1"):
        samplers.flow_sample(lambda x, t: x, x0, [0.5, 1.0, 1.5])
    # it traces under jit as one scan
    f = jax.jit(lambda x: samplers.flow_sample(lambda y, t: 2 * y, x, np.linspace(0, 0.5, 3))[0])
    chex.assert_shape(f(jnp.ones((2, 3))), (2, 3))


def test_validate_config_names_fields():
    x = _dense()
    for kw, field in [({"n_steps": 0}, "diffusion.steps"), ({"steps": 7, "n_steps": 5}, "sampling.steps"),
                      ({"steps": 0}, "sampling.steps"), ({"dropout": 1.0}, "dropout"),
                      ({"dims": ()}, "dims")]:
        with pytest.raises(ValueError, match=field):
            _model(x, **kw)


@pytest.mark.slow
def test_flowcf_end_to_end(tmp_path):
    """The tiny test config through train_and_evaluate; beats a random scorer on test Recall@10."""
    c = _cfg(n_steps=5, steps=2)
    c.optim.lr = 1e-2
    c.train.num_epochs, c.train.eval_every_epochs = 4, 4  # one evaluation: one compile
    res = training.train_and_evaluate(c, str(tmp_path))
    assert (tmp_path / "results.json").exists()
    assert np.isfinite(res["test"]["recall@10"])
    data = load_data(c.data)
    rnd = types.SimpleNamespace(score=lambda p, s, x, k: jax.random.uniform(jax.random.key(0), x.shape))
    st = TrainState(jnp.zeros((), jnp.int32), {}, None, {})
    rnd_res = interactions.evaluate(rnd, st, interactions.DeviceData.from_data(data), data.n_users, c.eval, jax.random.key(0))
    assert res["test"]["recall@10"] > rnd_res["test"]["recall@10"]
