"""Tests of :mod:`diffrec_jax.diffusion`: forward process, posterior, parameterisations and losses.

Closed-form quantities are compared with NumPy float64 computations written here from the
equations of Ho et al. (2020) and of the DiffRec specification (sections 3 and 5).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrec_jax import diffusion, schedules

B, D = 5, 3


def _f64(schedule):
    """The schedule's fields as float64 NumPy arrays."""
    return {k: np.asarray(v, np.float64) for k, v in schedule._asdict().items()}


@pytest.fixture
def sched():
    return schedules.make_schedule("cosine", 20)


@pytest.fixture
def batch(np_rng):
    x0 = np_rng.normal(size=(B, D)).astype(np.float32)
    noise = np_rng.normal(size=(B, D)).astype(np.float32)
    t = np.array([0, 3, 7, 19, 12], dtype=np.int32)
    return x0, noise, t


# ----------------------------------------------------------------------------------------------
# Forward process and posterior
# ----------------------------------------------------------------------------------------------


def test_extract_shape_and_values(sched):
    t = jnp.array([0, 4, 19])
    out = diffusion.extract(sched.betas, t, 4)
    chex.assert_shape(out, (3, 1, 1, 1))
    np.testing.assert_array_equal(np.asarray(out).ravel(), np.asarray(sched.betas)[[0, 4, 19]])


def test_q_sample_matches_numpy(sched, batch):
    x0, noise, t = batch
    a = _f64(sched)
    want = np.sqrt(a["alphas_cumprod"][t])[:, None] * x0 + np.sqrt(
        1.0 - a["alphas_cumprod"][t]
    )[:, None] * noise
    got = diffusion.q_sample(sched, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
    chex.assert_shape(got, (B, D))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_q_sample_broadcasts_over_trailing_axes(sched, np_rng):
    x0 = np_rng.normal(size=(2, 3, 4)).astype(np.float32)
    noise = np_rng.normal(size=(2, 3, 4)).astype(np.float32)
    t = np.array([1, 18], np.int32)
    got = diffusion.q_sample(sched, x0, t, noise)
    chex.assert_shape(got, (2, 3, 4))
    a = _f64(sched)
    want = (
        np.sqrt(a["alphas_cumprod"][t])[:, None, None] * x0
        + np.sqrt(1.0 - a["alphas_cumprod"][t])[:, None, None] * noise
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_q_sample_statistics(sched):
    """Empirical mean and variance of ``q(x_t | x_0)`` for one fixed ``x_0``."""
    n = 20000
    t = jnp.full((n,), 10, jnp.int32)
    x0 = jnp.full((n, 1), 2.0)
    noise = jax.random.normal(jax.random.PRNGKey(3), (n, 1))
    xt = np.asarray(diffusion.q_sample(sched, x0, t, noise))
    ab = float(sched.alphas_cumprod[10])
    assert abs(xt.mean() - 2.0 * np.sqrt(ab)) < 0.03
    assert abs(xt.var() - (1.0 - ab)) < 0.03


def test_q_posterior_matches_numpy(sched, batch):
    x0, noise, t = batch
    a = _f64(sched)
    xt = np.sqrt(a["alphas_cumprod"][t])[:, None] * x0 + np.sqrt(
        1.0 - a["alphas_cumprod"][t]
    )[:, None] * noise
    ab, abp, b = a["alphas_cumprod"][t], a["alphas_cumprod_prev"][t], a["betas"][t]
    c1 = b * np.sqrt(abp) / (1.0 - ab)
    c2 = (1.0 - abp) * np.sqrt(1.0 - b) / (1.0 - ab)
    var = b * (1.0 - abp) / (1.0 - ab)
    mean, v, logv = diffusion.q_posterior(sched, x0, xt.astype(np.float32), t)
    chex.assert_shape(mean, (B, D))
    chex.assert_shape([v, logv], (B, 1))
    np.testing.assert_allclose(mean, c1[:, None] * x0 + c2[:, None] * xt, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(v)[:, 0], var, rtol=1e-5, atol=1e-12)
    # clipped log-variance: t = 0 borrows the t = 1 value
    all_var = a["betas"] * (1.0 - a["alphas_cumprod_prev"]) / (1.0 - a["alphas_cumprod"])
    want_log = np.log(np.where(t == 0, all_var[1], all_var[t]))
    np.testing.assert_allclose(np.asarray(logv)[:, 0], want_log, rtol=1e-5)


def test_q_posterior_at_t0_returns_x0(sched, batch):
    x0, noise, _ = batch
    t = np.zeros((B,), np.int32)
    mean, var, _ = diffusion.q_posterior(sched, x0, noise, t)
    np.testing.assert_allclose(mean, x0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(var), 0.0)


# ----------------------------------------------------------------------------------------------
# Parameterisations
# ----------------------------------------------------------------------------------------------


def test_parameterisation_round_trips(sched, batch):
    x0, eps, t = batch
    xt = diffusion.q_sample(sched, x0, t, eps)
    v = diffusion.v_from_x0_eps(sched, x0, t, eps)
    tol = dict(atol=2e-4, rtol=1e-4)
    chex.assert_trees_all_close(diffusion.x0_from_eps(sched, xt, t, eps), x0, **tol)
    chex.assert_trees_all_close(diffusion.eps_from_x0(sched, xt, t, x0), eps, **tol)
    chex.assert_trees_all_close(diffusion.x0_from_v(sched, xt, t, v), x0, **tol)
    chex.assert_trees_all_close(diffusion.eps_from_v(sched, xt, t, v), eps, **tol)
    # v against its definition in NumPy
    a = _f64(sched)
    want_v = np.sqrt(a["alphas_cumprod"][t])[:, None] * eps - np.sqrt(
        1.0 - a["alphas_cumprod"][t]
    )[:, None] * x0
    np.testing.assert_allclose(v, want_v, rtol=1e-5, atol=1e-6)
    # every parameterisation maps to the same x0 and eps
    outs = {"x0": x0, "eps": eps, "v": v}
    for mean_type, out in outs.items():
        chex.assert_trees_all_close(
            diffusion.predict_x0(sched, xt, t, out, mean_type), x0, **tol
        )
        chex.assert_trees_all_close(
            diffusion.predict_eps(sched, xt, t, out, mean_type), eps, **tol
        )
        # from_eps is the inverse of predict_eps
        chex.assert_trees_all_close(diffusion.from_eps(sched, xt, t, eps, mean_type), out, **tol)


@pytest.mark.parametrize("fn", [diffusion.predict_x0, diffusion.predict_eps, diffusion.from_eps])
def test_unknown_mean_type_raises(sched, batch, fn):
    x0, eps, t = batch
    with pytest.raises(ValueError):
        fn(sched, x0, t, eps, "score")


@pytest.mark.parametrize("mean_type", ["x0", "eps", "v"])
def test_p_mean_variance_uses_posterior_of_x0_hat(sched, batch, mean_type):
    x0, eps, t = batch
    xt = diffusion.q_sample(sched, x0, t, eps)
    out = {"x0": x0, "eps": eps, "v": diffusion.v_from_x0_eps(sched, x0, t, eps)}[mean_type]
    mean, log_var, x0_hat = diffusion.p_mean_variance(sched, out, xt, t, mean_type)
    want_mean, _, want_log = diffusion.q_posterior(sched, x0, xt, t)
    chex.assert_trees_all_close(x0_hat, x0, atol=2e-4, rtol=1e-4)
    chex.assert_trees_all_close(mean, want_mean, atol=2e-4, rtol=1e-4)
    chex.assert_trees_all_equal(log_var, want_log)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reweight", [True, False])
@pytest.mark.parametrize("mean_type", ["x0", "eps", "v"])
@pytest.mark.parametrize("shape", [(B, D), (B, 2, 3)])
def test_per_example_loss_shapes(sched, np_rng, mean_type, reweight, shape):
    x0, noise, out = (np_rng.normal(size=shape).astype(np.float32) for _ in range(3))
    t = np.array([0, 3, 7, 19, 12], np.int32)
    xt = diffusion.q_sample(sched, x0, t, noise)
    loss = diffusion.per_example_loss(
        sched, out, x0, xt, t, noise, mean_type=mean_type, reweight=reweight
    )
    chex.assert_shape(loss, (B,))
    chex.assert_tree_all_finite(loss)
    assert np.all(np.asarray(loss) >= 0)


@pytest.mark.parametrize("mean_type", ["x0", "eps", "v"])
def test_per_example_loss_values(sched, batch, np_rng, mean_type):
    x0, noise, t = batch
    out = np_rng.normal(size=(B, D)).astype(np.float32)
    xt = np.asarray(diffusion.q_sample(sched, x0, t, noise))
    a = _f64(sched)
    ab = a["alphas_cumprod"][t][:, None]
    target = {
        "x0": x0,
        "eps": noise,
        "v": np.sqrt(ab) * noise - np.sqrt(1.0 - ab) * x0,
    }[mean_type]
    mse = np.mean((target - out) ** 2, axis=1)
    w = np.asarray(diffusion.loss_weights(sched, mean_type, True), np.float64)[t]
    if mean_type == "eps":
        # t = 0: half the x0 reconstruction error, weight 1 (spec section 5.1)
        x0_hat = np.sqrt(1.0 / ab) * xt - np.sqrt(1.0 / ab - 1.0) * out
        mse = np.where(t == 0, np.mean((x0 - x0_hat) ** 2, axis=1) / 2.0, mse)
    got = diffusion.per_example_loss(
        sched, out, x0, xt, t, noise, mean_type=mean_type, reweight=True
    )
    np.testing.assert_allclose(got, w * mse, rtol=2e-4)
    unweighted = diffusion.per_example_loss(
        sched, out, x0, xt, t, noise, mean_type=mean_type, reweight=False
    )
    np.testing.assert_allclose(unweighted, np.mean((target - out) ** 2, axis=1), rtol=1e-5)


def test_eps_loss_t0_special_case(sched, np_rng):
    """For eps + reweight, only the t = 0 examples use the halved x0 error, with weight 1."""
    x0 = np_rng.normal(size=(4, D)).astype(np.float32)
    noise = np_rng.normal(size=(4, D)).astype(np.float32)
    t = np.array([0, 0, 5, 5], np.int32)
    xt = diffusion.q_sample(sched, x0, t, noise)
    # the exact noise: zero loss everywhere
    exact = diffusion.per_example_loss(
        sched, noise, x0, xt, t, noise, mean_type="eps", reweight=True
    )
    np.testing.assert_allclose(exact, 0.0, atol=1e-6)
    # a noise error of 1 in every feature
    out = noise + 1.0
    loss = np.asarray(
        diffusion.per_example_loss(sched, out, x0, xt, t, noise, mean_type="eps", reweight=True)
    )
    # at t = 0 the x0 error is sqrt(1/abar_0 - 1) * 1, halved and squared
    r0 = float(sched.sqrt_recipm1_alphas_cumprod[0])
    np.testing.assert_allclose(loss[:2], r0**2 / 2.0, rtol=1e-4)
    w5 = float(diffusion.loss_weights(sched, "eps", True)[5])
    np.testing.assert_allclose(loss[2:], w5, rtol=1e-5)
    # without reweighting, t = 0 is the plain eps MSE
    plain = diffusion.per_example_loss(
        sched, out, x0, xt, t, noise, mean_type="eps", reweight=False
    )
    np.testing.assert_allclose(plain, 1.0, rtol=1e-6)


def test_per_example_loss_rejects_unknown_mean_type(sched, batch):
    x0, noise, t = batch
    with pytest.raises(ValueError):
        diffusion.per_example_loss(sched, x0, x0, x0, t, noise, mean_type="score", reweight=True)
    with pytest.raises(ValueError):
        diffusion.get_loss_fn(sched, mean_type="score")


def _tiny_denoiser(params, x, t, cond):
    """A linear denoiser with a time bias, shared by the loss tests."""
    return x @ params["w"] + params["b"] * (t[:, None].astype(jnp.float32) + 1.0)


@pytest.mark.parametrize("mean_type", ["x0", "eps", "v"])
@pytest.mark.parametrize("reweight", [True, False])
def test_get_loss_fn_finite_and_differentiable(mean_type, reweight):
    sched = schedules.make_schedule(
        "diffrec", 40, noise_scale=0.005, noise_min=0.005, noise_max=0.01
    )
    loss_fn = diffusion.get_loss_fn(sched, mean_type=mean_type, reweight=reweight)
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(7), 3)
    x0 = (jax.random.uniform(k0, (B, 6)) < 0.3).astype(jnp.float32)
    t = jax.random.randint(k1, (B,), 0, 40)
    params = {"w": 0.1 * jnp.eye(6), "b": jnp.full((6,), 0.01)}

    def mean_loss(p):
        loss_B, aux = loss_fn(lambda x, tt, c: _tiny_denoiser(p, x, tt, c), x0, t, k2)
        return loss_B.mean(), (loss_B, aux)

    (total, (loss_B, aux)), grads = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))(params)
    chex.assert_shape(loss_B, (B,))
    chex.assert_shape([aux["x_t"], aux["out"]], (B, 6))
    chex.assert_tree_all_finite((loss_B, grads))
    assert float(total) > 0
    # x_t is q_sample with noise drawn from the key
    noise = jax.random.normal(k2, x0.shape, x0.dtype)
    chex.assert_trees_all_close(aux["x_t"], diffusion.q_sample(sched, x0, t, noise), atol=1e-6)


@pytest.mark.parametrize("mean_type", ["x0", "eps", "v"])
def test_get_loss_fn_perfect_denoiser_has_zero_loss(sched, mean_type):
    """A denoiser that knows the clean input returns the exact target: the loss is zero."""
    x0 = jax.random.normal(jax.random.PRNGKey(1), (B, D))
    t = jnp.array([0, 1, 5, 10, 19])

    def oracle(x_t, t_B, cond):
        eps = diffusion.eps_from_x0(sched, x_t, t_B, x0)
        return diffusion.from_eps(sched, x_t, t_B, eps, mean_type) if mean_type != "x0" else x0

    loss_fn = diffusion.get_loss_fn(sched, mean_type=mean_type, reweight=False)
    loss_B, _ = loss_fn(oracle, x0, t, jax.random.PRNGKey(2))
    np.testing.assert_allclose(loss_B, 0.0, atol=1e-5)


def test_get_loss_fn_passes_cond():
    sched = schedules.make_schedule("linear", 10)
    seen = {}

    def den(x, t, cond):
        seen["cond"] = cond
        return x + cond

    loss_fn = diffusion.get_loss_fn(sched)
    cond = jnp.ones((2, 3))
    loss_fn(den, jnp.zeros((2, 3)), jnp.array([1, 2]), jax.random.PRNGKey(0), cond)
    assert seen["cond"] is cond


# ----------------------------------------------------------------------------------------------
# The same small pure functions with and without jit (chex variants)
# ----------------------------------------------------------------------------------------------


class DiffusionVariantsTest(chex.TestCase):
    """The functional core gives the same numbers eagerly and under ``jax.jit``."""

    def setUp(self):
        super().setUp()
        self.sched = schedules.make_schedule("linear", 30)
        rng = np.random.default_rng(0)
        self.x0 = rng.normal(size=(4, 3)).astype(np.float32)
        self.noise = rng.normal(size=(4, 3)).astype(np.float32)
        self.t = np.array([0, 1, 15, 29], np.int32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_q_sample(self):
        q = self.variant(lambda x0, t, n: diffusion.q_sample(self.sched, x0, t, n))
        got = q(self.x0, self.t, self.noise)
        chex.assert_shape(got, (4, 3))
        ab = np.asarray(self.sched.alphas_cumprod, np.float64)[self.t][:, None]
        want = np.sqrt(ab) * self.x0 + np.sqrt(1.0 - ab) * self.noise
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_eps_round_trip(self):
        @self.variant
        def round_trip(x0, t, n):
            xt = diffusion.q_sample(self.sched, x0, t, n)
            return diffusion.x0_from_eps(self.sched, xt, t, n)

        chex.assert_trees_all_close(
            round_trip(self.x0, self.t, self.noise), self.x0, atol=1e-4, rtol=1e-4
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_per_example_loss(self):
        loss = self.variant(
            lambda out, x0, xt, t, n: diffusion.per_example_loss(
                self.sched, out, x0, xt, t, n, mean_type="eps", reweight=True
            )
        )
        xt = diffusion.q_sample(self.sched, self.x0, self.t, self.noise)
        got = loss(self.noise * 0.5, self.x0, xt, self.t, self.noise)
        chex.assert_shape(got, (4,))
        chex.assert_tree_all_finite(got)
        eager = diffusion.per_example_loss(
            self.sched, self.noise * 0.5, self.x0, xt, self.t, self.noise,
            mean_type="eps", reweight=True,
        )
        chex.assert_trees_all_close(got, eager, rtol=1e-5)
