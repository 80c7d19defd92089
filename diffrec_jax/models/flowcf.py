"""FlowCF: flow matching for collaborative filtering (Liu, Zhang, Wang, Ying and Caverlee, KDD 2025).

Spec (our reading of the paper, arXiv 2502.07303, and of the authors' RecBole code, read to
understand and for the settings it ships; none of it is copied).

**Data and prior.** ``x_1 in {0, 1}^I`` is a user's binary train row. The *behaviour-guided prior*
draws every item independently with its popularity,

    ``x_0 ~ prod_i Bernoulli(p_i)``,   ``p_i = |{u : x_ui = 1}| / |U|``   (train rows),

so a prior sample looks like an (average) user instead of Gaussian noise.

**Discrete flow (the interpolation).** On the grid ``t_k = k / N`` (``N`` = ``diffusion.steps``
discretisation steps), with a mask ``m ~ prod_i Bernoulli(t)`` independent of ``x_0``:

    ``x_t = m * x_1 + (1 - m) * x_0``,

i.e. each entry keeps the data with probability ``t`` and the prior sample otherwise. ``x_t`` is
binary, ``x_0`` at ``t = 0`` and ``x_1`` at ``t = 1``, and its marginal is
``P(x_t,i = 1 | x_1) = t x_1,i + (1 - t) p_i``, the linear interpolation of the two
distributions (the discrete analogue of ``x_t = t x_1 + (1 - t) x_0``, whose conditional
velocity is ``(x_1 - x_t) / (1 - t)``).

**Network and loss.** ``f(x_t, t) -> x1_hat``: an MLP over ``[dropout(x_t); Linear(emb(t))]``
with ``emb`` the sinusoidal timestep embedding of ``2 pi t`` (the reference scales the usual
frequencies by ``2 pi`` because ``t in [0, 1]``), hidden widths ``model.dims`` with
``model.act`` between layers, dropout ``model.dropout`` before every linear layer (RecBole's
``MLPLayers``), Xavier-normal weights and zero biases. Training draws ``k ~ U{0 .. N-1}`` (so
``t in {0, 1/N, .., (N-1)/N}``, never 1), ``x_0`` and ``m`` per entry, and minimises

    ``L = mean_B mean_i (x_1 - f(x_t, t))^2``

(predicting ``x_1`` is equivalent to regressing the velocity ``(x_1 - x_t) / (1 - t)`` up to the
weight ``(1 - t)^2``).

**Sampling** (``sampling.steps = s``, ``1 <= s <= N``). The user's own row ``x~`` is taken as the
state at ``t_{N-s}``; for ``k = N-s .. N-1`` the network predicts ``x1_hat = f(x, t_k)`` and the
discrete Euler step moves to

    ``x <- max(1[x + (1/N) (x1_hat - x) / (1 - t_k) > 1/2], x~)``

(the velocity's Euler step, rounded to the more likely binary state, and observed interactions
kept: only 0 -> 1 moves). The scores are the last prediction ``x1_hat`` (made at
``t_{N-1}``). ``s`` network calls in all, one ``lax.scan``
(:func:`diffrec_jax.samplers.flow_sample` with the rounding as its projection). The scores do not
depend on the PRNG key: the sampler is deterministic.

A consequence of the rounding: from an unobserved entry (``x = 0``) the step gives
``x1_hat / (N - k)``, so the item enters the state only when ``x1_hat > (N - k) / 2``, i.e.
``x1_hat > 1`` even at the last intermediate step ``k = N - 2`` and more before. An MSE-trained
``x1_hat`` rarely leaves ``[0, 1]``, so the state mostly stays the user's row and the scores are
close to ``f(x~, t_{N-1})`` whatever ``s`` (``results/flowcf_ml1m`` measures it).

**Hyperparameters** (the reference's ``flowcf.yaml`` for ML-1M): ``diffusion.steps`` N = 9,
``sampling.steps`` s = 2, ``dims`` (300, 300), ``emb_size`` 10, dropout 0.1, tanh, Adam lr 1e-3,
no weight decay, batch 4096, up to 500 epochs, evaluation every epoch, early stopping after 10
evaluations without improvement (their metric NDCG@10; ours validation Recall@20).

**Not verified.** Only the opening of the paper was available to us (no tables, no
hyperparameter section), so the published ML-1M numbers and search ranges are not quoted; the
settings above come from the authors' code. Their ML-1M is RecBole's random split of the full
ratings (users and items with >= 5 interactions, ratings >= 4 kept), not DiffRec's
``ml-1m_clean`` split we train on, so their figures would not be comparable anyway. The rounding
uses ``> 1/2`` (a tie stays 0, as ``argmax`` over ``[1 - p, p]`` picks the first); the reference
applies the 0.1 dropout also to the timestep-embedding half of the first layer's input, as we do.
The trainer may feed time-weighted rows (T-DiffRec's ``data.time_weights``); FlowCF binarises
its input (``x > 0``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffrec_jax import samplers
from diffrec_jax.models.mlp import activation, dropout, timestep_embedding

__all__ = ["FlowCF", "FlowMLP", "discrete_interpolate", "item_popularity"]


def item_popularity(x_train) -> np.ndarray:
    """``p_i``: share of users with item ``i`` in their (binarised) train rows, float32 ``[I]``."""
    b = x_train.binary()
    counts = np.bincount(b.indices, minlength=b.n_items).astype(np.float64)
    return (counts / max(int(b.n_users), 1)).astype(np.float32)


def discrete_interpolate(x1, x0, t, key):
    """``x_t = m x_1 + (1 - m) x_0`` with ``m ~ Bernoulli(t)`` per entry; ``t`` scalar or ``[B]``."""
    t = jnp.asarray(t, jnp.float32)
    if t.ndim == 1:
        t = t[:, None]
    keep = jax.random.uniform(key, x1.shape) < t
    return jnp.where(keep, x1, x0)


class FlowMLP(nnx.Module):
    """``f(x_t, t)``: MLP over ``[x_t; Linear(emb(2 pi t))]``, dropout before every linear layer.

    ``in -> dims[0] -> ... -> dims[-1] -> in`` with the activation after every layer but the last;
    Xavier-normal weights, zero biases. (DiffRec's :class:`~diffrec_jax.models.mlp.DiffRecDenoiser`
    mirrors its widths around a bottleneck and drops out only its input, so it cannot express the
    reference's ``I + 10 -> 300 -> 300 -> I``; the pieces it shares come from ``models.mlp``.)
    """

    def __init__(self, in_features: int, dims: Sequence[int], *, emb_size: int = 10,
                 dropout_rate: float = 0.1, act: str = "tanh", rngs: nnx.Rngs):
        dims = tuple(int(d) for d in dims)
        kernel_init = nnx.initializers.variance_scaling(1.0, "fan_avg", "normal")
        lin = lambda i, o: nnx.Linear(  # noqa: E731
            i, o, kernel_init=kernel_init, bias_init=nnx.initializers.zeros_init(), rngs=rngs
        )
        widths = [in_features + emb_size, *dims, in_features]
        self.emb_size = int(emb_size)
        self.dropout_rate = float(dropout_rate)
        self.act_name = act
        self.emb_layer = lin(emb_size, emb_size)
        self.layers = nnx.List([lin(i, o) for i, o in zip(widths[:-1], widths[1:])])

    def __call__(self, x_BxI, t_B, *, dropout_key: jax.Array | None = None):
        """``[B, I]`` predictions of ``x_1`` from states ``x_BxI`` at float times ``t_B`` in [0, 1]."""
        act = activation(self.act_name)
        emb = self.emb_layer(timestep_embedding(2.0 * math.pi * t_B.astype(jnp.float32), self.emb_size))
        h = jnp.concatenate([x_BxI, emb], axis=-1)
        n = len(self.layers)
        keys = [None] * n if dropout_key is None else list(jax.random.split(dropout_key, n))
        for i, layer in enumerate(self.layers):
            h = layer(dropout(h, self.dropout_rate, keys[i]))
            if i < n - 1:
                h = act(h)
        return h


class FlowCF:
    """FlowCF following the trainer contract (``init`` / ``loss`` / ``score``)."""

    name = "flowcf"

    def __init__(self, config: Any, data: Any):
        self.mcfg = config.model
        self.scfg = config.sampling
        self.n_items = int(data.n_items)
        self.num_steps = int(config.diffusion.steps)
        self.prior = jnp.asarray(item_popularity(data.train))
        self.graphdef = None

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses bad ``diffusion.steps``, ``sampling.steps``, widths or dropout, naming the field."""
        m = config.model
        n = config.diffusion.steps
        if int(n) != n or n < 1:
            raise ValueError(f"config.diffusion.steps must be an integer >= 1, got {n}")
        s = config.sampling.steps
        if int(s) != s or not 1 <= s <= n:
            raise ValueError(
                f"config.sampling.steps must be an integer in [1, config.diffusion.steps={n}], got {s}"
            )
        dims = tuple(m.dims)
        if not dims or min(int(d) for d in dims) < 1:
            raise ValueError(f"config.model.dims must be a non-empty list of positive widths, got {dims}")
        if int(m.emb_size) < 1:
            raise ValueError(f"config.model.emb_size must be >= 1, got {m.emb_size}")
        if not 0.0 <= float(m.dropout) < 1.0:
            raise ValueError(f"config.model.dropout must be in [0, 1), got {m.dropout}")
        activation(m.act)

    def init(self, key: jax.Array):
        """``(graphdef, params, {})``: the split :class:`FlowMLP`; no model state."""
        m = self.mcfg
        net = FlowMLP(self.n_items, tuple(m.dims), emb_size=int(m.emb_size),
                      dropout_rate=float(m.dropout), act=m.act, rngs=nnx.Rngs(params=key))
        graphdef, params = nnx.split(net)
        self.graphdef = graphdef
        return graphdef, params, {}

    def _net(self, params):
        if self.graphdef is None:  # a model rebuilt for inference: the structure from a dummy init
            self.init(jax.random.key(0))
        return nnx.merge(self.graphdef, params)

    def time_grid(self) -> np.ndarray:
        """``t_k = k / N``, ``k = 0..N`` (float32)."""
        return np.linspace(0.0, 1.0, self.num_steps + 1, dtype=np.float32)

    def interpolate(self, x1_BxI, t_B, key):
        """``x_t`` for binary rows ``x1``: a fresh prior sample mixed in entry-wise with prob ``1 - t``."""
        k0, km = jax.random.split(key)
        x0 = jax.random.bernoulli(k0, self.prior, x1_BxI.shape).astype(x1_BxI.dtype)
        return discrete_interpolate(x1_BxI, x0, t_B, km)

    def loss(self, params, model_state, x_BxI, mask_B, key):
        """``mean_B mean_i (x_1 - f(x_t, t))^2`` with ``t = k / N``, ``k ~ U{0..N-1}``."""
        k_t, k_x, k_drop = jax.random.split(key, 3)
        x1 = (x_BxI > 0).astype(jnp.float32)
        B = x1.shape[0]
        t_B = jax.random.randint(k_t, (B,), 0, self.num_steps).astype(jnp.float32) / self.num_steps
        xt = self.interpolate(x1, t_B, k_x)
        pred = self._net(params)(xt, t_B, dropout_key=k_drop)
        loss_B = jnp.mean(jnp.square(x1 - pred), axis=-1)
        m = mask_B.astype(jnp.float32)
        return jnp.sum(loss_B * m) / jnp.maximum(m.sum(), 1.0), (model_state, {})

    def sample(self, params, x_BxI, steps: int | None = None):
        """The discrete flow from the user's row at ``t_{N-s}``: ``(x_final, x1_hat)``, ``s`` calls."""
        s = int(self.scfg.steps if steps is None else steps)
        net = self._net(params)
        x_obs = (x_BxI > 0).astype(jnp.float32)
        ts = self.time_grid()[self.num_steps - s:]  # s evaluation times and the end point t = 1

        def predict_x1(x, t):
            return net(x, jnp.full((x.shape[0],), t, jnp.float32))

        def project(x):  # the more likely binary state, observed interactions kept
            return jnp.maximum((x > 0.5).astype(x.dtype), x_obs)

        return samplers.flow_sample(predict_x1, x_obs, ts, project=project)

    def score(self, params, model_state, x_BxI, key=None):
        """``[B, I]`` scores: the last ``x_1`` prediction of :meth:`sample` (deterministic)."""
        del model_state, key
        return self.sample(params, x_BxI)[1]
