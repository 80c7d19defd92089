"""GiffCF: graph signal diffusion for collaborative filtering (Zhu, Wang, Zhang and Xiong, SIGIR 2024).

Spec (our reading of the paper, arXiv 2311.08744, checked against the authors' TensorFlow code
for the settings it ships; none of that code is copied).

**Graph.** With the binary train matrix ``R`` (``[U, I]``), user degrees ``d_u`` and item
degrees ``d_i``, ``R~ = D_U^{-1/4} R D_I^{-1/2}`` and the item-item adjacency

    ``A = R~^T R~ / lambda_1``   (``lambda_1``: the largest eigenvalue, so ``spec(A) in [0, 1]``),

optionally mixed with the ideal low-pass filter of its top ``ideal_cutoff`` eigenvectors ``U_k``:
``A <- (A + w U_k U_k^T) / (1 + w)`` (``w`` = ``ideal_weight``, 0 on ML-1M). ``L = I - A``.

**Forward process** (a discretised heat equation ``dx/dtau = -x L``, no Gaussian noise). For a
user row ``x`` and steps ``t = 0..T``:

    ``z_t = F_t(x) = x + alpha (t / T) (x A - x) = x (I - tau_t L)``,   ``tau_t = alpha t / T``,

one explicit Euler step of the heat equation of length ``tau_t``: a graph filter of increasing
strength with ``F_0 = I``. Its frequency response on the eigenvalue ``mu`` of ``L`` is
``1 - tau mu``, so the smoothness ``z^T L z`` decreases monotonically in ``t`` while
``tau_T = alpha <= 1 / mu_max`` (``mu_max <= 1``); with ``alpha > 1`` (the paper's ML-1M value is
1.5) the highest frequencies pass through zero and come back with flipped sign, which the
paper's "over-smoothing" filter accepts. Optional noise: ``z_t += sigma_t eps`` with
``sigma_t = noise_scale * noise_decay^(T - t)`` (``noise_scale = 0`` on ML-1M).

**Denoiser** ``x0_hat = f(z_t, c, c A, t)`` with the condition ``c`` (the user's history:
``x`` at inference, ``dropout(x, p)`` with inverted scaling in training) and an item embedding
table ``E`` (``[I, d]``), two scalar time embeddings ``e_1(t), e_2(t)`` (a 20-wide sinusoid,
``Dense(20, swish)``, ``Dense(1)``) and two per-entry mixers ``m(v_1, ..., v_n) =
Dense(1)(swish(Dense(2)([v_1 .. v_n])))`` applied elementwise over the stacked channels:

    ``h = m_1(z_t E / I, c E / max(||c||_1, 1), e_1(t))``          (``[B, d]``, "latent" stage)
    ``x0_hat = m_2(h E^T, c, c A, e_2(t))``                          (``[B, I]``, "score" stage)

**Loss.** ``t ~ U{1..T}``, ``L = mean_B sum_i (x - x0_hat)^2``. Adam on ``E`` (``optim.lr``)
and on the MLP weights (``model.lr_mlp``, default the same) with Keras' ``eps = 1e-7``.

**Reverse process** (deterministic, noise-free): ``z = F_T(x)``; for ``(t, s) = (T, T-1), ...,
(1, 0)``: ``x0_hat = f(z, x, x A, t)`` (denoiser), then a graph-filter step
``z <- F_s(x0_hat) + noise_decay^(t - s) (z - F_t(x0_hat))``; the score is the final ``z``. This
is the core's :func:`diffrec_jax.samplers.cold_sample` with ``D = F`` and ``decay =
noise_decay``.

**Hyperparameters** (``config.model``; the reference's ML-1M values): ``embed_dim`` 200,
``T`` 3, ``alpha`` 1.5, ``ideal_weight`` 0, ``ideal_cutoff`` 200, ``noise_scale`` 0,
``noise_decay`` 0.5, ``dropout`` 0.5, ``lr_mlp`` (None: ``optim.lr`` = 1e-3, the reference;
as shipped), ``align_init`` (False: the reference, as shipped);
batch 100, up to 1000 epochs, validation every 10, early stopping after 200 epochs.

**Optimisation.** The latent path starts tiny (``z E / I`` ~ 1e-4, ``c E / |c|_1`` ~ 5e-3 against
O(1) time embeddings), so the two hidden units of each mixer are in swish's linear regime and the
history's effective weight is a product of mixer weights with a saddle at zero (our hypothesis
for what follows; not confirmed). With the
reference's initialisation, 2 of our 3 seeds stay there (popularity-level ranking, valid R@20
~0.08, 60+ epochs) while the third trains. The stuck seeds are exactly those whose initial
gains give ``g_mid g_c < 0`` (:meth:`GiffCF.path_gains`: the history would enter the scores with
the wrong sign), but ``align_init`` (not in the reference; it reflects a mixer input row so that
``g_mid g_c > 0`` and ``g_mid g_z > 0`` at the start, :meth:`GiffCF.align_signs`) left the
curves unchanged to 3 decimals through epoch 20, so the sign is not the cause; a 10x higher MLP
learning rate only moved which seeds got stuck. Cause not found. The authors' README warns of
such local minima.

**Not verified.** The paper's Recall@K divides the hits by ``min(K, |G_u|)`` (the authors'
evaluator), ours by ``|G_u|`` (DiffRec's, the library's); theirs is never smaller. On ML-1M clean
the gap is small at K = 20 (a trained seed: 0.1835 ours, 0.1881 theirs) and larger at K = 10
(0.1090 / 0.1230); ``experiments/paper_metrics.py`` reports both (``results/giffcf_ml1m``). ``lambda_1`` is
computed exactly (``eigvalsh``) where the reference uses a truncated SVD. The training length the
paper used on a GPU (up to 1000 epochs, patience 200) does not fit our CPU budget: our runs were
stopped after 28-67 epochs (``results/giffcf_ml1m/README.md``); the shipped config keeps the
reference's limits, pass ``--config.train.time_budget_s`` to cap a run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffrec_jax import samplers
from diffrec_jax.models.baselines import gram_matrix

__all__ = ["GiffCF", "giffcf_adjacency", "graph_filter"]

_DEFAULTS = {
    "embed_dim": 200,
    "alpha": 1.5,
    "ideal_weight": 0.0,
    "ideal_cutoff": 200,
    "noise_scale": 0.0,
    "noise_decay": 0.5,
    "dropout": 0.5,
    "lr_mlp": None,
    "time_dim": 20,
    "align_init": False,
}


def _get(mcfg, name):
    v = mcfg.get(name, _DEFAULTS[name])
    return _DEFAULTS[name] if v is None and name != "lr_mlp" else v


def giffcf_adjacency(x_train, ideal_weight: float = 0.0, ideal_cutoff: int = 200) -> np.ndarray:
    """``A = R~^T R~ / lambda_1`` with ``R~ = D_U^{-1/4} R D_I^{-1/2}``, float64 ``[I, I]``.

    With ``ideal_weight = w > 0``: ``(A + w U_k U_k^T) / (1 + w)`` over the top ``ideal_cutoff``
    eigenvectors of ``A``. Zero-degree users or items get a zero inverse degree.
    """
    d_u = x_train.row_lengths().astype(np.float64)
    w_u = np.where(d_u > 0, np.maximum(d_u, 1.0) ** -0.5, 0.0)  # (d_u^{-1/4})^2
    d_i = np.bincount(x_train.indices, minlength=x_train.n_items).astype(np.float64)
    s_i = np.where(d_i > 0, np.maximum(d_i, 1.0) ** -0.5, 0.0)
    g = gram_matrix(x_train, w_u) * s_i[:, None] * s_i[None, :]
    if ideal_weight > 0:
        vals, vecs = np.linalg.eigh(g)
        lam1 = vals[-1]
        k = min(int(ideal_cutoff), g.shape[0])
        u = vecs[:, ::-1][:, :k]
        return (g / lam1 + ideal_weight * (u @ u.T)) / (1.0 + ideal_weight)
    lam1 = np.linalg.eigvalsh(g)[-1]
    return g / lam1


def graph_filter(x: jnp.ndarray, xa: jnp.ndarray, t, T: int, alpha: float) -> jnp.ndarray:
    """``F_t(x) = x + alpha (t / T) (x A - x)`` given ``xa = x A``; ``t`` is a scalar or ``[B]``."""
    tau = alpha * jnp.asarray(t, jnp.float32) / float(T)
    if tau.ndim == 1:
        tau = tau[:, None]
    return x + tau * (xa - x)


def _glorot(key, fan_in, fan_out):
    lim = np.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, (fan_in, fan_out), jnp.float32, -lim, lim)


def _dense(key, fan_in, fan_out):
    return {"w": _glorot(key, fan_in, fan_out), "b": jnp.zeros((fan_out,), jnp.float32)}


def _swish(x):
    return x * jax.nn.sigmoid(x)


def _mixer(p, channels):
    """Per-entry MLP over stacked channels: ``Dense(1)(swish(Dense(2)(stack)))``."""
    h = sum(c[..., None] * p["h"]["w"][i] for i, c in enumerate(channels)) + p["h"]["b"]
    h = _swish(h)
    return jnp.einsum("...k,k->...", h, p["o"]["w"][:, 0]) + p["o"]["b"][0]


class GiffCF:
    """GiffCF following the trainer contract (``init`` / ``loss`` / ``score`` / ``optimizer``)."""

    name = "giffcf"
    needs_user_ids = True  # the trainer passes user_ids_B: the rows' precomputed x A

    def __init__(self, config: Any, data: Any):
        self.mcfg = config.model
        self.o = {k: _get(self.mcfg, k) for k in _DEFAULTS}
        self.n_items = int(data.n_items)
        self.num_steps = int(config.diffusion.steps)  # T of the docstring
        self.alpha = float(self.o["alpha"])
        a = giffcf_adjacency(data.train.binary(), float(self.o["ideal_weight"]), int(self.o["ideal_cutoff"]))
        self.A = jnp.asarray(a, jnp.float32)
        # x A of every train row, computed once (half of a training step's propagation cost)
        x = data.train.binary()
        a32 = a.astype(np.float32)
        xa = np.zeros((x.n_users, self.n_items), np.float32)
        for start in range(0, x.n_users, 2048):
            rows = np.arange(start, min(start + 2048, x.n_users))
            xa[rows] = x.to_dense(rows, dtype=np.float32) @ a32
        self.XA = jnp.asarray(xa)
        self.graphdef = None

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses bad ``diffusion.steps``, ``alpha``, widths, dropout, noise or decay values, naming
        the field."""
        m = config.model
        T = config.diffusion.steps
        if int(T) != T or T < 1:
            raise ValueError(f"config.diffusion.steps must be an integer >= 1, got {T}")
        for f in ("embed_dim", "time_dim", "ideal_cutoff"):
            v = _get(m, f)
            if int(v) != v or v < 1:
                raise ValueError(f"config.model.{f} must be an integer >= 1, got {v}")
        if int(_get(m, "time_dim")) % 2:
            raise ValueError(f"config.model.time_dim must be even, got {_get(m, 'time_dim')}")
        if not float(_get(m, "alpha")) > 0:
            raise ValueError(f"config.model.alpha must be > 0, got {_get(m, 'alpha')}")
        if not 0.0 <= float(_get(m, "dropout")) < 1.0:
            raise ValueError(f"config.model.dropout must be in [0, 1), got {_get(m, 'dropout')}")
        if not 0.0 <= float(_get(m, "noise_decay")) <= 1.0:
            raise ValueError(f"config.model.noise_decay must be in [0, 1], got {_get(m, 'noise_decay')}")
        for f in ("noise_scale", "ideal_weight"):
            if not float(_get(m, f)) >= 0:
                raise ValueError(f"config.model.{f} must be >= 0, got {_get(m, f)}")
        lr = _get(m, "lr_mlp")
        if lr is not None and not float(lr) > 0:
            raise ValueError(f"config.model.lr_mlp must be > 0 (or None), got {lr}")

    # ------------------------------------------------------------------------------------------
    # Parameters and the denoiser
    # ------------------------------------------------------------------------------------------

    def init(self, key: jax.Array):
        """``(None, params, {})``: item table, two time embeddings and two mixers (Keras-style init)."""
        d, td = int(self.o["embed_dim"]), int(self.o["time_dim"])
        ks = jax.random.split(key, 9)
        params = {
            "E": _glorot(ks[0], self.n_items, d),
            "mlp": {
                "t1": {"h": _dense(ks[1], td, td), "o": _dense(ks[2], td, 1)},
                "t2": {"h": _dense(ks[3], td, td), "o": _dense(ks[4], td, 1)},
                "m1": {"h": _dense(ks[5], 3, 2), "o": _dense(ks[6], 2, 1)},
                "m2": {"h": _dense(ks[7], 4, 2), "o": _dense(ks[8], 2, 1)},
            },
        }
        if self.o["align_init"]:
            params = self.align_signs(params)
        return None, params, {}

    def path_gains(self, params):
        """Linearised gains of the latent path at init, averaged over ``t = 1..T``.

        ``g_c = d m_1 / d(c E)``, ``g_z = d m_1 / d(z E)`` (the other latent channel at 0) and
        ``g_mid = d m_2 / d(h E^T)`` (history channels at 0). The history reaches the score through
        ``g_mid g_c (c / |c|_1) E E^T``; ``E E^T`` is positive semi-definite, so only
        ``g_mid g_c > 0`` lets co-occurring items score higher.
        """
        mlp = params["mlp"]
        t_B = jnp.arange(1, self.num_steps + 1)
        e1 = self._time_embed(mlp["t1"], t_B)
        e2 = self._time_embed(mlp["t2"], t_B)
        zero = jnp.zeros_like(e1)
        d = lambda f: jax.vmap(jax.grad(f))(zero, e1 if f is not g_mid else e2)  # noqa: E731

        def g_c(v, e):
            return _mixer(mlp["m1"], (jnp.zeros(()), v, e))

        def g_z(v, e):
            return _mixer(mlp["m1"], (v, jnp.zeros(()), e))

        def g_mid(v, e):
            return _mixer(mlp["m2"], (v, jnp.zeros(()), jnp.zeros(()), e))

        return {"c": jnp.mean(d(g_c)), "z": jnp.mean(d(g_z)), "mid": jnp.mean(d(g_mid))}

    def align_signs(self, params):
        """``align_init``: reflects one input row of a mixer so both latent gains match ``g_mid``.

        If ``g_mid g_c < 0`` the ``h E^T`` input weights of ``m_2`` change sign (``g_mid`` flips);
        then if ``g_mid g_z < 0`` the ``z E`` input weights of ``m_1`` do. Each reflection maps the
        symmetric initial distribution onto itself; it only picks the sign of the draw.
        """
        g = self.path_gains(params)
        flip_mid = jnp.where(g["mid"] * g["c"] < 0, -1.0, 1.0)
        flip_z = jnp.where(flip_mid * g["mid"] * g["z"] < 0, -1.0, 1.0)
        m1, m2 = params["mlp"]["m1"], params["mlp"]["m2"]
        w2 = m2["h"]["w"].at[0].multiply(flip_mid)
        w1 = m1["h"]["w"].at[0].multiply(flip_z)
        mlp = dict(params["mlp"], m1={**m1, "h": {**m1["h"], "w": w1}}, m2={**m2, "h": {**m2["h"], "w": w2}})
        return {**params, "mlp": mlp}

    def _time_embed(self, p, t_B):
        td = int(self.o["time_dim"])
        scales = jnp.asarray(10000.0 ** (-np.arange(0, td, 2) / td), jnp.float32)
        ang = t_B.astype(jnp.float32)[:, None] * scales[None, :]
        e = jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)
        h = _swish(e @ p["h"]["w"] + p["h"]["b"])
        return (h @ p["o"]["w"] + p["o"]["b"])[:, 0]  # [B]

    def denoise(self, params, z_BxI, c_BxI, ca_BxI, t_B):
        """``x0_hat = m_2(m_1(z E / I, c E / max(|c|_1, 1), e_1) E^T, c, c A, e_2)``."""
        E, mlp = params["E"], params["mlp"]
        c_norm = jnp.maximum(jnp.sum(jnp.abs(c_BxI), axis=-1, keepdims=True), 1.0)
        z_emb = (z_BxI / self.n_items) @ E
        c_emb = (c_BxI / c_norm) @ E
        e1 = jnp.broadcast_to(self._time_embed(mlp["t1"], t_B)[:, None], z_emb.shape)
        h = _mixer(mlp["m1"], (z_emb, c_emb, e1))
        x_mid = h @ E.T
        e2 = jnp.broadcast_to(self._time_embed(mlp["t2"], t_B)[:, None], x_mid.shape)
        return _mixer(mlp["m2"], (x_mid, c_BxI, ca_BxI, e2))

    def smooth(self, x_BxI):
        """``x A`` (the graph propagation)."""
        return x_BxI @ self.A

    def forward_filter(self, x_BxI, t):
        """``F_t(x)``: the forward process at step ``t`` (scalar or ``[B]``)."""
        return graph_filter(x_BxI, self.smooth(x_BxI), t, self.num_steps, self.alpha)

    # ------------------------------------------------------------------------------------------
    # Trainer contract
    # ------------------------------------------------------------------------------------------

    def optimizer(self, ocfg) -> optax.GradientTransformation:
        """Adam on the item table (``optim.lr``) and on the MLPs (``model.lr_mlp`` or ``optim.lr``)."""
        lr_mlp = self.o["lr_mlp"] if self.o["lr_mlp"] is not None else ocfg.lr

        def adam(lr):
            tx = optax.adam(lr, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps)
            if ocfg.get("weight_decay", 0.0):
                tx = optax.chain(optax.add_decayed_weights(ocfg.weight_decay), tx)
            return tx

        def labels(params):
            return {"E": "emb", "mlp": jax.tree.map(lambda _: "mlp", params["mlp"])}

        return optax.multi_transform({"emb": adam(ocfg.lr), "mlp": adam(lr_mlp)}, labels)

    def _xa(self, x_BxI, user_ids_B):
        return self.smooth(x_BxI) if user_ids_B is None else self.XA[user_ids_B]

    def loss(self, params, model_state, x_BxI, mask_B, key, user_ids_B=None):
        """``mean_B sum_i (x - f(F_t(x) [+ sigma_t eps], c, c A, t))^2``, ``t ~ U{1..T}``.

        ``user_ids_B`` (train rows' indices) looks ``x A`` up instead of recomputing it.
        """
        k_t, k_drop, k_eps = jax.random.split(key, 3)
        B = x_BxI.shape[0]
        t_B = jax.random.randint(k_t, (B,), 1, self.num_steps + 1)
        z = graph_filter(x_BxI, self._xa(x_BxI, user_ids_B), t_B, self.num_steps, self.alpha)
        if float(self.o["noise_scale"]) > 0:
            sigma = float(self.o["noise_scale"]) * float(self.o["noise_decay"]) ** (self.num_steps - t_B)
            z = z + sigma[:, None] * jax.random.normal(k_eps, z.shape)
        p = float(self.o["dropout"])
        if p > 0:
            keep = jax.random.bernoulli(k_drop, 1.0 - p, x_BxI.shape)
            c = jnp.where(keep, x_BxI / (1.0 - p), 0.0)
        else:
            c = x_BxI
        x_hat = self.denoise(params, z, c, self.smooth(c), t_B)
        loss_B = jnp.sum(jnp.square(x_BxI - x_hat), axis=-1)
        m = mask_B.astype(jnp.float32)
        return jnp.sum(loss_B * m) / jnp.maximum(m.sum(), 1.0), (model_state, {})

    def score(self, params, model_state, x_BxI, key=None, user_ids_B=None):
        """The reverse process: alternate denoiser calls and graph-filter steps from ``F_T(x)``."""
        del model_state, key
        xa = self._xa(x_BxI, user_ids_B)
        z_T = graph_filter(x_BxI, xa, self.num_steps, self.num_steps, self.alpha)

        def denoise_fn(z, t_B, cond):
            return self.denoise(params, z, x_BxI, xa, t_B)

        def degrade_fn(x, t_B, cond):
            return graph_filter(x, self.smooth(x), t_B, self.num_steps, self.alpha)

        ts = np.arange(self.num_steps, -1, -1)
        return samplers.cold_sample(
            denoise_fn, degrade_fn, z_T, ts, decay=float(self.o["noise_decay"])
        )
