"""Reverse-process samplers: each is one ``lax.scan``, pure in its arrays and PRNG keys.

Every sampler takes any callable ``denoise_fn(x_t_BxD, t_B, cond) -> out_BxD`` (see
:mod:`diffrec_jax.diffusion` for the meaning of ``out`` under each ``mean_type``), so a denoiser
from any JAX code base plugs in. Batches have a leading axis ``B``.

Randomness is per example: ``key`` may be one key (split into ``B`` per-example keys) or an array
of ``B`` keys, and the noise of example ``b`` at step ``t`` is drawn from
``fold_in(key_b, t)``. With per-example keys a batch gives exactly what ``vmap`` over single
examples gives, whatever the batch make-up or the number of devices.

Samplers hold no Python loop over timesteps: wrap them in ``jax.jit`` (with the denoiser closed
over, or passed through ``functools.partial``) and they trace once per input shape.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffrec_jax import diffusion as dif
from diffrec_jax.schedules import Schedule, VESchedule

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def batch_keys(key: jax.Array, batch_size: int) -> jax.Array:
    """Returns ``B`` per-example keys: ``key`` itself if it is already a batch of keys."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    single = key.ndim == 0 if typed else key.ndim == 1
    if single:
        return jax.random.split(key, batch_size)
    if key.shape[0] != batch_size:
        raise ValueError(f"got {key.shape[0]} keys for a batch of {batch_size}")
    return key


def normal_per_example(keys_B: jax.Array, step, shape_B: tuple, dtype=jnp.float32) -> jnp.ndarray:
    """Standard normal noise of shape ``shape_B``; example ``b`` uses ``fold_in(keys_B[b], step)``."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape_B[1:], dtype))(
        keys_B
    )


def _t_batch(t, x):
    return jnp.full((x.shape[0],), t, jnp.int32)


def spaced_timesteps(num_train_steps: int, num_steps: int | None) -> np.ndarray:
    """Descending, evenly spaced sub-sequence of ``{0..T-1}`` of length ``num_steps`` (all if None).

    It always contains ``T-1`` and ``0`` (just ``T-1``, the noisiest step, when ``num_steps`` is 1).
    """
    if num_steps is None or num_steps >= num_train_steps:
        return np.arange(num_train_steps - 1, -1, -1, dtype=np.int32)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_steps == 1:  # a single step must start from the noise, not from t = 0
        return np.array([num_train_steps - 1], dtype=np.int32)
    ts = np.unique(np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int32))
    return ts[::-1].copy()


# ----------------------------------------------------------------------------------------------
# Ancestral (DDPM) sampling and DiffRec's reverse process
# ----------------------------------------------------------------------------------------------


def ancestral_sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x_T: jnp.ndarray,
    key: jax.Array | None = None,
    *,
    cond: Any = None,
    mean_type: str = "eps",
    noise: bool = True,
    start_step: int | None = None,
) -> jnp.ndarray:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2) from step ``start_step`` (default ``T-1``) to 0.

    For ``t = start..0``: ``x0_hat = f(x_t, t)`` (converted from ``mean_type``),
    ``mu = c1_t x0_hat + c2_t x_t`` and ``x_{t-1} = mu + exp(log_var_t / 2) z`` with
    ``z ~ N(0, I)`` for ``t > 0`` (``x_{t-1} = mu`` when ``noise`` is False). The variance is the
    posterior variance with its ``t=0`` entry clipped, as in DiffRec.

    Args:
      denoise_fn: ``f(x_t, t_B, cond)``.
      schedule: VP schedule with ``T`` steps.
      x_T: ``[B, ...]`` starting point.
      key: one key or ``B`` keys; required when ``noise`` is True.
      cond: passed to ``denoise_fn`` unchanged.
      mean_type: what ``denoise_fn`` predicts: ``x0``, ``eps`` or ``v``.
      noise: add the sampling noise.
      start_step: first (largest) step index; defaults to ``T - 1``.

    Returns:
      ``x_0``-like sample with the shape of ``x_T``.
    """
    T = schedule.num_steps
    start = T - 1 if start_step is None else int(start_step)
    if noise:
        if key is None:
            raise ValueError("ancestral_sample with noise=True needs a key")
        keys_B = batch_keys(key, x_T.shape[0])

    def step(x, t):
        t_B = _t_batch(t, x)
        out = denoise_fn(x, t_B, cond)
        mean, log_var, _ = dif.p_mean_variance(schedule, out, x, t_B, mean_type)
        if noise:
            z = normal_per_example(keys_B, t, x.shape, x.dtype)
            mean = mean + (t > 0) * jnp.exp(0.5 * log_var) * z
        return mean, None

    x, _ = jax.lax.scan(step, x_T, jnp.arange(start, -1, -1, dtype=jnp.int32))
    return x


def diffrec_reverse(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x0: jnp.ndarray,
    key: jax.Array | None = None,
    *,
    noise_steps: int = 0,
    sampling_noise: bool = False,
    mean_type: str = "x0",
    cond: Any = None,
) -> jnp.ndarray:
    """DiffRec's inference (``p_sample``, spec section 6): reverse diffusion from a *partly noised* input.

    The start is the user's own row: ``x = x0`` if ``noise_steps == 0``, else
    ``x = q_sample(x0, t = noise_steps - 1)``. Then *all* ``T`` reverse steps run, whatever
    ``noise_steps`` is (as the reference does), with or without sampling noise.

    Args:
      denoise_fn: ``f(x_t, t_B, cond)``.
      schedule: VP schedule.
      x0: ``[B, I]`` interaction rows (binary or time-weighted).
      key: needed when ``noise_steps > 0`` or ``sampling_noise``.
      noise_steps: how far the start point is noised (``S`` in the spec); 0 means no noise.
      sampling_noise: add noise in the reverse steps.
      mean_type: what the denoiser predicts.
      cond: passed through.

    Returns:
      ``[B, I]`` scores.
    """
    T = schedule.num_steps
    if not 0 <= noise_steps <= T:
        raise ValueError(f"noise_steps must be in [0, {T}], got {noise_steps}")
    x = x0
    if noise_steps > 0:
        if key is None:
            raise ValueError("diffrec_reverse with noise_steps > 0 needs a key")
        keys_B = batch_keys(key, x0.shape[0])
        z = normal_per_example(keys_B, T, x0.shape, x0.dtype)  # step id T: unused by the loop
        x = dif.q_sample(schedule, x0, _t_batch(noise_steps - 1, x0), z)
    return ancestral_sample(
        denoise_fn, schedule, x, key, cond=cond, mean_type=mean_type, noise=sampling_noise
    )


def iterate_denoiser(
    denoise_fn: DenoiseFn, x: jnp.ndarray, num_steps: int, *, cond: Any = None
) -> jnp.ndarray:
    """DiffRec's ``noise_scale == 0`` inference: ``x <- f(x, t)`` for ``t = T-1..0``."""

    def step(x, t):
        return denoise_fn(x, _t_batch(t, x), cond), None

    x, _ = jax.lax.scan(step, x, jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32))
    return x


# ----------------------------------------------------------------------------------------------
# DDIM
# ----------------------------------------------------------------------------------------------


def ddim_sample(
    denoise_fn: DenoiseFn,
    schedule: Schedule,
    x_T: jnp.ndarray,
    key: jax.Array | None = None,
    *,
    num_steps: int | None = None,
    eta: float = 0.0,
    mean_type: str = "eps",
    cond: Any = None,
) -> jnp.ndarray:
    """DDIM (Song et al. 2021, Eq. 12) over an evenly spaced sub-sequence of steps.

    From ``t`` to the previous step ``s`` of the sub-sequence (``abar_{-1} = 1`` after the last):
    ``sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)`` and
    ``x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z``.
    ``eta = 0`` is deterministic; ``eta = 1`` with all steps is DDPM ancestral sampling with the
    posterior variance (the same formula and, for the same key, the same noise).

    Args:
      num_steps: length of the sub-sequence (default: all ``T`` steps).
      eta: stochasticity; a Python float or a traced scalar.
    """
    T = schedule.num_steps
    ts = spaced_timesteps(T, num_steps)
    prev = np.append(ts[1:], -1).astype(np.int32)
    if key is None:
        if not (isinstance(eta, (int, float)) and eta == 0):
            raise ValueError("ddim_sample with eta != 0 needs a key")
        keys_B = None
    else:
        keys_B = batch_keys(key, x_T.shape[0])
    abar_ext = jnp.concatenate([schedule.alphas_cumprod, jnp.ones((1,), jnp.float32)])
    one_m_ext = jnp.concatenate([schedule.one_minus_alphas_cumprod, jnp.zeros((1,), jnp.float32)])

    def step(x, ts_pair):
        t, s = ts_pair
        t_B = _t_batch(t, x)
        out = denoise_fn(x, t_B, cond)
        x0_hat = dif.predict_x0(schedule, x, t_B, out, mean_type)
        eps_hat = dif.predict_eps(schedule, x, t_B, out, mean_type)
        abar_t, abar_s = abar_ext[t], abar_ext[s]  # index -1 -> the appended 1
        om_t, om_s = one_m_ext[t], one_m_ext[s]
        sigma = eta * jnp.sqrt(om_s / om_t) * jnp.sqrt(jnp.maximum(1.0 - abar_t / abar_s, 0.0))
        x_next = jnp.sqrt(abar_s) * x0_hat + jnp.sqrt(jnp.maximum(om_s - sigma**2, 0.0)) * eps_hat
        if keys_B is not None:
            x_next = x_next + sigma * normal_per_example(keys_B, t, x.shape, x.dtype)
        return x_next, None

    x, _ = jax.lax.scan(step, x_T, (jnp.asarray(ts), jnp.asarray(prev)))
    return x


# ----------------------------------------------------------------------------------------------
# VE: annealed Langevin dynamics (NCSN)
# ----------------------------------------------------------------------------------------------


def _score_from(out, x, sigma, mean_type):
    if mean_type == "score":
        return out
    if mean_type == "eps":
        return -out / sigma
    if mean_type == "x0":
        return (out - x) / sigma**2
    raise ValueError(f"VE mean_type must be 'score', 'eps' or 'x0', got {mean_type!r}")


def _eps_from_ve(out, x, sigma, mean_type):
    if mean_type == "eps":
        return out
    if mean_type == "score":
        return -sigma * out
    if mean_type == "x0":
        return (x - out) / sigma
    raise ValueError(f"VE mean_type must be 'score', 'eps' or 'x0', got {mean_type!r}")


def annealed_langevin(
    denoise_fn: DenoiseFn,
    schedule: VESchedule,
    x: jnp.ndarray,
    key: jax.Array,
    *,
    n_steps_each: int = 100,
    step_lr: float = 2e-5,
    mean_type: str = "score",
    denoise_last: bool = True,
    cond: Any = None,
) -> jnp.ndarray:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1), a scan of scans.

    For each level ``i`` (``sigma_0 > ... > sigma_{L-1}``): ``a_i = step_lr (sigma_i /
    sigma_{L-1})^2`` and ``n_steps_each`` times ``x <- x + a_i s(x, i) + sqrt(2 a_i) z``. With
    ``denoise_last`` a final Tweedie step ``x <- x + sigma_{L-1}^2 s(x, L-1)`` removes the last
    noise (Jolicoeur-Martineau et al. 2021).

    Args:
      denoise_fn: ``f(x, level_B, cond)`` with ``level_B`` the int noise-level index.
      schedule: the :class:`VESchedule`.
      mean_type: ``score`` (``s = grad log p``), ``eps`` or ``x0``.
    """
    sigmas = schedule.sigmas
    L = schedule.num_steps
    keys_B = batch_keys(key, x.shape[0])

    def level(x, i):
        sigma = sigmas[i]
        a = step_lr * (sigma / sigmas[-1]) ** 2
        i_B = _t_batch(i, x)

        def inner(x, j):
            s = _score_from(denoise_fn(x, i_B, cond), x, sigma, mean_type)
            z = normal_per_example(keys_B, i * n_steps_each + j, x.shape, x.dtype)
            return x + a * s + jnp.sqrt(2.0 * a) * z, None

        x, _ = jax.lax.scan(inner, x, jnp.arange(n_steps_each))
        return x, None

    x, _ = jax.lax.scan(level, x, jnp.arange(L, dtype=jnp.int32))
    if denoise_last:
        i_B = _t_batch(L - 1, x)
        x = x + sigmas[-1] ** 2 * _score_from(denoise_fn(x, i_B, cond), x, sigmas[-1], mean_type)
    return x


# ----------------------------------------------------------------------------------------------
# Probability-flow ODE (VP and VE), Euler and Heun
# ----------------------------------------------------------------------------------------------


def probability_flow_ode(
    denoise_fn: DenoiseFn,
    schedule: Schedule | VESchedule,
    x: jnp.ndarray,
    *,
    method: str = "heun",
    num_steps: int | None = None,
    mean_type: str = "eps",
    cond: Any = None,
) -> jnp.ndarray:
    """Integrates the probability-flow ODE (Song et al. 2021) from the noisiest step to ``sigma = 0``.

    Both processes are written in the variance-exploding form ``y = x_0 + sigma eps`` where the
    ODE is ``dy / dsigma = eps_hat(y, sigma)`` (Karras et al. 2022, Eq. 4):

    * VE: ``y = x`` and ``sigma`` is the schedule's noise level;
    * VP: ``y = x / sqrt(abar_t)`` and ``sigma_t = sqrt(1/abar_t - 1)``; this is the VP-SDE's
      probability-flow ODE after the change of variables, and its Euler step is DDIM with eta=0.

    ``method="euler"`` takes ``y' = y + (sigma' - sigma) eps_hat``; ``"heun"`` corrects with the
    slope at the end point (2nd order), except on the last step to ``sigma = 0`` (Euler).

    Args:
      denoise_fn: ``f(x, t_B, cond)`` (``t`` is the step or level index).
      schedule: :class:`Schedule` (VP) or :class:`VESchedule`.
      x: ``[B, ...]`` start at the noisiest step (``x_T`` for VP, ``x_0 + sigma_0 z`` for VE).
      method: ``euler`` or ``heun``.
      num_steps: evenly spaced sub-sequence of steps (default: all).
      mean_type: VP: ``x0``/``eps``/``v``; VE: ``score``/``eps``/``x0``.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method must be 'euler' or 'heun', got {method!r}")
    if isinstance(schedule, VESchedule):
        L = schedule.num_steps
        # ascending level = decreasing sigma; step T-1 (noisiest) <-> level 0
        idx = (L - 1 - spaced_timesteps(L, num_steps)).astype(np.int32)
        sig_ext = jnp.concatenate([schedule.sigmas, jnp.zeros((1,), jnp.float32)])
        nxt = np.append(idx[1:], L).astype(np.int32)  # index L -> sigma 0

        def to_x(y, i):
            return y

        def eps_at(y, i):
            i_B = _t_batch(i, y)
            return _eps_from_ve(denoise_fn(y, i_B, cond), y, sig_ext[i], mean_type)

        y0 = x
        final_idx = L
    else:
        T = schedule.num_steps
        idx = spaced_timesteps(T, num_steps)  # descending t = decreasing sigma
        sqrt_ab = jnp.concatenate([schedule.sqrt_alphas_cumprod, jnp.ones((1,), jnp.float32)])
        sig_ext = jnp.concatenate(
            [schedule.sqrt_recipm1_alphas_cumprod, jnp.zeros((1,), jnp.float32)]
        )
        nxt = np.append(idx[1:], T).astype(np.int32)  # index T -> sigma 0 (abar = 1)

        def to_x(y, i):
            return y * sqrt_ab[i]

        def eps_at(y, i):
            i_B = _t_batch(i, y)
            xt = y * sqrt_ab[i]
            return dif.predict_eps(schedule, xt, i_B, denoise_fn(xt, i_B, cond), mean_type)

        y0 = x / sqrt_ab[int(idx[0])]
        final_idx = T

    def step(y, pair):
        i, j = pair
        ds = sig_ext[j] - sig_ext[i]
        d1 = eps_at(y, i)
        y_euler = y + ds * d1
        if method == "euler":
            return y_euler, None
        j_safe = jnp.where(j == final_idx, i, j)  # never call the denoiser at sigma = 0
        d2 = eps_at(y_euler, j_safe)
        y_heun = y + ds * 0.5 * (d1 + d2)
        return jnp.where(j == final_idx, y_euler, y_heun), None

    y, _ = jax.lax.scan(step, y0, (jnp.asarray(idx), jnp.asarray(nxt)))
    return to_x(y, final_idx)


# ----------------------------------------------------------------------------------------------
# Guidance combinators
# ----------------------------------------------------------------------------------------------


def classifier_free_guidance(
    denoise_fn: DenoiseFn, guidance_scale, null_cond: Any
) -> DenoiseFn:
    """Classifier-free guidance (Ho & Salimans 2022) as a new denoiser.

    ``f_w(x, t, c) = (1 + w) f(x, t, c) - w f(x, t, null)``, the form DreamRec uses; ``w = 0``
    is the conditional model. The combination is linear, so it is valid for any ``mean_type``.

    Args:
      denoise_fn: ``f(x, t_B, cond)``.
      guidance_scale: ``w`` (float or traced scalar).
      null_cond: the "no condition" input: an array broadcast to ``cond``'s shape, or a callable
        ``null_cond(cond)`` returning it.
    """

    def guided(x, t_B, cond):
        null = null_cond(cond) if callable(null_cond) else jnp.broadcast_to(null_cond, jnp.shape(cond))
        return (1.0 + guidance_scale) * denoise_fn(x, t_B, cond) - guidance_scale * denoise_fn(
            x, t_B, null
        )

    return guided


def classifier_guidance(
    denoise_fn: DenoiseFn,
    log_prob_fn: Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray],
    schedule: Schedule,
    *,
    scale: float = 1.0,
    mean_type: str = "eps",
) -> DenoiseFn:
    """Classifier guidance (Dhariwal & Nichol 2021, Alg. 2 in eps form) as a new denoiser.

    ``eps_tilde = eps_hat - scale sqrt(1 - abar_t) grad_x log p(c | x_t, t)``, returned in the
    denoiser's own ``mean_type`` so any sampler can use it.

    Args:
      log_prob_fn: ``log_p(x_t, t_B, cond) -> [B]`` log-probabilities of the condition.
    """

    def guided(x, t_B, cond):
        out = denoise_fn(x, t_B, cond)
        eps = dif.predict_eps(schedule, x, t_B, out, mean_type)
        grad = jax.grad(lambda xx: jnp.sum(log_prob_fn(xx, t_B, cond)))(x)
        eps = eps - scale * dif.extract(schedule.sqrt_one_minus_alphas_cumprod, t_B, x.ndim) * grad
        return dif.from_eps(schedule, x, t_B, eps, mean_type)

    return guided


# ----------------------------------------------------------------------------------------------
# Generic fixed-grid ODE integration
# ----------------------------------------------------------------------------------------------

ODE_METHODS = ("euler", "heun", "rk4")


def odeint_fixed(
    f: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    x0: jnp.ndarray,
    ts,
    *,
    method: str = "euler",
    return_all: bool = False,
):
    """Integrates ``dx/dt = f(x, t)`` from ``ts[0]`` over the grid ``ts`` with a fixed-step method.

    A pure function of its arrays: one ``lax.scan`` over the ``len(ts) - 1`` intervals, nothing
    model-specific (``f`` is any JAX callable; it may close over arrays). With ``h = t' - t``:

    * ``euler``: ``x' = x + h k1``, ``k1 = f(x, t)`` (1st order);
    * ``heun``: ``x' = x + h (k1 + k2) / 2``, ``k2 = f(x + h k1, t')`` (explicit trapezoid, 2nd);
    * ``rk4``: the classical Runge-Kutta scheme (4th order),
      ``x' = x + h (k1 + 2 k2 + 2 k3 + k4) / 6`` with ``k2 = f(x + h k1 / 2, t + h / 2)``,
      ``k3 = f(x + h k2 / 2, t + h / 2)``, ``k4 = f(x + h k3, t')``.

    The grid may be decreasing (integration backwards in time). For a linear ``f(x) = x M`` one
    step is the matrix polynomial ``x P(h M)`` with ``P(z) = 1 + z`` (euler),
    ``1 + z + z^2 / 2`` (heun) or ``1 + z + z^2/2 + z^3/6 + z^4/24`` (rk4), i.e. the Taylor
    polynomial of ``exp(h M)`` of the method's order.

    Args:
      f: ``f(x, t) -> dx/dt`` with the shape of ``x``; ``t`` is a float32 scalar.
      x0: the state at ``ts[0]`` (any shape).
      ts: 1-D grid of at least one time (NumPy or JAX); a single time returns ``x0``.
      method: ``euler``, ``heun`` or ``rk4``.
      return_all: also return the states at every grid point.

    Returns:
      The state at ``ts[-1]``; with ``return_all`` the pair ``(x_final, xs)`` where ``xs`` stacks
      the states at ``ts[0], ..., ts[-1]`` on a new leading axis (``xs[0]`` is ``x0``).
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}")
    ts = jnp.asarray(ts, jnp.float32)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"ts must be a non-empty 1-D grid, got shape {ts.shape}")

    def step(x, pair):
        t, t_next = pair
        h = (t_next - t).astype(x.dtype)
        k1 = f(x, t)
        if method == "euler":
            x_next = x + h * k1
        elif method == "heun":
            k2 = f(x + h * k1, t_next)
            x_next = x + 0.5 * h * (k1 + k2)
        else:
            t_mid = t + 0.5 * (t_next - t)
            k2 = f(x + 0.5 * h * k1, t_mid)
            k3 = f(x + 0.5 * h * k2, t_mid)
            k4 = f(x + h * k3, t_next)
            x_next = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return x_next, x_next

    x, xs = jax.lax.scan(step, x0, (ts[:-1], ts[1:]))
    if return_all:
        return x, jnp.concatenate([x0[None], xs], axis=0)
    return x


# ----------------------------------------------------------------------------------------------
# Deterministic degradations ("cold" diffusion: blurring, graph smoothing, masking ...)
# ----------------------------------------------------------------------------------------------


def cold_sample(
    denoise_fn: DenoiseFn,
    degrade_fn: Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray],
    x_T: jnp.ndarray,
    ts,
    *,
    cond: Any = None,
    decay: float = 1.0,
) -> jnp.ndarray:
    """Reverse process of a deterministic degradation ``z_t = D(x_0, t)`` (one ``lax.scan``).

    Over a descending grid ``ts = (t_N > ... > t_0)``, from ``z = x_T`` (the degraded input at
    ``t_N``), each step ``t -> s`` predicts ``x0_hat = f(z, t)`` and moves to

        ``z_s = D(x0_hat, s) + decay^(t - s) (z_t - D(x0_hat, t))``.

    ``decay = 1`` is Bansal et al.'s improved "cold diffusion" sampler (2022, Alg. 2: the
    degradation's error is carried along, so a perfect ``f`` returns ``z_T``'s own ``x_0``
    exactly); ``decay = 0`` is the naive one (Alg. 1, ``z_s = D(x0_hat, s)``); values in between
    damp the carried residual (GiffCF's ``noise_decay``). The result is ``z`` at ``t_0``; with
    ``t_0 = 0`` and ``D(x, 0) = x`` it is ``x0_hat`` plus the damped residual.

    Args:
      denoise_fn: ``f(z_t, t_B, cond) -> x0_hat`` (``t_B``: ``[B]`` int32 steps).
      degrade_fn: ``D(x, t_B, cond)``, the forward degradation at step ``t`` (``D(x, 0) = x``
        for a sampler that ends on a clean estimate).
      x_T: ``[B, ...]`` start, the degraded input at ``ts[0]``.
      ts: descending 1-D integer grid of at least two steps.
      cond: passed to both functions unchanged.
      decay: residual damping in ``[0, 1]`` (a float or traced scalar).

    Returns:
      ``[B, ...]`` the state at ``ts[-1]``.
    """
    ts = np.asarray(ts, np.int32)
    if ts.ndim != 1 or ts.shape[0] < 2 or np.any(np.diff(ts) >= 0):
        raise ValueError(f"ts must be a strictly descending grid of >= 2 steps, got {ts.tolist()}")
    decay = jnp.asarray(decay, jnp.float32)

    def step(z, pair):
        t, s = pair
        t_B, s_B = _t_batch(t, z), _t_batch(s, z)
        x0_hat = denoise_fn(z, t_B, cond)
        z_s = degrade_fn(x0_hat, s_B, cond)
        resid = z - degrade_fn(x0_hat, t_B, cond)
        return z_s + (decay ** (t - s).astype(jnp.float32)) * resid, None

    z, _ = jax.lax.scan(step, x_T, (jnp.asarray(ts[:-1]), jnp.asarray(ts[1:])))
    return z


# ----------------------------------------------------------------------------------------------
# Flow matching with an x1-predicting network (continuous or projected / discrete states)
# ----------------------------------------------------------------------------------------------


def flow_sample(
    predict_x1: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
    x_start: jnp.ndarray,
    ts,
    *,
    project: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
):
    """Euler integration of a flow-matching ODE whose network predicts the endpoint ``x_1``.

    For the linear interpolation path ``x_t = t x_1 + (1 - t) x_0`` the conditional velocity at
    ``x_t`` is ``(x_1 - x_t) / (1 - t)``, so a network ``f(x_t, t) ~ E[x_1 | x_t]`` gives the
    marginal velocity ``v(x, t) = (f(x, t) - x) / (1 - t)``. Over an increasing grid
    ``ts = (t_0 < ... < t_n)`` with every evaluation time ``t_0 .. t_{n-1} < 1``, each step is

        ``x' = P(x + (t' - t) v(x, t))``,

    with ``P = project`` (identity when None; e.g. rounding to a discrete state space, applied to
    every new state). One ``lax.scan`` over the ``n`` intervals, ``n`` network calls. With
    ``t_n = 1`` and no projection the last step lands exactly on the last prediction.

    Args:
      predict_x1: ``f(x, t) -> x1_hat`` with the shape of ``x``; ``t`` is a float32 scalar.
      x_start: the state at ``ts[0]``.
      ts: increasing 1-D grid of at least two times (NumPy or JAX), ``ts[:-1] < 1``.
      project: optional map applied to each new state.

    Returns:
      ``(x_end, x1_hat)``: the state at ``ts[-1]`` and the network's last prediction (made at
      ``ts[-2]``).
    """
    ts_np = None
    try:
        ts_np = np.asarray(ts, np.float64)
    except (TypeError, jax.errors.TracerArrayConversionError):  # traced grid: no checks
        pass
    if ts_np is not None:
        if ts_np.ndim != 1 or ts_np.shape[0] < 2 or np.any(np.diff(ts_np) <= 0):
            raise ValueError(f"ts must be a strictly increasing grid of >= 2 times, got {ts_np.tolist()}")
        if np.any(ts_np[:-1] >= 1.0):
            raise ValueError(f"the evaluation times ts[:-1] must be < 1, got {ts_np.tolist()}")
    ts = jnp.asarray(ts, jnp.float32)
    proj = (lambda x: x) if project is None else project

    def step(carry, pair):
        x, _ = carry
        t, t_next = pair
        x1_hat = predict_x1(x, t)
        v = (x1_hat - x) / (1.0 - t).astype(x.dtype)
        return (proj(x + (t_next - t).astype(x.dtype) * v), x1_hat), None

    (x, x1_hat), _ = jax.lax.scan(step, (x_start, jnp.zeros_like(x_start)), (ts[:-1], ts[1:]))
    return x, x1_hat
