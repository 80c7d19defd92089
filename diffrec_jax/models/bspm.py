"""BSPM: blurring-sharpening process models (Choi, Hong, Park and Cho, SIGIR 2023), training-free.

Spec (our reading of the paper, arXiv 2211.09324; the authors' code was read to check the
settings, none of it is copied).

**Graph.** ``R`` is the binary ``[U, I]`` train matrix with user degrees ``d_u`` and item degrees
``d_i``. The normalised matrix is ``R~ = D_U^{-1/2} R D_I^{-1/2}`` and the normalised item-item
graph ``P~ = R~^T R~`` (``[I, I]``, symmetric, eigenvalues in ``[0, 1]``); its Laplacian is
``L = I - P~``. The *ideal low-pass* filter keeps the top ``k`` = ``factor_dim`` eigenvectors
``V`` (``[I, k]``) of ``P~`` (the right singular vectors of ``R~``):
``Pi = D_I^{-1/2} V V^T D_I^{1/2}`` (as in GF-CF, Shen et al. 2021).

**Processes.** A user's train row ``r(0) = x`` (``[I]``, as a row vector) is evolved by three
linear ODEs, each solved on a uniform grid of ``K + 1`` points over ``[0, T]``:

* blurring (heat equation on the item graph): ``dr/dt = r (P~ - I) = -r L`` on ``[0, T_b]``;
* ideal low-pass blurring: ``dr/dt = r (Pi - I)`` on ``[0, T_idl]``;
* sharpening (the reverse heat equation, an "anti-diffusion"):
  ``dr/dt = -r P~`` on ``[0, T_s]``, started from
  ``r_s(0) = r_b(T_b) + beta r_idl(T_idl)`` (``final_sharpening``, the paper's "early merge",
  BSPM-EM) or from ``r_b(T_b)`` alone, with ``beta r_idl(T_idl)`` added after (late merge, LM).

The score is ``r_s(T_s)`` or, with ``t_point_combination``, the mean of the blurring and
sharpening states at every grid point after ``t = 0`` (the paper's time-point combination).
``sharpening=False`` drops the sharpening (score ``r_b(T_b)`` plus the ideal term).

Every ODE goes through the core's generic integrator
:func:`diffrec_jax.samplers.odeint_fixed` (``euler``, ``heun`` or ``rk4``; the paper uses Euler
and RK4). With the reference's defaults (``T_b = 1``, ``K_b = 1``, Euler) the blurring step is
exactly ``x P~`` (GF-CF's linear filter), so BSPM subsumes GF-CF and LinearFilter models.

**Hyperparameters** (``config.model``): ``T_b``/``K_b``/``solver_blur`` (1, 1, euler),
``T_idl``/``K_idl``/``solver_idl`` (1, 1, euler), ``T_s``/``K_s``/``solver_sharp``
(2.5, 1, rk4: the paper's Gowalla setting), ``idl_beta`` (0.2), ``factor_dim`` (448, capped at
``I``), ``final_sharpening`` (True), ``sharpening`` (True), ``t_point_combination`` (False).

**Fit and cost.** ``fit`` builds ``P~`` (float64 Gram matrix ``R^T D_U^{-1} R`` over user blocks,
then scaled) and the eigenvectors of ``P~`` by ``numpy.linalg.eigh`` (``O(I^3)``, seconds at
``I = 2810``); ``score`` runs the ODEs on the batch of rows (each right-hand side one ``[B, I] x
[I, I]`` product). Nothing is learnt; the model is deterministic and ``key`` is unused.

**Not verified.** The paper reports Gowalla, Yelp2018 and Amazon-book only (no ML-1M or ML-100K
figure to compare with); its values of ``T_s``/``beta``/``k`` are tuned per dataset, and ours are
chosen on validation (``configs/bspm_ml1m.py``). Zero-degree items get ``D^{-1/2} = 0`` (their
column of ``P~`` is zero) and ``D^{1/2} = 0`` in ``Pi``; the reference divides by zero there.
The reference's ``rk4`` (torchdiffeq's fixed-grid RK4 uses the 3/8 rule) and ours (the classical
rule) agree to 4th order; for the linear ODEs here both are the same degree-4 polynomial of
``h M``, so they give the same numbers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffrec_jax import samplers
from diffrec_jax.models.baselines import gram_matrix

__all__ = ["BSPM", "normalized_item_graph"]

_DEFAULTS = {
    "T_b": 1.0,
    "K_b": 1,
    "solver_blur": "euler",
    "T_idl": 1.0,
    "K_idl": 1,
    "solver_idl": "euler",
    "T_s": 2.5,
    "K_s": 1,
    "solver_sharp": "rk4",
    "idl_beta": 0.2,
    "factor_dim": 448,
    "final_sharpening": True,
    "sharpening": True,
    "t_point_combination": False,
}


def normalized_item_graph(x_train) -> tuple[np.ndarray, np.ndarray]:
    """``P~ = D_I^{-1/2} R^T D_U^{-1} R D_I^{-1/2}`` (float64 ``[I, I]``) and the item degrees ``d_i``.

    Users or items without interactions get a zero inverse degree (no division by zero).
    """
    d_u = x_train.row_lengths().astype(np.float64)
    inv_u = np.where(d_u > 0, 1.0 / np.maximum(d_u, 1.0), 0.0)
    d_i = np.bincount(x_train.indices, minlength=x_train.n_items).astype(np.float64)
    inv_sqrt_i = np.where(d_i > 0, 1.0 / np.sqrt(np.maximum(d_i, 1.0)), 0.0)
    g = gram_matrix(x_train, inv_u)
    return g * inv_sqrt_i[:, None] * inv_sqrt_i[None, :], d_i


def _get(mcfg, name):
    return mcfg.get(name, _DEFAULTS[name])


class BSPM:
    """Blurring-sharpening process model (closed form: ``fit`` once, then ``score`` by ODE solves)."""

    name = "bspm"
    closed_form = True

    def __init__(self, config: Any, data: Any):
        self.config = config
        self.mcfg = config.model
        self.n_items = int(data.n_items)
        self.x_train = data.train.binary()
        self.opts = {k: _get(self.mcfg, k) for k in _DEFAULTS}

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses bad times, step counts, solvers, ``idl_beta < 0`` or ``factor_dim < 1``."""
        m = config.model
        for t in ("T_b", "T_idl", "T_s"):
            if not float(_get(m, t)) >= 0:
                raise ValueError(f"config.model.{t} must be >= 0, got {_get(m, t)}")
        for k in ("K_b", "K_idl", "K_s"):
            v = _get(m, k)
            if int(v) != v or v < 1:
                raise ValueError(f"config.model.{k} must be an integer >= 1, got {v}")
        for s in ("solver_blur", "solver_idl", "solver_sharp"):
            if _get(m, s) not in samplers.ODE_METHODS:
                raise ValueError(f"config.model.{s} must be one of {samplers.ODE_METHODS}, got {_get(m, s)!r}")
        if not float(_get(m, "idl_beta")) >= 0:
            raise ValueError(f"config.model.idl_beta must be >= 0, got {_get(m, 'idl_beta')}")
        fd = _get(m, "factor_dim")
        if int(fd) != fd or fd < 1:
            raise ValueError(f"config.model.factor_dim must be an integer >= 1, got {fd}")

    # ------------------------------------------------------------------------------------------

    def fit(self, key: jax.Array | None = None) -> tuple[dict, dict]:
        """Builds ``P~`` and the ideal filter's factors (deterministic; ``key`` is unused).

        Returns:
          ``({"P": [I, I], "V": [I, k], "d_isqrt": [I], "d_sqrt": [I]}, {})`` (float32); ``V``
          is one unused zero column when ``idl_beta == 0``.
        """
        del key
        p, d_i = normalized_item_graph(self.x_train)
        k = min(int(self.opts["factor_dim"]), self.n_items)
        if float(self.opts["idl_beta"]) > 0:
            _, vecs = np.linalg.eigh(p)  # ascending eigenvalues
            v = vecs[:, ::-1][:, :k]
        else:
            v = np.zeros((self.n_items, 1))  # unused; orbax cannot save a zero-size array
        d_sqrt = np.sqrt(d_i)
        d_isqrt = np.where(d_i > 0, 1.0 / np.maximum(d_sqrt, 1e-12), 0.0)
        f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
        params = {"P": f32(p), "V": f32(v), "d_isqrt": f32(d_isqrt), "d_sqrt": f32(d_sqrt)}
        return params, {}

    def score(self, params: dict, model_state: Any, x_BxI: jnp.ndarray, key: Any = None) -> jnp.ndarray:
        """Blurs, optionally adds the ideal low-pass term, sharpens: ``[B, I]`` scores."""
        del model_state, key
        o = self.opts
        hi = jax.lax.Precision.HIGHEST
        P, V = params["P"], params["V"]
        mm = lambda r: jnp.matmul(r, P, precision=hi)  # noqa: E731

        def blur(r, t):
            return mm(r) - r

        def ideal(r, t):
            z = jnp.matmul(r * params["d_isqrt"], V, precision=hi)
            return jnp.matmul(z, V.T, precision=hi) * params["d_sqrt"] - r

        def sharpen(r, t):
            return -mm(r)

        grid = lambda T, K: np.linspace(0.0, float(T), int(K) + 1)  # noqa: E731
        combine = bool(o["t_point_combination"])
        x = x_BxI.astype(jnp.float32)
        r_b, blur_states = samplers.odeint_fixed(
            blur, x, grid(o["T_b"], o["K_b"]), method=o["solver_blur"], return_all=True
        )
        beta = float(o["idl_beta"])
        r_i = None
        if beta > 0:
            r_i = samplers.odeint_fixed(ideal, x, grid(o["T_idl"], o["K_idl"]), method=o["solver_idl"])
        early = bool(o["final_sharpening"]) and r_i is not None
        if o["sharpening"]:
            s0 = r_b + beta * r_i if early else r_b
            r_s, sharp_states = samplers.odeint_fixed(
                sharpen, s0, grid(o["T_s"], o["K_s"]), method=o["solver_sharp"], return_all=True
            )
            if combine:
                out = jnp.mean(jnp.concatenate([blur_states[1:], sharp_states[1:]], axis=0), axis=0)
            else:
                out = r_s
        else:
            out = jnp.mean(blur_states[1:], axis=0) if combine else r_b
        if r_i is not None and not (early and o["sharpening"]):
            out = out + beta * r_i  # late merge (or no sharpening to merge into)
        return out
