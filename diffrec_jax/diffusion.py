"""Forward process, posterior, parameterisations and the training loss of Gaussian diffusion.

All functions are pure functions of arrays (and PRNG keys where they draw noise). They take a
:class:`~diffrec_jax.schedules.Schedule` and a leading batch axis ``B``; ``t_B`` holds one integer
step per example. A denoiser is any callable ``denoise_fn(x_t, t_B, cond) -> out`` whose output is,
according to ``mean_type``:

* ``"x0"``: a prediction of the clean input ``x_0`` (DiffRec, DreamRec);
* ``"eps"``: a prediction of the noise ``eps`` (DDPM);
* ``"v"``: a prediction of ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022).

Nothing here knows about recommendation models, data or configs.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffrec_jax.schedules import Schedule

DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]
MEAN_TYPES = ("x0", "eps", "v")


def extract(arr_T: jnp.ndarray, t_B: jnp.ndarray, ndim: int) -> jnp.ndarray:
    """Gathers ``arr_T[t_B]`` and reshapes it to ``[B, 1, ..., 1]`` (``ndim`` axes) for broadcasting."""
    out = jnp.take(arr_T, t_B, axis=0)
    return out.reshape(out.shape + (1,) * (ndim - out.ndim))


def q_sample(schedule: Schedule, x0: jnp.ndarray, t_B: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    """Draws from ``q(x_t | x_0)``: ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.

    Args:
      schedule: the VP schedule.
      x0: ``[B, ...]`` clean inputs.
      t_B: ``[B]`` int steps.
      noise: ``eps`` with the shape of ``x0``.
    """
    return (
        extract(schedule.sqrt_alphas_cumprod, t_B, x0.ndim) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t_B, x0.ndim) * noise
    )


def q_posterior(schedule: Schedule, x0: jnp.ndarray, x_t: jnp.ndarray, t_B: jnp.ndarray):
    """Mean, variance and clipped log-variance of ``q(x_{t-1} | x_t, x_0)`` (Ho et al. Eq. 6-7).

    ``mean = c1_t x_0 + c2_t x_t``; variance ``beta_t (1 - abar_{t-1}) / (1 - abar_t)``.

    Returns:
      ``(mean, var, log_var_clipped)``; ``mean`` has the shape of ``x_t``, the others ``[B, 1...]``.
    """
    n = x_t.ndim
    mean = extract(schedule.posterior_mean_coef1, t_B, n) * x0 + extract(
        schedule.posterior_mean_coef2, t_B, n
    ) * x_t
    return (
        mean,
        extract(schedule.posterior_variance, t_B, n),
        extract(schedule.posterior_log_variance_clipped, t_B, n),
    )


def x0_from_eps(schedule: Schedule, x_t, t_B, eps):
    """``x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps``."""
    n = x_t.ndim
    return extract(schedule.sqrt_recip_alphas_cumprod, t_B, n) * x_t - extract(
        schedule.sqrt_recipm1_alphas_cumprod, t_B, n
    ) * eps


def eps_from_x0(schedule: Schedule, x_t, t_B, x0):
    """``eps = (sqrt(1/abar_t) x_t - x_0) / sqrt(1/abar_t - 1)``."""
    n = x_t.ndim
    return (extract(schedule.sqrt_recip_alphas_cumprod, t_B, n) * x_t - x0) / extract(
        schedule.sqrt_recipm1_alphas_cumprod, t_B, n
    )


def v_from_x0_eps(schedule: Schedule, x0, t_B, eps):
    """``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``."""
    n = x0.ndim
    return extract(schedule.sqrt_alphas_cumprod, t_B, n) * eps - extract(
        schedule.sqrt_one_minus_alphas_cumprod, t_B, n
    ) * x0


def x0_from_v(schedule: Schedule, x_t, t_B, v):
    """``x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``."""
    n = x_t.ndim
    return extract(schedule.sqrt_alphas_cumprod, t_B, n) * x_t - extract(
        schedule.sqrt_one_minus_alphas_cumprod, t_B, n
    ) * v


def eps_from_v(schedule: Schedule, x_t, t_B, v):
    """``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v``."""
    n = x_t.ndim
    return extract(schedule.sqrt_one_minus_alphas_cumprod, t_B, n) * x_t + extract(
        schedule.sqrt_alphas_cumprod, t_B, n
    ) * v


def predict_x0(schedule: Schedule, x_t, t_B, out, mean_type: str):
    """Converts a denoiser output of any ``mean_type`` to a prediction of ``x_0``."""
    if mean_type == "x0":
        return out
    if mean_type == "eps":
        return x0_from_eps(schedule, x_t, t_B, out)
    if mean_type == "v":
        return x0_from_v(schedule, x_t, t_B, out)
    raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")


def predict_eps(schedule: Schedule, x_t, t_B, out, mean_type: str):
    """Converts a denoiser output of any ``mean_type`` to a prediction of ``eps``."""
    if mean_type == "eps":
        return out
    if mean_type == "x0":
        return eps_from_x0(schedule, x_t, t_B, out)
    if mean_type == "v":
        return eps_from_v(schedule, x_t, t_B, out)
    raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")


def from_eps(schedule: Schedule, x_t, t_B, eps, mean_type: str):
    """Expresses a noise prediction in the parameterisation ``mean_type`` (inverse of ``predict_eps``)."""
    if mean_type == "eps":
        return eps
    x0 = x0_from_eps(schedule, x_t, t_B, eps)
    if mean_type == "x0":
        return x0
    if mean_type == "v":
        return v_from_x0_eps(schedule, x0, t_B, eps)
    raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")


def p_mean_variance(schedule: Schedule, out, x_t, t_B, mean_type: str):
    """Mean and clipped log-variance of ``p(x_{t-1} | x_t)`` from a denoiser output.

    The model's ``x_0`` prediction is put into the posterior mean: ``c1_t x0_hat + c2_t x_t``.

    Returns:
      ``(mean, log_var_clipped, x0_hat)``.
    """
    x0_hat = predict_x0(schedule, x_t, t_B, out, mean_type)
    mean, _, log_var = q_posterior(schedule, x0_hat, x_t, t_B)
    return mean, log_var, x0_hat


def loss_weights(schedule: Schedule, mean_type: str, reweight: bool) -> jnp.ndarray:
    """Per-step loss weights ``[T]``, as DiffRec defines them (spec section 5.1).

    * ``reweight=False``: all ones.
    * ``x0``: ``w_t = SNR(t-1) - SNR(t)`` for ``t >= 1`` and ``w_0 = 1`` (the ELBO weight of an
      x0-MSE, up to a factor 1/2).
    * ``eps``: ``w_t = (1 - abar_t) / ((1 - abar_{t-1})^2 (1 - beta_t))`` for ``t >= 1``, ``w_0 = 1``.
    * ``v``: all ones (no ELBO weighting is defined for it here).
    """
    T = schedule.betas.shape[0]
    if not reweight or mean_type == "v" or T == 1:
        return jnp.ones((T,), jnp.float32)
    if mean_type == "x0":
        w = schedule.snr[:-1] - schedule.snr[1:]
    elif mean_type == "eps":
        w = schedule.one_minus_alphas_cumprod[1:] / (
            schedule.one_minus_alphas_cumprod_prev[1:] ** 2 * (1.0 - schedule.betas[1:])
        )
    else:
        raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")
    return jnp.concatenate([jnp.ones((1,), jnp.float32), w.astype(jnp.float32)])


def per_example_loss(
    schedule: Schedule,
    out: jnp.ndarray,
    x0: jnp.ndarray,
    x_t: jnp.ndarray,
    t_B: jnp.ndarray,
    noise: jnp.ndarray,
    *,
    mean_type: str,
    reweight: bool,
) -> jnp.ndarray:
    """Weighted per-example MSE ``w_t * mean_features((target - out)^2)``, shape ``[B]``.

    The target is ``x_0``, ``eps`` or ``v`` according to ``mean_type``. For ``eps`` with
    ``reweight``, the ``t=0`` term is the x0 reconstruction MSE halved, as in DiffRec.
    """
    axes = tuple(range(1, x0.ndim))
    if mean_type == "x0":
        target = x0
    elif mean_type == "eps":
        target = noise
    elif mean_type == "v":
        target = v_from_x0_eps(schedule, x0, t_B, noise)
    else:
        raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")
    mse = jnp.mean(jnp.square(target - out), axis=axes)
    w = jnp.take(loss_weights(schedule, mean_type, reweight), t_B)
    if mean_type == "eps" and reweight:
        x0_hat = x0_from_eps(schedule, x_t, t_B, out)
        mse0 = jnp.mean(jnp.square(x0 - x0_hat), axis=axes) / 2.0
        mse = jnp.where(t_B == 0, mse0, mse)
    return w * mse


def get_loss_fn(
    schedule: Schedule,
    *,
    mean_type: str = "x0",
    reweight: bool = True,
) -> Callable:
    """Returns ``loss_fn(denoise_fn, x0, t_B, key, cond=None) -> (per_example_loss_B, aux)``.

    The closure draws ``eps ~ N(0, I)`` from ``key``, forms ``x_t`` with :func:`q_sample`, calls the
    denoiser and returns the weighted per-example loss of :func:`per_example_loss`. Timestep
    sampling and importance weights are left to the caller (see :mod:`diffrec_jax.timesteps`), so
    the same loss serves uniform and loss-aware sampling. ``aux`` holds ``x_t`` and the output.
    """
    if mean_type not in MEAN_TYPES:
        raise ValueError(f"mean_type must be one of {MEAN_TYPES}, got {mean_type!r}")

    def loss_fn(denoise_fn: DenoiseFn, x0, t_B, key, cond=None):
        noise = jax.random.normal(key, x0.shape, x0.dtype)
        x_t = q_sample(schedule, x0, t_B, noise)
        out = denoise_fn(x_t, t_B, cond)
        loss_B = per_example_loss(
            schedule, out, x0, x_t, t_B, noise, mean_type=mean_type, reweight=reweight
        )
        return loss_B, {"x_t": x_t, "out": out}

    return loss_fn
