"""Mult-VAE (Liang, Krishnan, Hoffman and Jebara, "Variational Autoencoders for Collaborative
Filtering", WWW 2018) in Flax NNX, following the model contract of :mod:`diffrec_jax.models`.

Network (``I`` items, ``dims = (600, 200)``)::

    x -> L2-normalise -> dropout(0.5) -> Linear(I, 600) -> tanh -> Linear(600, 2*200) = [mu, logvar]
    z = mu + exp(logvar / 2) * eps   (training; z = mu for scoring)
    z -> Linear(200, 600) -> tanh -> Linear(600, I) = logits

Loss per user (``beta`` annealed, the "partially regularised" objective of the paper):

    ``L_u = -sum_i log_softmax(logits_u)_i x_ui
            + beta * 0.5 * sum_d (exp(logvar_ud) + mu_ud^2 - 1 - logvar_ud)``,
    ``beta = min(anneal_cap, step / total_anneal_steps)``,

averaged over the valid rows of the batch. ``step`` counts optimizer steps; it lives in the
model state (an int32 scalar) so it is checkpointed and a resumed run anneals exactly as an
uninterrupted one. Dropout and the reparameterisation noise are drawn per row from
``fold_in(key, row)``, so padding rows never change the randomness of the real rows.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from diffrec_jax.models.mlp import dropout

__all__ = ["MultVAE", "MultVAENet"]


class MultVAENet(nnx.Module):
    """Mult-VAE's encoder and decoder MLPs.

    Xavier-uniform weights and N(0, 0.001^2) biases, as the reference TensorFlow code.

    Args:
      n_items: ``I``.
      dims: hidden widths of the encoder, latent last (``(600, 200)``: ``I -> 600 -> 2*200``
        and the mirrored decoder ``200 -> 600 -> I``).
      dropout_rate: input dropout rate (0.5).
      rngs: parameter RNGs.
    """

    def __init__(
        self, n_items: int, dims: Sequence[int] = (600, 200), *, dropout_rate: float = 0.5, rngs: nnx.Rngs
    ):
        dims = tuple(int(d) for d in dims)
        if not dims or min(dims) < 1:
            raise ValueError(f"dims must be a non-empty list of positive widths, got {dims}")
        lin = lambda i, o: nnx.Linear(  # noqa: E731
            i,
            o,
            kernel_init=nnx.initializers.xavier_uniform(),
            bias_init=nnx.initializers.normal(0.001),
            rngs=rngs,
        )
        enc = [n_items, *dims[:-1], 2 * dims[-1]]
        dec = [dims[-1], *dims[-2::-1], n_items]
        self.latent = dims[-1]
        self.dropout_rate = float(dropout_rate)
        self.encoder = nnx.List([lin(i, o) for i, o in zip(enc[:-1], enc[1:])])
        self.decoder = nnx.List([lin(i, o) for i, o in zip(dec[:-1], dec[1:])])

    def encode(self, x_BxI: jnp.ndarray, dropout_keys_B: jax.Array | None = None):
        """``q(z|x)`` parameters.

        Args:
          x_BxI: ``[B, I]`` user rows.
          dropout_keys_B: ``[B]`` keys for the input dropout; None disables it (scoring).

        Returns:
          ``(mu_BxD, logvar_BxD)``.
        """
        h = x_BxI / jnp.maximum(jnp.linalg.norm(x_BxI, axis=-1, keepdims=True), 1e-12)
        if dropout_keys_B is not None:
            h = jax.vmap(lambda row, k: dropout(row, self.dropout_rate, k))(h, dropout_keys_B)
        n = len(self.encoder)
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if i < n - 1:
                h = jnp.tanh(h)
        return h[:, : self.latent], h[:, self.latent :]

    def decode(self, z_BxD: jnp.ndarray) -> jnp.ndarray:
        """Unnormalised logits ``[B, I]`` of the multinomial over items."""
        h = z_BxD
        n = len(self.decoder)
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if i < n - 1:
                h = jnp.tanh(h)
        return h


class MultVAE:
    """Mult-VAE behind the trainer contract (``init`` / ``loss`` / ``score``).

    Config (``config.model``): ``enc_dims`` (encoder widths, latent last; default ``(600, 200)``;
    a field of its own so DiffRec's ``model.dims`` of the default config is never inherited),
    ``dropout`` (0.5), ``anneal_cap`` (0.2), ``total_anneal_steps`` (200000). The optimizer is
    the trainer's default (``config.optim``; Adam with lr 1e-3 in the paper, no weight decay).
    """

    name = "multvae"
    DEFAULTS = {"enc_dims": (600, 200), "dropout": 0.5, "anneal_cap": 0.2, "total_anneal_steps": 200000}

    def __init__(self, config: Any, data: Any):
        m = config.model
        self.n_items = int(data.n_items)
        self.dims = tuple(int(d) for d in _get(m, "enc_dims"))
        self.dropout_rate = float(_get(m, "dropout"))
        self.anneal_cap = float(_get(m, "anneal_cap"))
        self.total_anneal_steps = int(_get(m, "total_anneal_steps"))
        abstract = nnx.eval_shape(lambda: self.make_net(jax.random.key(0)))
        self.graphdef, _ = nnx.split(abstract)

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses bad Mult-VAE fields, naming them."""
        m = config.model
        dims = _get(m, "enc_dims")
        if not dims or min(int(d) for d in dims) < 1:
            raise ValueError(
                f"config.model.enc_dims must be a non-empty list of positive widths, got {dims}"
            )
        if not 0.0 <= _get(m, "dropout") < 1.0:
            raise ValueError(f"config.model.dropout must be in [0, 1), got {_get(m, 'dropout')}")
        if not _get(m, "anneal_cap") >= 0:
            raise ValueError(f"config.model.anneal_cap must be >= 0, got {_get(m, 'anneal_cap')}")
        if not _get(m, "total_anneal_steps") >= 0:
            raise ValueError(
                f"config.model.total_anneal_steps must be >= 0, got {_get(m, 'total_anneal_steps')}"
            )

    def make_net(self, key: jax.Array) -> MultVAENet:
        return MultVAENet(self.n_items, self.dims, dropout_rate=self.dropout_rate, rngs=nnx.Rngs(params=key))

    def init(self, key: jax.Array):
        """Returns ``(graphdef, params, model_state)``; ``model_state = {"step": int32 0}``."""
        # One jitted program instead of one eager dispatch per initializer.
        params = jax.jit(lambda k: nnx.split(self.make_net(k))[1])(key)
        return self.graphdef, params, {"step": jnp.zeros((), jnp.int32)}

    def kl_weight(self, step: jnp.ndarray) -> jnp.ndarray:
        """``beta = min(anneal_cap, step / total_anneal_steps)`` (``anneal_cap`` if the total is 0)."""
        if self.total_anneal_steps == 0:
            return jnp.asarray(self.anneal_cap, jnp.float32)
        return jnp.minimum(self.anneal_cap, step.astype(jnp.float32) / self.total_anneal_steps)

    def loss(self, params, model_state: dict, x_BxI: jnp.ndarray, mask_B: jnp.ndarray, key: jax.Array):
        """Annealed negative ELBO over the valid rows; increments ``model_state["step"]``.

        Args:
          params: the network's parameters (``nnx.State``).
          model_state: ``{"step": int32 []}`` optimizer steps taken so far.
          x_BxI: ``[B, I]`` train rows.
          mask_B: ``[B]`` bool, False for padding rows (ignored).
          key: PRNG key of this step.

        Returns:
          ``(loss, (new_model_state, aux))`` with ``aux = {"nll", "kl", "beta"}`` (batch means).
        """
        net = nnx.merge(self.graphdef, params)
        rows_B = jnp.arange(x_BxI.shape[0])
        keys_B = jax.vmap(lambda b: jax.random.fold_in(key, b))(rows_B)
        k_drop_B = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys_B)
        k_eps_B = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys_B)
        mu, logvar = net.encode(x_BxI, k_drop_B if self.dropout_rate > 0 else None)
        eps = jax.vmap(lambda k: jax.random.normal(k, (mu.shape[-1],), mu.dtype))(k_eps_B)
        z = mu + jnp.exp(0.5 * logvar) * eps
        logits = net.decode(z)
        nll_B = -jnp.sum(jax.nn.log_softmax(logits, axis=-1) * x_BxI, axis=-1)
        kl_B = 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, axis=-1)
        beta = self.kl_weight(model_state["step"])
        maskf = mask_B.astype(jnp.float32)
        denom = jnp.maximum(maskf.sum(), 1.0)
        nll = jnp.sum(nll_B * maskf) / denom
        kl = jnp.sum(kl_B * maskf) / denom
        new_state = {"step": model_state["step"] + 1}
        return nll + beta * kl, (new_state, {"nll": nll, "kl": kl, "beta": beta})

    def score(self, params, model_state: Any, x_BxI: jnp.ndarray, key: Any = None) -> jnp.ndarray:
        """Logits decoded from ``mu`` (no dropout, no sampling): ``[B, I]``."""
        del model_state, key
        net = nnx.merge(self.graphdef, params)
        mu, _ = net.encode(x_BxI)
        return net.decode(mu)


def _get(m: Any, field: str) -> Any:
    return m.get(field, MultVAE.DEFAULTS[field])
