"""Tests of :mod:`diffrec_jax.samplers`.

* every sampler: output shape, a single trace under ``jax.jit`` and, for the stochastic ones,
  batch == ``vmap`` over single examples with per-example keys;
* a 1-D Gaussian toy problem, ``x0 ~ N(1.5, 0.5^2)``, whose exact denoiser (VP) and score (VE)
  are known in closed form, so every sampler must land on the data distribution;
* guidance combinators, DiffRec's reverse process against a hand-written loop of the spec's
  recurrence (section 6), and :func:`spaced_timesteps`.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrec_jax import diffusion, samplers, schedules

B, D = 3, 4
T = 6
SCHED = schedules.make_schedule("linear", T, beta_start=0.01, beta_end=0.3)
VE = schedules.make_ve_schedule(5.0, 0.1, 4)


def toy_denoiser(x, t_B, cond=None):
    """A small, row-wise, non-linear denoiser that depends on the step."""
    tt = t_B[:, None].astype(x.dtype)
    return 0.8 * x + 0.05 * (tt + 1.0) * jnp.tanh(x)


def cond_denoiser(x, t_B, cond):
    """A conditional denoiser, linear in the condition."""
    tt = t_B[:, None].astype(x.dtype)
    return 0.5 * x + cond * (tt + 1.0) / 10.0 + 0.1 * jnp.tanh(x * cond)


def _gaussian_log_prob(center):
    return lambda x, t_B, cond: -0.5 * jnp.sum(jnp.square(x - center), axis=-1)


# Each entry: fn(x, key, extra) -> sample, where `extra` is a traced scalar the sampler may use
# (guidance scale, DDIM eta) so that changing it must not retrace.
SAMPLERS = {
    "ancestral": lambda x, k, e: samplers.ancestral_sample(toy_denoiser, SCHED, x, k),
    "ancestral_x0_nonoise": lambda x, k, e: samplers.ancestral_sample(
        toy_denoiser, SCHED, x, mean_type="x0", noise=False
    ),
    "ancestral_v_start": lambda x, k, e: samplers.ancestral_sample(
        toy_denoiser, SCHED, x, k, mean_type="v", start_step=3
    ),
    "diffrec_reverse_S0": lambda x, k, e: samplers.diffrec_reverse(toy_denoiser, SCHED, x),
    "diffrec_reverse_S0_noise": lambda x, k, e: samplers.diffrec_reverse(
        toy_denoiser, SCHED, x, k, sampling_noise=True
    ),
    "diffrec_reverse_S3": lambda x, k, e: samplers.diffrec_reverse(
        toy_denoiser, SCHED, x, k, noise_steps=3
    ),
    "diffrec_reverse_S3_noise": lambda x, k, e: samplers.diffrec_reverse(
        toy_denoiser, SCHED, x, k, noise_steps=3, sampling_noise=True
    ),
    "iterate_denoiser": lambda x, k, e: samplers.iterate_denoiser(toy_denoiser, x, T),
    "ddim_eta0": lambda x, k, e: samplers.ddim_sample(toy_denoiser, SCHED, x, num_steps=3),
    "ddim_eta_traced": lambda x, k, e: samplers.ddim_sample(
        toy_denoiser, SCHED, x, k, num_steps=4, eta=e
    ),
    "annealed_langevin": lambda x, k, e: samplers.annealed_langevin(
        toy_denoiser, VE, x, k, n_steps_each=3, step_lr=1e-3, mean_type="eps"
    ),
    "ode_vp_euler": lambda x, k, e: samplers.probability_flow_ode(
        toy_denoiser, SCHED, x, method="euler"
    ),
    "ode_vp_heun": lambda x, k, e: samplers.probability_flow_ode(
        toy_denoiser, SCHED, x, method="heun", num_steps=4, mean_type="x0"
    ),
    "ode_ve_euler": lambda x, k, e: samplers.probability_flow_ode(
        toy_denoiser, VE, x, method="euler", mean_type="x0"
    ),
    "ode_ve_heun": lambda x, k, e: samplers.probability_flow_ode(
        toy_denoiser, VE, x, method="heun", mean_type="score"
    ),
    "classifier_free_guidance": lambda x, k, e: samplers.ddim_sample(
        samplers.classifier_free_guidance(cond_denoiser, e, jnp.zeros((D,))),
        SCHED,
        x,
        num_steps=3,
        cond=jnp.ones_like(x),
    ),
    "classifier_guidance": lambda x, k, e: samplers.ancestral_sample(
        samplers.classifier_guidance(toy_denoiser, _gaussian_log_prob(1.0), SCHED, scale=2.0),
        SCHED,
        x,
        k,
    ),
}

DETERMINISTIC = {
    "ancestral_x0_nonoise",
    "diffrec_reverse_S0",
    "iterate_denoiser",
    "ddim_eta0",
    "ode_vp_euler",
    "ode_vp_heun",
    "ode_ve_euler",
    "ode_ve_heun",
    "classifier_free_guidance",
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_shape_and_single_trace(name):
    """Shape is kept; a jitted sampler traces once for two calls with new values of one shape."""
    fn = SAMPLERS[name]
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(x, key, extra):
        return fn(x, key, extra)

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x1 = jax.random.normal(k1, (B, D))
    x2 = jax.random.normal(k2, (B, D))
    out1 = run(x1, k1, jnp.float32(0.5))
    out2 = run(x2, k3, jnp.float32(1.5))
    chex.assert_shape([out1, out2], (B, D))
    chex.assert_tree_all_finite((out1, out2))
    assert not np.allclose(np.asarray(out1), np.asarray(out2))
    if name in DETERMINISTIC:
        # same input, another key (and the same extra): same output
        chex.assert_trees_all_close(run(x1, k2, jnp.float32(0.5)), out1, atol=1e-6)
    chex.clear_trace_counter()


def test_samplers_keep_trailing_axes():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 2))
    key = jax.random.PRNGKey(2)
    den = lambda x, t, c: 0.9 * x  # noqa: E731
    chex.assert_shape(samplers.ancestral_sample(den, SCHED, x, key), (2, 3, 2))
    chex.assert_shape(samplers.ddim_sample(den, SCHED, x, key, eta=1.0), (2, 3, 2))
    chex.assert_shape(samplers.probability_flow_ode(den, SCHED, x), (2, 3, 2))


def test_typed_and_raw_keys_agree():
    x = jax.random.normal(jax.random.PRNGKey(1), (B, D))
    raw = samplers.ancestral_sample(toy_denoiser, SCHED, x, jax.random.PRNGKey(4))
    typed = samplers.ancestral_sample(toy_denoiser, SCHED, x, jax.random.key(4))
    chex.assert_trees_all_close(raw, typed, atol=1e-6)
    assert samplers.batch_keys(jax.random.key(0), 5).shape == (5,)
    assert samplers.batch_keys(jax.random.PRNGKey(0), 5).shape == (5, 2)
    with pytest.raises(ValueError):
        samplers.batch_keys(jax.random.split(jax.random.PRNGKey(0), 4), 5)


# ----------------------------------------------------------------------------------------------
# Batch == vmap with per-example keys
# ----------------------------------------------------------------------------------------------

STOCHASTIC = {
    "ancestral": lambda x, k: samplers.ancestral_sample(toy_denoiser, SCHED, x, k),
    "ddim_eta0.5": lambda x, k: samplers.ddim_sample(
        toy_denoiser, SCHED, x, k, num_steps=4, eta=0.5
    ),
    "diffrec_reverse": lambda x, k: samplers.diffrec_reverse(
        toy_denoiser, SCHED, x, k, noise_steps=3, sampling_noise=True
    ),
    "annealed_langevin": lambda x, k: samplers.annealed_langevin(
        toy_denoiser, VE, x, k, n_steps_each=3, step_lr=1e-3, mean_type="eps"
    ),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_batch_equals_vmap(name):
    fn = STOCHASTIC[name]
    kx, kk = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(kx, (5, D))
    keys = jax.random.split(kk, 5)
    batched = jax.jit(fn)(x, keys)
    single = jax.jit(jax.vmap(lambda xi, ki: fn(xi[None], ki[None])[0]))(x, keys)
    chex.assert_trees_all_close(batched, single, atol=1e-5)
    # and a sub-batch gives the same rows as the full batch
    chex.assert_trees_all_close(jax.jit(fn)(x[1:3], keys[1:3]), batched[1:3], atol=1e-5)
    # a single key is split into per-example keys
    chex.assert_trees_all_close(
        jax.jit(fn)(x, kk), jax.jit(fn)(x, jax.random.split(kk, 5)), atol=1e-6
    )


@pytest.mark.parametrize("name", ["ancestral", "ddim_eta0.5"])
def test_sharded_batch_equals_single_device(name):
    """Sharding the batch over 4 (host) devices does not change the samples."""
    if jax.device_count() < 4:
        pytest.skip("needs the 4 host devices that conftest.py asks for")
    fn = STOCHASTIC[name]
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    x = jax.random.normal(jax.random.PRNGKey(8), (8, D))
    keys = jax.random.split(jax.random.PRNGKey(9), 8)
    want = jax.jit(fn)(x, keys)
    got = jax.jit(fn)(jax.device_put(x, sharding), jax.device_put(keys, sharding))
    chex.assert_trees_all_close(got, want, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Toy Gaussian: x0 ~ N(MU, SD^2) in 1-D, exact denoiser / score
# ----------------------------------------------------------------------------------------------

MU, SD = 1.5, 0.5
N_TOY = 20000


@pytest.fixture(scope="module")
def vp_toy():
    sched = schedules.make_schedule("linear", 1000)

    def exact_x0(x, t_B, cond=None):
        ab = sched.alphas_cumprod[t_B][:, None]
        return MU + jnp.sqrt(ab) * SD**2 / (ab * SD**2 + 1.0 - ab) * (x - jnp.sqrt(ab) * MU)

    ab_T = float(sched.alphas_cumprod[-1])
    z = jax.random.normal(jax.random.PRNGKey(100), (N_TOY, 1))
    x_T = np.sqrt(ab_T) * MU + np.sqrt(ab_T * SD**2 + 1.0 - ab_T) * z
    return sched, exact_x0, x_T


@pytest.fixture(scope="module")
def ve_toy():
    ve = schedules.make_ve_schedule(20.0, 0.01, 30)

    def exact_score(x, i_B, cond=None):
        sigma = ve.sigmas[i_B][:, None]
        return -(x - MU) / (SD**2 + sigma**2)

    z = jax.random.normal(jax.random.PRNGKey(200), (N_TOY, 1))
    x = MU + np.sqrt(SD**2 + 20.0**2) * z
    return ve, exact_score, x


def _assert_moments(x, mean_tol, std_tol):
    x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    assert abs(x.mean() - MU) < mean_tol, (x.mean(), x.std())
    assert abs(x.std() - SD) < std_tol, (x.mean(), x.std())


def test_toy_ancestral_equals_ddim_eta1(vp_toy):
    """DDIM with eta=1 over all steps is DDPM ancestral sampling; both sample N(1.5, 0.5^2)."""
    sched, den, x_T = vp_toy
    key = jax.random.PRNGKey(7)
    anc = jax.jit(lambda x, k: samplers.ancestral_sample(den, sched, x, k, mean_type="x0"))(
        x_T, key
    )
    ddim = jax.jit(
        lambda x, k: samplers.ddim_sample(den, sched, x, k, eta=1.0, mean_type="x0")
    )(x_T, key)
    chex.assert_trees_all_close(anc, ddim, atol=1e-3)
    _assert_moments(anc, 0.02, 0.02)  # measured: mean 1.496, std 0.493
    _assert_moments(ddim, 0.02, 0.02)


def test_toy_deterministic_vp_samplers(vp_toy):
    """DDIM (eta=0, 50 steps) and the PF-ODE (Heun, 20 steps) map N(., .) onto the data."""
    sched, den, x_T = vp_toy
    ddim = jax.jit(
        lambda x: samplers.ddim_sample(den, sched, x, num_steps=50, mean_type="x0")
    )(x_T)
    # measured: mean 1.497, std 0.476 (50 DDIM steps shrink the spread a little)
    _assert_moments(ddim, 0.02, 0.04)
    heun = jax.jit(
        lambda x: samplers.probability_flow_ode(
            den, sched, x, method="heun", num_steps=20, mean_type="x0"
        )
    )(x_T)
    _assert_moments(heun, 0.02, 0.03)  # measured: mean 1.496, std 0.514 (Euler: 0.434)
    # the Euler step of the VP probability-flow ODE is DDIM with eta = 0
    euler = jax.jit(
        lambda x: samplers.probability_flow_ode(
            den, sched, x, method="euler", num_steps=50, mean_type="x0"
        )
    )(x_T)
    chex.assert_trees_all_close(euler, ddim, atol=1e-4)


def test_toy_ve_samplers(ve_toy):
    ve, score, x = ve_toy
    key = jax.random.PRNGKey(9)
    lang = jax.jit(lambda x, k: samplers.annealed_langevin(score, ve, x, k))(x, key)
    _assert_moments(lang, 0.02, 0.02)  # measured: mean 1.505, std 0.501
    ode = jax.jit(
        lambda x: samplers.probability_flow_ode(score, ve, x, method="heun", mean_type="score")
    )(x)
    _assert_moments(ode, 0.02, 0.03)  # measured: mean 1.508, std 0.505 (Euler: 0.469)


def test_toy_classifier_guidance_moves_the_mean(vp_toy):
    """A Gaussian classifier centred above (below) the data pulls the samples up (down)."""
    sched, den, x_T = vp_toy
    x_T = x_T[:2000]

    def sample(center):
        guided = samplers.classifier_guidance(
            den, _gaussian_log_prob(center), sched, scale=1.0, mean_type="x0"
        )
        return samplers.ddim_sample(guided, sched, x_T, num_steps=25, mean_type="x0")

    run = jax.jit(sample)
    plain = float(
        jnp.mean(samplers.ddim_sample(den, sched, x_T, num_steps=25, mean_type="x0"))
    )
    up, down = float(jnp.mean(run(3.0))), float(jnp.mean(run(0.0)))
    # measured: plain 1.49, up 2.67, down 1.01 (the classifier reads x_t, hence the asymmetry)
    assert up > plain + 0.2, (plain, up)
    assert down < plain - 0.2, (plain, down)


# ----------------------------------------------------------------------------------------------
# Guidance combinators
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def guidance_inputs():
    kx, kc = jax.random.split(jax.random.PRNGKey(5))
    x = jax.random.normal(kx, (B, D))
    cond = jax.random.normal(kc, (B, D))
    t = jnp.array([0, 2, 5])
    return x, cond, t


def test_classifier_free_guidance_values(guidance_inputs):
    x, cond, t = guidance_inputs
    null = jnp.zeros((D,))
    f_c = cond_denoiser(x, t, cond)
    f_0 = cond_denoiser(x, t, jnp.zeros_like(cond))
    w0 = samplers.classifier_free_guidance(cond_denoiser, 0.0, null)(x, t, cond)
    chex.assert_trees_all_close(w0, f_c, atol=1e-6)
    w1 = samplers.classifier_free_guidance(cond_denoiser, 1.0, null)(x, t, cond)
    chex.assert_trees_all_close(w1, 2.0 * f_c - f_0, atol=1e-6)
    w3 = samplers.classifier_free_guidance(cond_denoiser, 3.0, null)(x, t, cond)
    chex.assert_trees_all_close(w3, 4.0 * f_c - 3.0 * f_0, atol=1e-5)
    # null condition given as a callable of the condition
    flip = samplers.classifier_free_guidance(cond_denoiser, 1.0, lambda c: -c)(x, t, cond)
    chex.assert_trees_all_close(flip, 2.0 * f_c - cond_denoiser(x, t, -cond), atol=1e-6)
    # a scalar null array is broadcast to the condition's shape
    scalar = samplers.classifier_free_guidance(cond_denoiser, 1.0, 0.0)(x, t, cond)
    chex.assert_trees_all_close(scalar, w1, atol=1e-6)


@pytest.mark.parametrize("mean_type", ["x0", "eps", "v"])
def test_classifier_guidance_zero_gradient_is_unguided(guidance_inputs, mean_type):
    x, cond, t = guidance_inputs
    zero = lambda x, t_B, c: jnp.zeros((x.shape[0],))  # noqa: E731
    guided = samplers.classifier_guidance(
        toy_denoiser, zero, SCHED, scale=5.0, mean_type=mean_type
    )
    chex.assert_trees_all_close(guided(x, t, cond), toy_denoiser(x, t, cond), atol=1e-5)


@pytest.mark.parametrize("mean_type", ["x0", "eps", "v"])
def test_classifier_guidance_gaussian_direction(guidance_inputs, mean_type):
    """The guided x0 prediction moves by ``scale (1 - abar) / sqrt(abar) * grad log p``."""
    x, cond, t = guidance_inputs
    center = 3.0
    guided = samplers.classifier_guidance(
        toy_denoiser, _gaussian_log_prob(center), SCHED, scale=0.5, mean_type=mean_type
    )
    x0_plain = diffusion.predict_x0(SCHED, x, t, toy_denoiser(x, t, cond), mean_type)
    x0_guided = diffusion.predict_x0(SCHED, x, t, guided(x, t, cond), mean_type)
    ab = SCHED.alphas_cumprod[t][:, None]
    grad = center - x  # gradient of -0.5 |x - center|^2
    want = x0_plain + 0.5 * (1.0 - ab) / jnp.sqrt(ab) * grad
    chex.assert_trees_all_close(x0_guided, want, atol=1e-4, rtol=1e-4)
    assert np.all(np.sign(np.asarray(x0_guided - x0_plain)) == np.sign(np.asarray(grad)))


# ----------------------------------------------------------------------------------------------
# DiffRec's reverse process (spec section 6)
# ----------------------------------------------------------------------------------------------


def _linear_params(I, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(I, I)) * 0.3, rng.normal(size=(I,)) * 0.1


@pytest.mark.parametrize("mean_type", ["x0", "eps"])
@pytest.mark.parametrize(
    "sched",
    [
        schedules.make_schedule("diffrec", 40, noise_scale=0.005, noise_min=0.005, noise_max=0.01),
        SCHED,
    ],
    ids=["ml1m", "linear6"],
)
def test_diffrec_reverse_matches_hand_loop(sched, mean_type):
    I = 5
    W, b = _linear_params(I)

    def den(x, t_B, cond=None):
        return x @ jnp.asarray(W, jnp.float32) + jnp.asarray(b, jnp.float32) * (
            t_B[:, None].astype(jnp.float32) + 1.0
        ) / 10.0

    x0 = (np.random.default_rng(1).random((3, I)) < 0.4).astype(np.float32)
    got = jax.jit(lambda x: samplers.diffrec_reverse(den, sched, x, mean_type=mean_type))(x0)
    # again with a key: noise_steps = 0 and no noise never read it
    again = samplers.diffrec_reverse(den, sched, x0, jax.random.PRNGKey(3), mean_type=mean_type)
    chex.assert_trees_all_equal(np.asarray(got), np.asarray(again))

    c1 = np.asarray(sched.posterior_mean_coef1, np.float64)
    c2 = np.asarray(sched.posterior_mean_coef2, np.float64)
    ab = np.asarray(sched.alphas_cumprod, np.float64)
    x = x0.astype(np.float64)
    for t in range(sched.num_steps - 1, -1, -1):
        out = x @ W + b * (t + 1) / 10.0
        if mean_type == "eps":
            out = np.sqrt(1.0 / ab[t]) * x - np.sqrt(1.0 / ab[t] - 1.0) * out
        x = c1[t] * out + c2[t] * x
    np.testing.assert_allclose(got, x, atol=1e-4, rtol=1e-4)


def test_iterate_denoiser_matches_hand_loop():
    W, b = _linear_params(4, seed=2)
    den = lambda x, t_B, c: jnp.tanh(x @ W + b * t_B[:, None])  # noqa: E731
    x0 = np.random.default_rng(3).normal(size=(2, 4))
    got = samplers.iterate_denoiser(den, jnp.asarray(x0, jnp.float32), 7)
    x = x0
    for t in range(6, -1, -1):
        x = np.tanh(x @ W + b * t)
    np.testing.assert_allclose(got, x, atol=1e-5)


def test_diffrec_reverse_noised_start():
    """noise_steps S > 0: start from ``q_sample(x0, S - 1)``, then all T reverse steps."""
    x0 = (jax.random.uniform(jax.random.PRNGKey(0), (B, D)) < 0.5).astype(jnp.float32)
    key = jax.random.PRNGKey(1)
    got = samplers.diffrec_reverse(toy_denoiser, SCHED, x0, key, noise_steps=4)
    keys = samplers.batch_keys(key, B)
    z = samplers.normal_per_example(keys, T, x0.shape)
    x_S = diffusion.q_sample(SCHED, x0, jnp.full((B,), 3), z)
    want = samplers.ancestral_sample(toy_denoiser, SCHED, x_S, mean_type="x0", noise=False)
    chex.assert_trees_all_close(got, want, atol=1e-6)
    plain = samplers.diffrec_reverse(toy_denoiser, SCHED, x0)
    assert not np.allclose(np.asarray(got), np.asarray(plain))
    full = samplers.diffrec_reverse(toy_denoiser, SCHED, x0, key, noise_steps=T)
    chex.assert_shape(full, (B, D))


def test_sampler_argument_errors():
    x = jnp.zeros((B, D))
    with pytest.raises(ValueError):
        samplers.diffrec_reverse(
            toy_denoiser, SCHED, x, jax.random.PRNGKey(0), noise_steps=T + 1
        )
    with pytest.raises(ValueError):
        samplers.diffrec_reverse(toy_denoiser, SCHED, x, noise_steps=2)
    with pytest.raises(ValueError):
        samplers.ancestral_sample(toy_denoiser, SCHED, x)
    with pytest.raises(ValueError):
        samplers.ddim_sample(toy_denoiser, SCHED, x, eta=0.5)
    with pytest.raises(ValueError):
        samplers.probability_flow_ode(toy_denoiser, SCHED, x, method="rk4")
    with pytest.raises(ValueError):
        samplers.annealed_langevin(toy_denoiser, VE, x, jax.random.PRNGKey(0), mean_type="v")


# ----------------------------------------------------------------------------------------------
# Timestep sub-sequences
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_train,num_steps",
    [(1000, 50), (1000, 2), (40, 7), (10, 9), (6, 3), (5, 5), (5, None), (5, 100), (1, 1)],
)
def test_spaced_timesteps_properties(num_train, num_steps):
    ts = samplers.spaced_timesteps(num_train, num_steps)
    assert ts.dtype.kind == "i"
    assert len(ts) == (num_train if num_steps is None else min(num_steps, num_train))
    assert ts[0] == num_train - 1 and ts[-1] == 0
    assert np.all(np.diff(ts) < 0)
    assert np.all((ts >= 0) & (ts < num_train))


def test_spaced_timesteps_even_spacing_and_errors():
    gaps = -np.diff(samplers.spaced_timesteps(1000, 50))
    assert gaps.min() >= 20 and gaps.max() <= 21
    with pytest.raises(ValueError):
        samplers.spaced_timesteps(10, 0)


def test_one_step_samplers_start_from_the_noisiest_step():
    """One step: the single step is the noisiest one (VP t = T-1, VE level 0), not t = 0.

    The denoiser predicts ``x0_hat = t``, and one step down to ``sigma = 0`` returns ``x0_hat``,
    so the output shows at which step the denoiser was called.
    """
    np.testing.assert_array_equal(samplers.spaced_timesteps(10, 1), [9])

    def step_as_x0(x, t_B, cond=None):
        return jnp.broadcast_to(t_B[:, None].astype(x.dtype), x.shape)

    x = jnp.ones((2, 3))
    ddim = samplers.ddim_sample(step_as_x0, SCHED, x, num_steps=1, mean_type="x0")
    chex.assert_trees_all_close(ddim, jnp.full_like(x, T - 1))
    ode = samplers.probability_flow_ode(
        step_as_x0, SCHED, x, method="euler", num_steps=1, mean_type="x0"
    )
    chex.assert_trees_all_close(ode, jnp.full_like(x, T - 1), atol=1e-5)
    ve = samplers.probability_flow_ode(
        step_as_x0, VE, x, method="heun", num_steps=1, mean_type="x0"
    )
    chex.assert_trees_all_close(ve, jnp.zeros_like(x), atol=1e-5)
    # and with two steps the VE flow still starts at level 0 and ends at the last level
    ve2 = samplers.probability_flow_ode(
        step_as_x0, VE, x, method="euler", num_steps=2, mean_type="x0"
    )
    chex.assert_trees_all_close(ve2, jnp.full_like(x, VE.num_steps - 1), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Generic fixed-grid ODE integrator
# ----------------------------------------------------------------------------------------------


def _sym_generator(n=6, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n))
    return (a + a.T) / (2.0 * n)


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_odeint_fixed_linear_converges_at_its_order(method, order):
    """dx/dt = x M has the solution x0 expm(t M); halving the step cuts the error by 2^order."""
    import scipy.linalg

    m = _sym_generator()
    x0 = np.random.default_rng(1).normal(size=(3, 6))
    exact = x0 @ scipy.linalg.expm(1.5 * m)
    f = lambda x, t: x @ jnp.asarray(m, jnp.float32)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        errs = []
        for k in (4, 8):
            out = samplers.odeint_fixed(f, jnp.asarray(x0, jnp.float32), np.linspace(0, 1.5, k + 1), method=method)
            errs.append(np.abs(np.asarray(out) - exact).max())
    assert errs[1] < errs[0]
    if order < 4:  # rk4's error at 8 steps is near float32 round-off
        assert errs[0] / errs[1] > 2 ** order * 0.7
    assert errs[1] < {1: 0.1, 2: 0.01, 4: 1e-4}[order]


def test_odeint_fixed_time_dependent_and_return_all():
    """dx/dt = 2 t x: x(t) = x0 exp(t^2); the stacked states start at x0; one time returns x0."""
    f = lambda x, t: 2.0 * t * x  # noqa: E731
    ts = np.linspace(0.0, 1.0, 41)
    x0 = jnp.ones((2,))
    x, xs = samplers.odeint_fixed(f, x0, ts, method="rk4", return_all=True)
    assert xs.shape == (41, 2)
    np.testing.assert_allclose(np.asarray(xs[:, 0]), np.exp(ts**2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(x), np.asarray(xs[-1]))
    np.testing.assert_array_equal(np.asarray(samplers.odeint_fixed(f, x0, [0.3])), np.asarray(x0))
    # backwards in time undoes the forward solve
    back = samplers.odeint_fixed(f, x, ts[::-1], method="rk4")
    np.testing.assert_allclose(np.asarray(back), np.asarray(x0), rtol=1e-4)


def test_odeint_fixed_jits_once_and_rejects_bad_arguments():
    calls = []

    def f(x, t):
        calls.append(1)
        return -x

    run = jax.jit(lambda x: samplers.odeint_fixed(f, x, np.linspace(0, 1, 11), method="heun"))
    run(jnp.ones(3))
    n = len(calls)
    run(jnp.zeros(3))
    assert len(calls) == n  # traced once, no Python loop over steps
    with pytest.raises(ValueError, match="method"):
        samplers.odeint_fixed(f, jnp.ones(3), [0.0, 1.0], method="dopri5")
    with pytest.raises(ValueError, match="grid"):
        samplers.odeint_fixed(f, jnp.ones(3), np.zeros((2, 2)))


# ----------------------------------------------------------------------------------------------
# Cold (deterministic-degradation) sampler
# ----------------------------------------------------------------------------------------------


def _blur_degrade(x, t_B, cond):
    """D(x, t) = x (1 - t/4) + mean(x) t/4: a deterministic degradation with D(x, 0) = x."""
    w = (t_B.astype(jnp.float32) / 4.0)[:, None]
    return x * (1.0 - w) + jnp.mean(x, axis=-1, keepdims=True) * w


def test_cold_sample_perfect_denoiser_recovers_x0():
    x0 = jax.random.normal(jax.random.key(0), (3, 5))
    oracle = lambda z, t_B, cond: cond  # noqa: E731  (knows x0)
    zT = _blur_degrade(x0, jnp.full((3,), 4), None)
    ts = [4, 3, 2, 1, 0]
    out = samplers.cold_sample(oracle, _blur_degrade, zT, ts, cond=x0, decay=1.0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-6)
    out0 = samplers.cold_sample(oracle, _blur_degrade, zT, ts, cond=x0, decay=0.0)
    np.testing.assert_allclose(np.asarray(out0), np.asarray(x0), atol=1e-6)


def test_cold_sample_matches_hand_loop_with_decay():
    key = jax.random.key(1)
    zT = jax.random.normal(key, (2, 4))
    w = jax.random.normal(jax.random.fold_in(key, 1), (4, 4)) * 0.3
    f = lambda z, t_B, cond: jnp.tanh(z @ w) + 0.1 * t_B[:, None]  # noqa: E731
    ts, decay = [3, 2, 1, 0], 0.5
    z = zT
    for t, s in zip(ts[:-1], ts[1:]):
        tb, sb = jnp.full((2,), t), jnp.full((2,), s)
        xh = f(z, tb, None)
        z = _blur_degrade(xh, sb, None) + decay ** (t - s) * (z - _blur_degrade(xh, tb, None))
    got = jax.jit(lambda z: samplers.cold_sample(f, _blur_degrade, z, ts, decay=decay))(zT)
    np.testing.assert_allclose(np.asarray(got), np.asarray(z), atol=1e-6)
    with pytest.raises(ValueError, match="descending"):
        samplers.cold_sample(f, _blur_degrade, zT, [0, 1, 2])
