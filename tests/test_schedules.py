"""Tests of :mod:`diffrec_jax.schedules` and of :func:`diffrec_jax.diffusion.loss_weights`.

Every beta factory is checked against an independent float64 computation written here, step by
step, from the equations (no call to the library's helpers), and the DiffRec "linear-var"
schedule is checked against the worked values of the reference specification (section 2 and 5.1).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrec_jax import diffusion, schedules

# The best ML-1M-clean DiffRec configuration of the reference.
ML1M = dict(noise_scale=0.005, noise_min=0.005, noise_max=0.01)


# ----------------------------------------------------------------------------------------------
# Independent float64 references, one Python loop per equation.
# ----------------------------------------------------------------------------------------------


def ref_linear(T, b0, b1):
    return np.array([b0 + (b1 - b0) * t / (T - 1) for t in range(T)])


def ref_from_abar_curve(f, T, max_beta):
    """Betas of a continuous abar(u) curve: ``beta_t = min(1 - f((t+1)/T) / f(t/T), max_beta)``."""
    return np.array([min(1.0 - f((t + 1) / T) / f(t / T), max_beta) for t in range(T)])


def ref_cosine(T, s=0.008, max_beta=0.999):
    return ref_from_abar_curve(
        lambda u: math.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2, T, max_beta
    )


def ref_sqrt(T, max_beta=0.999):
    return ref_from_abar_curve(lambda u: 1.0 - math.sqrt(u + 1e-4), T, max_beta)


def ref_diffrec(T, noise_scale, noise_min, noise_max, beta_fixed=True, max_beta=0.999):
    lo, hi = noise_scale * noise_min, noise_scale * noise_max
    v = [lo + (hi - lo) * t / (T - 1) for t in range(T)]
    betas = [v[0]]
    for t in range(1, T):
        betas.append(min(1.0 - (1.0 - v[t]) / (1.0 - v[t - 1]), max_beta))
    if beta_fixed:
        betas[0] = 1e-5
    return np.array(betas), np.array(v)


def ref_exp(T, beta_min=0.1, beta_max=10.0):
    out = []
    for t in range(T):
        x = 1.0 + 2.0 * T * t / (T - 1)  # linspace(1, 2T + 1, T)[t]
        out.append(1.0 - math.exp(-beta_min / T - x * (beta_max - beta_min) / (2.0 * T * T)))
    return np.array(out)


def ref_ncsn(sigma_max, sigma_min, L):
    return np.array([sigma_max * (sigma_min / sigma_max) ** (i / (L - 1)) for i in range(L)])


def ref_derived(betas):
    """All derived arrays of a VP schedule, with explicit loops in float64."""
    T = len(betas)
    abar, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        abar.append(prod)
    abar = np.array(abar)
    abar_prev = np.array([1.0] + list(abar[:-1]))
    b = np.asarray(betas, dtype=np.float64)
    post_var = np.array([b[t] * (1.0 - abar_prev[t]) / (1.0 - abar[t]) for t in range(T)])
    log_var = np.log(np.array([post_var[1]] + list(post_var[1:])))
    return dict(
        betas=b,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        sqrt_recip_alphas_cumprod=1.0 / np.sqrt(abar),
        sqrt_recipm1_alphas_cumprod=np.sqrt((1.0 - abar) / abar),
        posterior_variance=post_var,
        posterior_log_variance_clipped=log_var,
        posterior_mean_coef1=np.array(
            [b[t] * math.sqrt(abar_prev[t]) / (1.0 - abar[t]) for t in range(T)]
        ),
        posterior_mean_coef2=np.array(
            [(1.0 - abar_prev[t]) * math.sqrt(1.0 - b[t]) / (1.0 - abar[t]) for t in range(T)]
        ),
        one_minus_alphas_cumprod=1.0 - abar,
        one_minus_alphas_cumprod_prev=1.0 - abar_prev,
        snr=abar / (1.0 - abar),
    )


# ----------------------------------------------------------------------------------------------
# Beta factories
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1000, 7])
def test_linear_betas(T):
    np.testing.assert_allclose(schedules.linear_betas(T), ref_linear(T, 1e-4, 0.02), rtol=1e-12)
    np.testing.assert_allclose(
        schedules.linear_betas(T, beta_start=0.001, beta_end=0.2),
        ref_linear(T, 0.001, 0.2),
        rtol=1e-12,
    )


@pytest.mark.parametrize("T", [1000, 10])
def test_cosine_betas(T):
    got = schedules.cosine_betas(T)
    np.testing.assert_allclose(got, ref_cosine(T), rtol=1e-10)
    assert got.max() <= 0.999
    # the last step of the cosine curve reaches abar(1) = 0, so it is clipped at max_beta
    assert got[-1] == pytest.approx(0.999)
    np.testing.assert_allclose(
        schedules.cosine_betas(T, s=0.02, max_beta=0.5), ref_cosine(T, 0.02, 0.5), rtol=1e-10
    )


@pytest.mark.parametrize("beta_fixed", [True, False])
@pytest.mark.parametrize(
    "T,cfg",
    [
        (40, ML1M),
        (5, dict(noise_scale=0.5, noise_min=0.001, noise_max=0.01)),
        (10, dict(noise_scale=0.005, noise_min=0.0001, noise_max=0.0005)),
    ],
)
def test_diffrec_betas(T, cfg, beta_fixed):
    got = schedules.diffrec_betas(T, **cfg, beta_fixed=beta_fixed)
    want, _ = ref_diffrec(T, **cfg, beta_fixed=beta_fixed)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert got.dtype == np.float64


def test_diffrec_betas_max_beta_clip():
    got = schedules.diffrec_betas(4, 0.9, 0.1, 1.0, max_beta=0.5)
    want, _ = ref_diffrec(4, 0.9, 0.1, 1.0, max_beta=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.max() <= 0.5


@pytest.mark.parametrize("T", [100, 8])
def test_exp_betas(T):
    np.testing.assert_allclose(schedules.exp_betas(T), ref_exp(T), rtol=1e-10)
    np.testing.assert_allclose(schedules.exp_betas(T, 0.5, 5.0), ref_exp(T, 0.5, 5.0), rtol=1e-10)
    assert np.all(np.diff(schedules.exp_betas(T)) > 0)


@pytest.mark.parametrize("T", [2000, 6])
def test_sqrt_betas(T):
    got = schedules.sqrt_betas(T)
    np.testing.assert_allclose(got, ref_sqrt(T), rtol=1e-10)
    assert np.all((got > 0) & (got <= 0.999))


def test_ncsn_sigmas():
    got = schedules.ncsn_sigmas(50.0, 0.01, 232)
    np.testing.assert_allclose(got, ref_ncsn(50.0, 0.01, 232), rtol=1e-10)
    assert got[0] == pytest.approx(50.0) and got[-1] == pytest.approx(0.01)
    ratios = got[1:] / got[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-10)  # geometric
    ve = schedules.make_ve_schedule(20.0, 0.01, 30)
    assert isinstance(ve, schedules.VESchedule) and ve.num_steps == 30
    assert ve.sigmas.dtype == jnp.float32
    np.testing.assert_allclose(ve.sigmas, ref_ncsn(20.0, 0.01, 30), rtol=1e-6)


@pytest.mark.parametrize(
    "kind,kwargs,ref",
    [
        ("linear", {}, lambda T: ref_linear(T, 1e-4, 0.02)),
        ("cosine", {}, ref_cosine),
        ("diffrec", ML1M, lambda T: ref_diffrec(T, **ML1M)[0]),
        (
            "linear-var",
            dict(ML1M, beta_fixed=False),
            lambda T: ref_diffrec(T, **ML1M, beta_fixed=False)[0],
        ),
        ("exp", {}, ref_exp),
        ("sqrt", {}, ref_sqrt),
    ],
)
def test_make_schedule_by_name(kind, kwargs, ref):
    s = schedules.make_schedule(kind, 40, **kwargs)
    assert isinstance(s, schedules.Schedule)
    assert s.num_steps == 40
    for name, arr in s._asdict().items():
        assert arr.shape == (40,), name
        assert arr.dtype == jnp.float32, name
        assert np.all(np.isfinite(np.asarray(arr))), name
    np.testing.assert_allclose(s.betas, ref(40), rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Derived arrays
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_from_betas_derived_arrays(seed):
    rng = np.random.default_rng(seed)
    betas = rng.uniform(1e-4, 0.2, size=12)
    s = schedules.from_betas(betas)
    want = ref_derived(betas)
    assert set(s._fields) == set(want)
    for name, ref in want.items():
        got = getattr(s, name)
        assert got.dtype == jnp.float32, name
        np.testing.assert_allclose(got, ref.astype(np.float32), rtol=2e-6, atol=0, err_msg=name)
    assert float(s.posterior_variance[0]) == 0.0
    assert float(s.posterior_mean_coef1[0]) == pytest.approx(1.0)
    assert float(s.posterior_mean_coef2[0]) == 0.0
    # the clipped log variance borrows the t = 1 entry at t = 0
    assert float(s.posterior_log_variance_clipped[0]) == float(s.posterior_log_variance_clipped[1])


def test_from_betas_posterior_identities():
    """Posterior coefficients satisfy the Gaussian-conditioning identities of Ho et al."""
    s = schedules.make_schedule("cosine", 50)
    a = {k: np.asarray(v, np.float64) for k, v in s._asdict().items()}
    # E[x_{t-1} | x_0] through the posterior: c1 x0 + c2 sqrt(abar_t) x0 = sqrt(abar_{t-1}) x0
    np.testing.assert_allclose(
        a["posterior_mean_coef1"] + a["posterior_mean_coef2"] * a["sqrt_alphas_cumprod"],
        a["sqrt_alphas_cumprod"] / np.sqrt(1.0 - a["betas"]),
        rtol=1e-4,
    )
    # Var[x_{t-1} | x_0] = c2^2 (1 - abar_t) + sigma2_t = 1 - abar_{t-1}
    np.testing.assert_allclose(
        a["posterior_mean_coef2"] ** 2 * a["one_minus_alphas_cumprod"] + a["posterior_variance"],
        a["one_minus_alphas_cumprod_prev"],
        rtol=1e-4,
        atol=1e-7,
    )


def test_from_betas_single_step():
    s = schedules.from_betas([0.3])
    assert s.num_steps == 1
    assert np.all(np.isfinite(np.asarray(s.posterior_log_variance_clipped)))
    assert float(s.alphas_cumprod[0]) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "bad",
    [[], [0.0, 0.1], [0.1, -0.2], [0.1, 1.5], [0.1, np.nan], [0.1, np.inf], [[0.1, 0.2]]],
)
def test_from_betas_rejects_bad_betas(bad):
    with pytest.raises(ValueError):
        schedules.from_betas(np.asarray(bad, dtype=np.float64))


# ----------------------------------------------------------------------------------------------
# DiffRec worked values (spec section 2)
# ----------------------------------------------------------------------------------------------


def test_diffrec_worked_values_ml1m():
    s = schedules.make_schedule("diffrec", 40, **ML1M)
    betas = np.asarray(s.betas)
    assert betas[0] == pytest.approx(1e-5, rel=1e-6)
    np.testing.assert_allclose(betas[1:], 6.41e-7, rtol=1e-3)
    one_m = np.asarray(s.one_minus_alphas_cumprod)
    assert one_m[0] == pytest.approx(1.0e-5, rel=1e-4)
    assert one_m[-1] == pytest.approx(3.5e-5, rel=1e-3)
    assert math.sqrt(one_m[-1]) == pytest.approx(0.0059, abs=5e-5)
    snr = np.asarray(s.snr)
    # the spec quotes 2 and 3 significant digits: allow half a unit of the last one
    assert snr[0] == pytest.approx(1.0e5, abs=0.05e5)
    assert snr[-1] == pytest.approx(2.86e4, abs=0.005e4)
    assert np.all(np.diff(snr) < 0)
    c1, c2 = np.asarray(s.posterior_mean_coef1), np.asarray(s.posterior_mean_coef2)
    assert (c1[0], c2[0]) == (pytest.approx(1.0, abs=1e-6), pytest.approx(0.0, abs=1e-6))
    assert (c1[1], c2[1]) == (pytest.approx(0.060, abs=5e-4), pytest.approx(0.940, abs=5e-4))
    assert (c1[39], c2[39]) == (pytest.approx(0.018, abs=5e-4), pytest.approx(0.982, abs=5e-4))
    # with beta_0 overridden, 1 - abar_t = 1 - (1 - 1e-5)(1 - v_t)/(1 - v_0) (spec step 3)
    _, v = ref_diffrec(40, **ML1M)
    np.testing.assert_allclose(one_m, 1.0 - (1.0 - 1e-5) * (1.0 - v) / (1.0 - v[0]), rtol=1e-6)


@pytest.mark.parametrize(
    "T,cfg",
    [
        (40, ML1M),
        (5, dict(noise_scale=0.5, noise_min=0.001, noise_max=0.01)),
        (10, dict(noise_scale=0.005, noise_min=0.0001, noise_max=0.0005)),
    ],
)
def test_diffrec_unfixed_variance_is_exact(T, cfg):
    """With ``beta_fixed=False``, ``1 - abar_t`` equals the target ``v_t`` (to float32)."""
    _, v = ref_diffrec(T, **cfg)
    betas = schedules.diffrec_betas(T, **cfg, beta_fixed=False)
    # float64: 1 - prod(1 - beta) cancels about 5 of its 16 digits when v is 1e-6
    np.testing.assert_allclose(1.0 - np.cumprod(1.0 - betas), v, rtol=1e-9)
    s = schedules.make_schedule("diffrec", T, **cfg, beta_fixed=False)
    np.testing.assert_array_max_ulp(
        np.asarray(s.one_minus_alphas_cumprod), v.astype(np.float32), maxulp=1
    )


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lo,hi", [(0.01, 0.01), (0.02, 0.01)])
def test_diffrec_noise_min_must_be_below_max(lo, hi):
    with pytest.raises(ValueError, match="noise_min"):
        schedules.diffrec_betas(10, 0.005, lo, hi)
    with pytest.raises(ValueError):
        schedules.make_schedule("diffrec", 10, noise_scale=0.005, noise_min=lo, noise_max=hi)


def test_diffrec_other_invalid_arguments():
    with pytest.raises(ValueError):
        schedules.diffrec_betas(10, 0.0, 0.001, 0.01)  # noise_scale 0 builds no schedule
    with pytest.raises(ValueError):
        schedules.diffrec_betas(10, 0.5, -0.001, 0.01)
    with pytest.raises(ValueError):
        schedules.diffrec_betas(10, 2.0, 0.1, 0.6)  # s * M >= 1


@pytest.mark.parametrize("steps", [0, -3, 2.5])
@pytest.mark.parametrize(
    "factory",
    [
        schedules.linear_betas,
        schedules.cosine_betas,
        schedules.exp_betas,
        schedules.sqrt_betas,
        lambda T: schedules.diffrec_betas(T, **ML1M),
        lambda T: schedules.ncsn_sigmas(1.0, 0.1, T),
    ],
)
def test_invalid_step_counts(factory, steps):
    with pytest.raises(ValueError):
        factory(steps)


def test_make_schedule_zero_steps_and_unknown_kind():
    with pytest.raises(ValueError):
        schedules.make_schedule("linear", 0)
    with pytest.raises(ValueError, match="unknown schedule kind"):
        schedules.make_schedule("binomial", 10)
    with pytest.raises(ValueError):
        schedules.make_ve_schedule(1.0, 1.0, 10)
    with pytest.raises(ValueError):
        schedules.ncsn_sigmas(0.01, 1.0, 10)


# ----------------------------------------------------------------------------------------------
# Schedules under jit (optax style)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine", "diffrec", "exp", "sqrt"])
def test_schedule_inside_jit(kind):
    """A schedule built inside a jitted function of the step gives the eager numbers."""
    kwargs = ML1M if kind == "diffrec" else {}

    def coef_at(step):
        s = schedules.make_schedule(kind, 40, **kwargs)
        return s.alphas_cumprod[step], s.posterior_mean_coef1[step], s.snr[step]

    jitted = jax.jit(coef_at)
    steps = jnp.arange(40)
    got = jax.vmap(jitted)(steps)
    eager = schedules.make_schedule(kind, 40, **kwargs)
    want = (eager.alphas_cumprod, eager.posterior_mean_coef1, eager.snr)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_schedule_is_a_pytree_argument():
    """A :class:`Schedule` passes through jit as an argument and can be stacked and vmapped."""
    s1 = schedules.make_schedule("linear", 16)
    s2 = schedules.make_schedule("cosine", 16)

    @jax.jit
    def weight_at(s, t):
        return diffusion.extract(s.sqrt_one_minus_alphas_cumprod, t, 2)

    t = jnp.array([0, 5, 15])
    np.testing.assert_array_equal(
        np.asarray(weight_at(s1, t))[:, 0], np.asarray(s1.sqrt_one_minus_alphas_cumprod)[t]
    )
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), s1, s2)
    both = jax.vmap(lambda s: s.alphas_cumprod[-1])(stacked)
    np.testing.assert_array_equal(
        np.asarray(both), np.array([s1.alphas_cumprod[-1], s2.alphas_cumprod[-1]])
    )
    ve = schedules.make_ve_schedule(10.0, 0.1, 5)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda v: v.sigmas * 2)(ve)), ve.sigmas * 2)


# ----------------------------------------------------------------------------------------------
# Loss weights (spec section 5.1)
# ----------------------------------------------------------------------------------------------


def test_loss_weights_x0_ml1m():
    s = schedules.make_schedule("diffrec", 40, **ML1M)
    w = np.asarray(diffusion.loss_weights(s, "x0", True))
    assert w.shape == (40,) and w.dtype == np.float32
    assert w[0] == 1.0
    assert w[1] == pytest.approx(6024, rel=1e-3)
    assert w[39] == pytest.approx(533, rel=1e-3)
    betas, _ = ref_diffrec(40, **ML1M)
    snr = ref_derived(betas)["snr"]
    want = np.concatenate([[1.0], snr[:-1] - snr[1:]])
    np.testing.assert_allclose(w, want, rtol=1e-4)


def test_loss_weights_x0_ml1m_noisy():
    s = schedules.make_schedule("diffrec", 5, noise_scale=0.5, noise_min=0.001, noise_max=0.01)
    w = np.asarray(diffusion.loss_weights(s, "x0", True))
    assert w[1] == pytest.approx(9.9e4, rel=1e-2)


@pytest.mark.parametrize(
    "kind,kwargs,ref",
    [
        ("diffrec", ML1M, lambda T: ref_diffrec(T, **ML1M)[0]),
        ("linear", {}, lambda T: ref_linear(T, 1e-4, 0.02)),
        ("cosine", {}, ref_cosine),
    ],
)
def test_loss_weights_eps(kind, kwargs, ref):
    s = schedules.make_schedule(kind, 40, **kwargs)
    w = np.asarray(diffusion.loss_weights(s, "eps", True))
    d = ref_derived(ref(40))
    want = np.ones(40)
    for t in range(1, 40):
        want[t] = d["one_minus_alphas_cumprod"][t] / (
            d["one_minus_alphas_cumprod"][t - 1] ** 2 * (1.0 - d["betas"][t])
        )
    # the library forms 1 - beta_t from float32 betas: for cosine's last beta (0.999) that
    # costs about 1.3e-5 relative
    np.testing.assert_allclose(w, want, rtol=5e-5)


def test_loss_weights_unweighted_and_v():
    s = schedules.make_schedule("diffrec", 40, **ML1M)
    for mean_type in ("x0", "eps", "v"):
        np.testing.assert_array_equal(np.asarray(diffusion.loss_weights(s, mean_type, False)), 1.0)
    np.testing.assert_array_equal(np.asarray(diffusion.loss_weights(s, "v", True)), 1.0)
    with pytest.raises(ValueError):
        diffusion.loss_weights(s, "score", True)
