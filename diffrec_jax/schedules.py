"""Noise schedules as pure functions returning arrays.

Every schedule is computed in NumPy float64 (as the reference implementations do) and cast to
float32 once, when a :class:`Schedule` is built. A :class:`Schedule` is a NamedTuple of ``[T]``
arrays, so it is a pytree: it can be passed to ``jax.jit``-compiled functions as an argument, closed
over as a constant, or stacked and ``vmap``-ed over.

Notation (0-indexed steps ``t = 0..T-1``, as in the DiffRec and DreamRec code):

* ``alpha_t = 1 - beta_t``, ``alphas_cumprod_t = prod_{s<=t} alpha_s`` (written ``abar_t``),
  ``abar_{-1} = 1``;
* forward process ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``;
* posterior ``q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, sigma2_t I)`` with
  ``c1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t)``,
  ``c2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)`` and
  ``sigma2_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (Ho et al. 2020, Eq. 6-7).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np


class Schedule(NamedTuple):
    """A discrete variance-preserving (VP) diffusion schedule; every field is float32 ``[T]``."""

    betas: jnp.ndarray
    alphas_cumprod: jnp.ndarray
    alphas_cumprod_prev: jnp.ndarray
    sqrt_alphas_cumprod: jnp.ndarray
    sqrt_one_minus_alphas_cumprod: jnp.ndarray
    sqrt_recip_alphas_cumprod: jnp.ndarray
    sqrt_recipm1_alphas_cumprod: jnp.ndarray
    posterior_variance: jnp.ndarray
    posterior_log_variance_clipped: jnp.ndarray
    posterior_mean_coef1: jnp.ndarray
    posterior_mean_coef2: jnp.ndarray
    one_minus_alphas_cumprod: jnp.ndarray
    one_minus_alphas_cumprod_prev: jnp.ndarray
    snr: jnp.ndarray

    @property
    def num_steps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.shape[-1])


class VESchedule(NamedTuple):
    """A variance-exploding (VE / NCSN) schedule: ``x_t = x_0 + sigma_t * eps``.

    ``sigmas`` is float32 ``[L]`` in *decreasing* order, as NCSN indexes its noise levels
    (level 0 is the noisiest).
    """

    sigmas: jnp.ndarray

    @property
    def num_steps(self) -> int:
        """L, the number of noise levels."""
        return int(self.sigmas.shape[-1])


def _check_betas(betas: np.ndarray) -> None:
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all(np.isfinite(betas)):
        raise ValueError("betas contain NaN or infinity")
    if np.any(betas <= 0) or np.any(betas > 1):
        raise ValueError(
            f"betas must lie in (0, 1]; got min {betas.min():.3g}, max {betas.max():.3g}"
        )


def from_betas(betas) -> Schedule:
    """Builds every derived array of a VP schedule from its betas.

    Args:
      betas: ``[T]`` array-like of per-step variances ``beta_t`` in (0, 1].

    Returns:
      A :class:`Schedule` of float32 ``[T]`` arrays, derived in float64 and then cast.
      ``posterior_log_variance_clipped`` replaces the ``t=0`` entry (where the posterior
      variance is 0) by the ``t=1`` entry, as in Ho et al. and DiffRec.
    """
    b = np.asarray(betas, dtype=np.float64)
    _check_betas(b)
    alphas = 1.0 - b
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = b * (1.0 - abar_prev) / (1.0 - abar)
    if b.size > 1:
        log_post = np.log(np.append(post_var[1], post_var[1:]))
    else:  # A one-step chain has no non-zero posterior variance to borrow.
        log_post = np.log(np.maximum(post_var, 1e-20))
    fields = dict(
        betas=b,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / abar),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / abar - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=log_post,
        posterior_mean_coef1=b * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
        # Kept apart because 1 - abar is tiny for DiffRec's schedules (about 1e-5) and loses
        # most of its digits if recomputed from float32 abar.
        one_minus_alphas_cumprod=1.0 - abar,
        one_minus_alphas_cumprod_prev=1.0 - abar_prev,
        snr=abar / (1.0 - abar),
    )
    return Schedule(**{k: jnp.asarray(v, dtype=jnp.float32) for k, v in fields.items()})


# ----------------------------------------------------------------------------------------------
# Beta factories (NumPy float64). Each returns ``[T]`` betas.
# ----------------------------------------------------------------------------------------------


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM's linear schedule: ``beta_t = linspace(beta_start, beta_end, T)[t]`` (Ho et al. 2020)."""
    _check_steps(num_steps)
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, Eq. 17).

    ``abar(u) = cos^2(((u + s) / (1 + s)) * pi / 2)`` on ``u = t / T`` and
    ``beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta)``.
    """
    _check_steps(num_steps)
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    abar = np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def diffrec_betas(
    num_steps: int,
    noise_scale: float,
    noise_min: float,
    noise_max: float,
    *,
    beta_fixed: bool = True,
    max_beta: float = 0.999,
) -> np.ndarray:
    """DiffRec's "linear-var" schedule (Wang et al. 2023; spec section 2).

    The target variances ``v_t = linspace(s*m, s*M, T)[t]`` are made exact for ``1 - abar_t``:
    ``beta_0 = v_0`` and ``beta_t = min(1 - (1 - v_t) / (1 - v_{t-1}), max_beta)``.
    With ``beta_fixed`` (DiffRec, T-DiffRec) ``beta_0`` is then overridden to ``1e-5``;
    L-DiffRec and LT-DiffRec keep ``beta_0 = v_0`` (``beta_fixed=False``).

    Args:
      num_steps: T.
      noise_scale: s, multiplies both bounds.
      noise_min: m, must be < noise_max.
      noise_max: M.
      beta_fixed: override ``beta_0 := 1e-5`` as the reference does.
      max_beta: upper clip of each beta.
    """
    _check_steps(num_steps)
    if noise_scale <= 0:
        raise ValueError(f"noise_scale must be > 0 to build a schedule, got {noise_scale}")
    if not noise_min < noise_max:
        raise ValueError(f"noise_min ({noise_min}) must be < noise_max ({noise_max})")
    if noise_min <= 0 or noise_scale * noise_max >= 1:
        raise ValueError(
            f"need 0 < noise_min and noise_scale*noise_max < 1, got {noise_min}, "
            f"{noise_scale * noise_max}"
        )
    v = np.linspace(noise_scale * noise_min, noise_scale * noise_max, num_steps, dtype=np.float64)
    betas = np.empty(num_steps, dtype=np.float64)
    betas[0] = v[0]
    betas[1:] = np.minimum(1.0 - (1.0 - v[1:]) / (1.0 - v[:-1]), max_beta)
    if beta_fixed:
        betas[0] = 1e-5
    return betas


def exp_betas(num_steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> np.ndarray:
    """DreamRec's "exp" schedule: the discretised VP-SDE of Song et al. 2021.

    With ``x = linspace(1, 2T + 1, T)``:
    ``beta_t = 1 - exp(-beta_min / T - x_t (beta_max - beta_min) / (2 T^2))``.
    """
    _check_steps(num_steps)
    x = np.linspace(1, 2 * num_steps + 1, num_steps, dtype=np.float64)
    return 1.0 - np.exp(-beta_min / num_steps - x * (beta_max - beta_min) / (2.0 * num_steps**2))


def sqrt_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Diffusion-LM's sqrt schedule: ``abar(u) = 1 - sqrt(u + 1e-4)``, betas as in :func:`cosine_betas`."""
    _check_steps(num_steps)
    u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    abar = 1.0 - np.sqrt(u + 1e-4)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def ncsn_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> np.ndarray:
    """NCSN's geometric noise levels (Song & Ermon 2019), decreasing from sigma_max to sigma_min.

    ``sigma_i = sigma_max * (sigma_min / sigma_max)^(i / (L - 1))``.
    """
    _check_steps(num_levels)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_levels, dtype=np.float64))


def _check_steps(num_steps: int) -> None:
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"the number of steps must be a positive integer, got {num_steps}")


_BETA_FACTORIES = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "diffrec": diffrec_betas,
    "linear-var": diffrec_betas,
    "exp": exp_betas,
    "sqrt": sqrt_betas,
}


def make_schedule(kind: str, num_steps: int, **kwargs) -> Schedule:
    """Builds a VP :class:`Schedule` by name.

    Args:
      kind: one of ``linear``, ``cosine``, ``diffrec`` (alias ``linear-var``), ``exp``, ``sqrt``.
      num_steps: T.
      **kwargs: passed to the beta factory (e.g. ``noise_scale``, ``noise_min``, ``noise_max``,
        ``beta_fixed`` for ``diffrec``).

    Example:
      >>> s = make_schedule("diffrec", 40, noise_scale=0.005, noise_min=0.005, noise_max=0.01)
      >>> s.betas.shape
      (40,)
    """
    try:
        factory = _BETA_FACTORIES[kind]
    except KeyError:
        raise ValueError(
            f"unknown schedule kind {kind!r}; choose from {sorted(_BETA_FACTORIES)}"
        ) from None
    return from_betas(factory(num_steps, **kwargs))


def make_ve_schedule(sigma_max: float, sigma_min: float, num_levels: int) -> VESchedule:
    """A :class:`VESchedule` with NCSN's geometric sigmas."""
    return VESchedule(jnp.asarray(ncsn_sigmas(sigma_max, sigma_min, num_levels), jnp.float32))


