"""MLP denoisers in Flax NNX: DiffRec's "DNN" (spec section 4) and its timestep embedding."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_ACTIVATIONS = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "leaky_relu": jax.nn.leaky_relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact (erf), as torch.nn.GELU()
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # the tanh approximation
}


def activation(name: str):
    """Looks up an activation by name (``tanh``, ``relu``, ``sigmoid``, ``leaky_relu``, ``gelu``
    (exact), ``gelu_tanh`` (tanh approximation)); the one table every model uses."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}") from None


def timestep_embedding(t_B: jnp.ndarray, dim: int, max_period: float = 10000.0) -> jnp.ndarray:
    """Sinusoidal embedding of the raw integer step, cosines first (DiffRec, spec section 4).

    With ``h = dim // 2`` and ``f_k = exp(-ln(max_period) k / h)``:
    ``emb = [cos(t f), sin(t f)]``, with a zero column appended when ``dim`` is odd.

    Args:
      t_B: ``[B]`` steps (int or float; not normalised).
      dim: embedding width ``d``.

    Returns:
      float32 ``[B, d]``.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t_B.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def dropout(x: jnp.ndarray, rate: float, key: jax.Array | None) -> jnp.ndarray:
    """Inverted dropout; identity when ``key`` is None (evaluation) or ``rate == 0``."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


class DiffRecDenoiser(nnx.Module):
    """DiffRec's MLP denoiser ``f(x_t, t) -> x0_hat`` over a whole interaction row.

    ``h = [dropout(x_t); Linear(emb(t))]`` -> in-layers (each followed by the activation,
    bottleneck included) -> out-layers (activation between them, none after the last).
    For ML-1M clean (``I = 2810``, ``dims = (200, 600)``, ``emb = 10``):
    Linear(2820,600)-tanh-Linear(600,200)-tanh-Linear(200,600)-tanh-Linear(600,2810),
    3,622,320 parameters.

    Args:
      in_features: width of the diffused vector (``I`` items, or the latent width).
      dims: hidden widths of the out-side, bottleneck first, as DiffRec's ``--dims``
        (``[200, 600]`` gives ``out_dims = [200, 600, I]``, ``in_dims = [I, 600, 200]``).
      emb_size: timestep embedding width.
      dropout_rate: input dropout (0.5, hard-coded in the reference).
      act: activation name.
      norm: L2-normalise the input row first.
      init: ``"diffrec"`` (Xavier-normal weights, N(0, 0.001^2) biases) or ``"xavier"`` (zero
        biases, L-DiffRec's init).
      rngs: parameter RNGs.
    """

    def __init__(
        self,
        in_features: int,
        dims: Sequence[int] = (200, 600),
        *,
        emb_size: int = 10,
        dropout_rate: float = 0.5,
        act: str = "tanh",
        norm: bool = False,
        init: str = "diffrec",
        rngs: nnx.Rngs,
    ):
        if init not in ("diffrec", "xavier"):
            raise ValueError(f"init must be 'diffrec' or 'xavier', got {init!r}")
        dims = tuple(int(d) for d in dims)
        if not dims or min(dims) < 1:
            raise ValueError(f"dims must be a non-empty list of positive widths, got {dims}")
        # Xavier-normal, untruncated, as the reference's torch.nn.init.xavier_normal_.
        kernel_init = nnx.initializers.variance_scaling(1.0, "fan_avg", "normal")
        bias_init = (
            nnx.initializers.normal(0.001) if init == "diffrec" else nnx.initializers.zeros_init()
        )
        lin = lambda i, o: nnx.Linear(  # noqa: E731
            i, o, kernel_init=kernel_init, bias_init=bias_init, rngs=rngs
        )
        out_dims = list(dims) + [in_features]
        in_dims = out_dims[::-1]
        self.in_features = in_features
        self.emb_size = emb_size
        self.dropout_rate = float(dropout_rate)
        self.norm = norm
        self.act_name = act
        self.emb_layer = lin(emb_size, emb_size)
        first_in = [in_dims[0] + emb_size] + in_dims[1:-1]
        self.in_layers = nnx.List([lin(i, o) for i, o in zip(first_in, in_dims[1:])])
        self.out_layers = nnx.List([lin(i, o) for i, o in zip(out_dims[:-1], out_dims[1:])])

    def __call__(
        self, x_BxI: jnp.ndarray, t_B: jnp.ndarray, *, dropout_key: jax.Array | None = None
    ) -> jnp.ndarray:
        """Denoises a batch of rows.

        Args:
          x_BxI: noised rows ``[B, I]``.
          t_B: int steps ``[B]``.
          dropout_key: key for the input dropout; None in evaluation.

        Returns:
          ``[B, I]`` unbounded outputs (the x0 prediction for DiffRec).
        """
        act = activation(self.act_name)
        emb = self.emb_layer(timestep_embedding(t_B, self.emb_size))
        if self.norm:
            x_BxI = x_BxI / jnp.maximum(jnp.linalg.norm(x_BxI, axis=-1, keepdims=True), 1e-12)
        h = jnp.concatenate([dropout(x_BxI, self.dropout_rate, dropout_key), emb], axis=-1)
        for layer in self.in_layers:
            h = act(layer(h))
        n = len(self.out_layers)
        for i, layer in enumerate(self.out_layers):
            h = layer(h)
            if i < n - 1:
                h = act(h)
        return h


def count_params(params) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))
