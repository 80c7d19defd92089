"""L-DiffRec (Wang et al., SIGIR 2023, spec section 8): DiffRec in the latent space of per-cluster VAEs.

Items are clustered by pretrained embeddings (k-means, :mod:`diffrec_jax.models.kmeans`) into
``n_cate`` categories. Each category ``c`` gets a VAE encoder from its ``|c|`` items to a latent of
width ``d_c`` (``d_c = max(1, int(|c|/I · d))`` for all but the last category, which takes the
remainder, so ``Σ_c d_c = d``). The Gaussian diffusion and DiffRec's MLP denoiser run on the
concatenated latent ``z ∈ R^d``; a decoder maps the denoised latent back to logits over items.
T-DiffRec's chronological weights (``config.data.time_weights``) turn it into LT-DiffRec with no
change here: the weighted rows are the encoder input and the reconstruction target.

Training, for a batch ``x`` of rows in cluster order (spec section 8, "Training step")::

    x̃ = dropout_0.1(x);  [μ_c; logvar_c] = tanh-MLP_c(x̃_c);  z = μ + exp(logvar/2) ε
    KL   = mean_B( -½ Σ_d (1 + logvar - μ² - e^logvar) )
    elbo = mean_B( w_t ||z - f(z_t, t)||² / d / p̂_t )          (the DiffRec loss on x0 := z)
    vae  = -mean_B( Σ_i log_softmax(Dec(x̂0))_i · x̃_i ) + anneal · KL
    loss = λ · elbo + vae                                       (reweight=True)
         = elbo + λ · vae                                       (reweight=False)
    anneal = min(vae_anneal_cap, n_steps / vae_anneal_steps)
    λ      = max((1 - n_epochs_done / anneal_steps) · lamda, anneal_cap)

``n_steps`` (optimizer steps taken so far) lives in ``model_state``; ``n_epochs_done =
n_steps // ceil(U / batch_size)``, which is the reference's per-epoch counter. Two AdamW
optimizers (``optim.lr1``/``wd1`` for the autoencoder, ``optim.lr2``/``wd2`` for the denoiser) are
combined with ``optax.multi_transform`` over the two halves of the parameter dict.

Inference: encode μ (no dropout), run DiffRec's reverse process (:func:`samplers.diffrec_reverse`)
in latent space from μ, decode, and return the logits in the *original* item order (the trainer
masks history in that order; the reference instead remaps its masks into cluster order, which ranks
identically).

Quirk decisions (spec sections 8 and 12):

* *z is not detached* before the diffusion loss, so the diffusion MSE also trains the encoders:
  mimicked.
* *The reconstruction target is the dropped-out input* (kept entries scaled by 1/0.9, dropped ones
  0), not the clean row: mimicked by default (``model.recon_target="dropped"``);
  ``"clean"`` uses the undropped row, as Mult-VAE does (an item hidden from the encoder is then
  still a target, which the reference never asks the model to predict).
* *The decoder reads the x̂0 predicted at the sampled t*, not z: mimicked.
* *tanh after the last encoder layer* bounds μ and logvar to (-1, 1): mimicked.
* *KL is a batch mean of per-user sums*, annealed per batch; λ is annealed per epoch: mimicked.
* *Importance sampling always on*, over the latent loss: mimicked by default (as DiffRec);
  ``diffusion.timestep_sampling="uniform"`` switches it off. The loss history and the step
  counter are arrays in ``model_state``, updated in the jitted step and checkpointed (the reference
  keeps them in Python objects, lost on restart), so a resumed run continues exactly.
* *``reweight=False`` crashes in the reference*: fixed (weight 1 per step, ``elbo + λ·vae``).
* *``beta_fixed=False``*: the default of this model (``diffusion.beta_fixed`` overrides it).
* *k-means from torch's global RNG with random init*: not portable; we draw the init from
  ``jax.random.key(model.kmeans_seed)`` (``seed`` when it is -1) (``model.kmeans_init="random"`` as the
  reference, or ``"k-means++"``). A cluster that ends up empty is dropped (the reference would
  crash on it); the effective number of categories is logged.
* *Autoencoder initialisation* is not described by the spec; we use the denoiser's L-DiffRec init
  (Xavier-normal weights, zero biases) for every Linear.
* Padding rows of the last partial batch are excluded from every batch mean (the reference has no
  padding).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffrec_jax import diffusion as dif
from diffrec_jax import samplers, timesteps
from diffrec_jax.models.diffrec import DiffRec, make_schedule_from_config
from diffrec_jax.models.kmeans import INITS, kmeans
from diffrec_jax.models.mlp import DiffRecDenoiser, activation, dropout

log = logging.getLogger("diffrec_jax")

# Reference defaults of the L-DiffRec fields (used when a config lacks a field).
MODEL_DEFAULTS: dict[str, Any] = {
    "n_cate": 2,
    "in_dims": (300,),
    "out_dims": (),
    "mlp_dims": (300,),
    "ae_act": "tanh",
    "ae_dropout": 0.1,
    "reparam": True,
    "recon_target": "dropped",
    "lamda": 0.03,
    "anneal_steps": 500,
    "anneal_cap": 0.005,
    "vae_anneal_steps": 200,
    "vae_anneal_cap": 0.3,
    "item_emb_path": "",
    "kmeans_init": "random",
    "kmeans_tol": 1e-4,
    "kmeans_max_iter": 1000,
    "kmeans_seed": -1,  # < 0: config.seed
}
OPTIM_DEFAULTS: dict[str, Any] = {"lr1": 1e-3, "lr2": 5e-4, "wd1": 0.0, "wd2": 0.0}


def _get(group, name: str, defaults: dict) -> Any:
    value = group.get(name, None)
    return defaults[name] if value is None else value


# ----------------------------------------------------------------------------------------------
# Clustering and widths (host side)
# ----------------------------------------------------------------------------------------------


def split_widths(cluster_sizes: Sequence[int], total: int) -> list[int]:
    """Splits a total width among clusters in proportion to their sizes.

    ``w_c = max(1, int(|c| / I · total))`` for every cluster but the last, which takes
    ``total - Σ_{c<last} w_c``; so ``Σ_c w_c = total``.

    Args:
      cluster_sizes: ``|c|`` for each cluster (``I = Σ |c|``).
      total: width to split.

    Returns:
      One width per cluster.
    """
    n_items = int(sum(cluster_sizes))
    widths = [max(1, int(s / n_items * total)) for s in cluster_sizes[:-1]]
    last = int(total) - sum(widths)
    if last < 1:
        raise ValueError(
            f"cannot split width {total} among {len(cluster_sizes)} clusters of sizes "
            f"{list(cluster_sizes)}: the last one would get {last}"
        )
    return widths + [last]


def latent_widths(cluster_sizes: Sequence[int], dims: Sequence[int]) -> list[list[int]]:
    """Per-cluster widths at every level of ``dims`` (spec section 8, "Latent sizes").

    Returns:
      ``widths[c][j]`` for cluster ``c`` and level ``j``; ``Σ_c widths[c][j] = dims[j]``.
    """
    per_level = [split_widths(cluster_sizes, d) for d in dims]
    return [[per_level[j][c] for j in range(len(dims))] for c in range(len(cluster_sizes))]


def cluster_items(labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Category permutation from cluster labels.

    Args:
      labels: int ``[I]`` cluster of each item.

    Returns:
      ``(perm, sizes)``: ``perm`` int32 ``[I]`` maps a position in cluster order to the original
      item id (the reference's ``category_map``: clusters in label order, ids ascending within a
      cluster); ``sizes`` are the non-empty clusters' sizes in that order.
    """
    labels = np.asarray(labels)
    perm = np.argsort(labels, kind="stable").astype(np.int32)
    sizes = [int(n) for n in np.bincount(labels) if n > 0]
    return perm, sizes


# ----------------------------------------------------------------------------------------------
# Autoencoder
# ----------------------------------------------------------------------------------------------


class ClusterAutoencoder(nnx.Module):
    """Per-cluster VAE encoders and a decoder over rows given in cluster order.

    Encoder of cluster ``c``: ``|c| -> w_c[0] -> ... -> 2 w_c[-1]``, the activation after every
    layer (the last included); the first half of the output is ``μ_c``, the second ``logvar_c``.
    Decoder: with ``out_dims = ()`` one shared ``Linear(d -> I)`` on the whole latent; otherwise
    per cluster ``d_c -> o_c[0] -> ... -> |c|`` with the activation between layers (not after the
    last), concatenated.

    Args:
      cluster_sizes: ``|c|`` per cluster; the rows given to :meth:`encode` hold the clusters'
        items contiguously in this order.
      in_dims: encoder widths (totals over clusters); ``in_dims[-1] = d`` is the latent width.
      out_dims: decoder hidden widths (totals), ``()`` for the shared Linear decoder.
      act: activation name.
      dropout_rate: input dropout of :meth:`encode` in training.
      rngs: parameter RNGs.
    """

    def __init__(
        self,
        cluster_sizes: Sequence[int],
        in_dims: Sequence[int],
        out_dims: Sequence[int] = (),
        *,
        act: str = "tanh",
        dropout_rate: float = 0.1,
        rngs: nnx.Rngs,
    ):
        self.cluster_sizes = tuple(int(s) for s in cluster_sizes)
        self.n_items = sum(self.cluster_sizes)
        self.in_dims = tuple(int(d) for d in in_dims)
        self.out_dims = tuple(int(d) for d in out_dims)
        self.act_name = act
        self.dropout_rate = float(dropout_rate)
        kernel_init = nnx.initializers.variance_scaling(1.0, "fan_avg", "normal")
        lin = lambda i, o: nnx.Linear(  # noqa: E731
            i, o, kernel_init=kernel_init, bias_init=nnx.initializers.zeros_init(), rngs=rngs
        )
        self.enc_widths = latent_widths(self.cluster_sizes, self.in_dims)
        self.latent_sizes = tuple(w[-1] for w in self.enc_widths)
        self.latent_dim = sum(self.latent_sizes)
        enc = []
        for size, w in zip(self.cluster_sizes, self.enc_widths):
            chain = [size] + w[:-1] + [2 * w[-1]]
            enc.append(nnx.List([lin(i, o) for i, o in zip(chain[:-1], chain[1:])]))
        self.encoders = nnx.List(enc)
        if self.out_dims:
            dec_widths = latent_widths(self.cluster_sizes, self.out_dims)
            dec = []
            for size, lat, w in zip(self.cluster_sizes, self.latent_sizes, dec_widths):
                chain = [lat] + w + [size]
                dec.append(nnx.List([lin(i, o) for i, o in zip(chain[:-1], chain[1:])]))
            self.decoders = nnx.List(dec)
        else:
            self.decoder = lin(self.latent_dim, self.n_items)

    def encode(
        self,
        x_BxI: jnp.ndarray,
        *,
        dropout_key: jax.Array | None = None,
        reparam_key: jax.Array | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """Encodes rows in cluster order.

        Args:
          x_BxI: ``[B, I]`` rows, clusters contiguous.
          dropout_key: input dropout key (None: no dropout, evaluation).
          reparam_key: key of ``z = μ + exp(logvar/2) ε`` (None: ``z = μ``).

        Returns:
          ``(x_drop_BxI, z_BxD, mu_BxD, logvar_BxD)``; ``x_drop`` is the dropped-out input (the
          reconstruction target).
        """
        act = activation(self.act_name)
        x = dropout(x_BxI, self.dropout_rate, dropout_key)
        mus, logvars = [], []
        start = 0
        for size, lat, layers in zip(self.cluster_sizes, self.latent_sizes, self.encoders):
            h = x[:, start : start + size]
            start += size
            for layer in layers:
                h = act(layer(h))
            mus.append(h[:, :lat])
            logvars.append(h[:, lat:])
        mu = jnp.concatenate(mus, axis=-1)
        logvar = jnp.concatenate(logvars, axis=-1)
        if reparam_key is None:
            z = mu
        else:
            z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(reparam_key, mu.shape, mu.dtype)
        return x, z, mu, logvar

    def decode(self, z_BxD: jnp.ndarray) -> jnp.ndarray:
        """Latent ``[B, d]`` -> logits ``[B, I]`` in cluster order."""
        if not self.out_dims:
            return self.decoder(z_BxD)
        act = activation(self.act_name)
        outs, start = [], 0
        for lat, layers in zip(self.latent_sizes, self.decoders):
            h = z_BxD[:, start : start + lat]
            start += lat
            for i, layer in enumerate(layers):
                h = layer(h)
                if i < len(layers) - 1:
                    h = act(h)
            outs.append(h)
        return jnp.concatenate(outs, axis=-1)


def kl_divergence(mu_BxD: jnp.ndarray, logvar_BxD: jnp.ndarray) -> jnp.ndarray:
    """Per-example ``KL(N(μ, e^logvar) || N(0, I)) = -½ Σ_d (1 + logvar - μ² - e^logvar)``, ``[B]``."""
    return -0.5 * jnp.sum(1.0 + logvar_BxD - mu_BxD**2 - jnp.exp(logvar_BxD), axis=-1)


def vae_anneal(step, steps: int, cap: float):
    """KL weight ``min(cap, step / steps)`` (``cap`` when ``steps <= 0``); ``step`` = batches seen."""
    if steps <= 0:
        return jnp.asarray(cap, jnp.float32)
    return jnp.minimum(cap, jnp.asarray(step, jnp.float32) / steps)


def lamda_anneal(epochs_done, lamda: float, steps: int, cap: float):
    """Diffusion weight ``max((1 - epochs_done / steps) · lamda, cap)`` (``max(lamda, cap)`` if steps <= 0)."""
    if steps <= 0:
        return jnp.asarray(max(lamda, cap), jnp.float32)
    return jnp.maximum((1.0 - jnp.asarray(epochs_done, jnp.float32) / steps) * lamda, cap)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class LDiffRec:
    """L-DiffRec (and LT-DiffRec with ``data.time_weights``): latent diffusion over clustered VAEs.

    Contract (see :mod:`diffrec_jax.models`):

    * ``init(key) -> (graphdefs, params, model_state)`` with ``params = {"ae": ..., "denoiser": ...}``
      and ``model_state = {"hist": LossHistory, "step": int32}``;
    * ``loss(params, model_state, x_BxI, mask_B, key) -> (loss, (model_state, aux))``;
    * ``score(params, model_state, x_BxI, key) -> [B, I]`` scores in the original item order;
    * ``optimizer(optim_cfg)``: AdamW(lr1, wd1) on ``params["ae"]``, AdamW(lr2, wd2) on
      ``params["denoiser"]``.

    Args:
      config: a full config (``model``, ``diffusion``, ``sampling``, ``train`` groups).
      data: an :class:`~diffrec_jax.data.InteractionData`; its ``item_emb`` (or the ``.npy`` at
        ``config.model.item_emb_path`` when it has none) is clustered when ``n_cate > 1``.
    """

    name = "ldiffrec"

    def __init__(self, config, data):
        self.n_items = int(data.n_items)
        m = config.model
        self.mcfg, self.dcfg, self.scfg = m, config.diffusion, config.sampling
        g = lambda name: _get(m, name, MODEL_DEFAULTS)  # noqa: E731
        self.in_dims = tuple(int(d) for d in g("in_dims"))
        self.out_dims = tuple(int(d) for d in g("out_dims"))
        self.mlp_dims = tuple(int(d) for d in g("mlp_dims"))
        self.ae_act = g("ae_act")
        self.ae_dropout = float(g("ae_dropout"))
        self.reparam = bool(g("reparam"))
        self.recon_target = g("recon_target")
        self.lamda = float(g("lamda"))
        self.anneal_steps = int(g("anneal_steps"))
        self.anneal_cap = float(g("anneal_cap"))
        self.vae_anneal_steps = int(g("vae_anneal_steps"))
        self.vae_anneal_cap = float(g("vae_anneal_cap"))
        bs = min(int(config.train.batch_size), int(data.n_users))
        self.steps_per_epoch = max(1, math.ceil(int(data.n_users) / bs))

        n_cate = int(g("n_cate"))
        if n_cate > 1:
            emb = self._item_embeddings(data, g("item_emb_path"))
            seed = g("kmeans_seed")
            seed = int(config.seed) if seed is None or int(seed) < 0 else int(seed)
            res = kmeans(
                emb,
                n_cate,
                jax.random.key(seed),
                init=g("kmeans_init"),
                tol=float(g("kmeans_tol")),
                max_iter=int(g("kmeans_max_iter")),
            )
            perm, sizes = cluster_items(np.asarray(res.labels))
            if len(sizes) < n_cate:
                log.warning("k-means left %d of %d clusters empty; using %d", n_cate - len(sizes),
                            n_cate, len(sizes))
            self.perm: np.ndarray | None = perm
            self.inv_perm: np.ndarray | None = np.argsort(perm).astype(np.int32)
            self.cluster_sizes = tuple(sizes)
            log.info("k-means: %d clusters of sizes %s in %d iterations", len(sizes), sizes,
                     int(res.n_iter))
        else:
            self.perm = self.inv_perm = None
            self.cluster_sizes = (self.n_items,)
        for j, d in enumerate(self.in_dims):
            if d < len(self.cluster_sizes):
                raise ValueError(
                    f"config.model.in_dims[{j}]={d} is smaller than the {len(self.cluster_sizes)} "
                    "clusters (each needs a width >= 1)"
                )

        self.noise_free = float(self.dcfg.noise_scale) == 0.0
        self.schedule = (
            None if self.noise_free else make_schedule_from_config(self.dcfg, beta_fixed_default=False)
        )
        self.num_steps = int(self.dcfg.steps)
        self.mean_type = self.dcfg.mean_type
        self.graphdefs = None

    # -- configuration -------------------------------------------------------------------------

    @staticmethod
    def _item_embeddings(data, path: str) -> np.ndarray:
        if getattr(data, "item_emb", None) is not None:
            return np.asarray(data.item_emb, np.float32)
        if path:
            emb = np.load(path)
            if emb.ndim != 2 or emb.shape[0] != int(data.n_items):
                raise ValueError(
                    f"config.model.item_emb_path={path!r}: expected [n_items={data.n_items}, D], "
                    f"got shape {emb.shape}"
                )
            if not np.all(np.isfinite(emb)):
                raise ValueError(f"config.model.item_emb_path={path!r}: non-finite values")
            return emb.astype(np.float32)
        raise ValueError(
            "L-DiffRec with config.model.n_cate > 1 clusters items by embeddings, but the dataset "
            f"{getattr(data, 'name', '')!r} ships no item_emb; set config.model.item_emb_path to a "
            ".npy [n_items, D] file (or config.model.n_cate=1)"
        )

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses L-DiffRec settings that make no sense, naming the field."""
        DiffRec.validate_config(config)
        m, o = config.model, config.optim
        g = lambda name: _get(m, name, MODEL_DEFAULTS)  # noqa: E731
        if int(g("n_cate")) < 1:
            raise ValueError(f"config.model.n_cate must be >= 1, got {g('n_cate')}")
        for field in ("in_dims", "mlp_dims"):
            dims = tuple(g(field))
            if not dims or min(int(d) for d in dims) < 1:
                raise ValueError(f"config.model.{field} must be non-empty positive widths, got {dims}")
        if tuple(g("out_dims")) and min(int(d) for d in g("out_dims")) < 1:
            raise ValueError(f"config.model.out_dims must be positive widths, got {tuple(g('out_dims'))}")
        if not 0.0 <= float(g("ae_dropout")) < 1.0:
            raise ValueError(f"config.model.ae_dropout must be in [0, 1), got {g('ae_dropout')}")
        activation(g("ae_act"))
        if g("recon_target") not in ("dropped", "clean"):
            raise ValueError(
                f"config.model.recon_target must be 'dropped' or 'clean', got {g('recon_target')!r}"
            )
        if g("kmeans_init") not in INITS:
            raise ValueError(f"config.model.kmeans_init must be one of {INITS}, got {g('kmeans_init')!r}")
        if float(g("lamda")) < 0:
            raise ValueError(f"config.model.lamda must be >= 0, got {g('lamda')}")
        for name in ("lr1", "lr2"):
            if float(_get(o, name, OPTIM_DEFAULTS)) <= 0:
                raise ValueError(f"config.optim.{name} must be > 0, got {_get(o, name, OPTIM_DEFAULTS)}")

    def optimizer(self, ocfg) -> optax.GradientTransformation:
        """AdamW(lr1, wd1) for the autoencoder and AdamW(lr2, wd2) for the denoiser.

        Torch AdamW semantics (decoupled weight decay), betas ``(optim.b1, optim.b2)``, ``optim.eps``.
        """
        g = lambda name: float(_get(ocfg, name, OPTIM_DEFAULTS))  # noqa: E731
        b1, b2, eps = ocfg.get("b1", 0.9), ocfg.get("b2", 0.999), ocfg.get("eps", 1e-8)
        tx = optax.multi_transform(
            {
                "ae": optax.adamw(g("lr1"), b1=b1, b2=b2, eps=eps, weight_decay=g("wd1")),
                "denoiser": optax.adamw(g("lr2"), b1=b1, b2=b2, eps=eps, weight_decay=g("wd2")),
            },
            param_labels,
        )
        if ocfg.get("grad_clip", 0.0):
            tx = optax.chain(optax.clip_by_global_norm(ocfg.grad_clip), tx)
        return tx

    # -- parameters ----------------------------------------------------------------------------

    def make_modules(self, key: jax.Array) -> tuple[ClusterAutoencoder, DiffRecDenoiser]:
        k_ae, k_den = jax.random.split(key)
        ae = ClusterAutoencoder(
            self.cluster_sizes,
            self.in_dims,
            self.out_dims,
            act=self.ae_act,
            dropout_rate=self.ae_dropout,
            rngs=nnx.Rngs(params=k_ae),
        )
        den = DiffRecDenoiser(
            ae.latent_dim,
            self.mlp_dims,
            emb_size=self.mcfg.emb_size,
            dropout_rate=self.mcfg.dropout,
            act=self.mcfg.act,
            norm=self.mcfg.norm,
            init="xavier",
            rngs=nnx.Rngs(params=k_den),
        )
        return ae, den

    def init(self, key: jax.Array):
        ae, den = self.make_modules(key)
        g_ae, p_ae = nnx.split(ae)
        g_den, p_den = nnx.split(den)
        self.graphdefs = {"ae": g_ae, "denoiser": g_den}
        model_state = {
            "hist": timesteps.init_loss_history(self.num_steps, self.dcfg.history_size),
            "step": jnp.zeros((), jnp.int32),
        }
        return self.graphdefs, {"ae": p_ae, "denoiser": p_den}, model_state

    def _modules(self, params) -> tuple[ClusterAutoencoder, DiffRecDenoiser]:
        if self.graphdefs is None:
            self.init(jax.random.key(0))  # graph structure only
        return (
            nnx.merge(self.graphdefs["ae"], params["ae"]),
            nnx.merge(self.graphdefs["denoiser"], params["denoiser"]),
        )

    # -- item order ----------------------------------------------------------------------------

    def to_cluster_order(self, x_BxI: jnp.ndarray) -> jnp.ndarray:
        """Rows in original item order -> cluster order (``x[:, perm]``)."""
        return x_BxI if self.perm is None else x_BxI[:, self.perm]

    def to_item_order(self, s_BxI: jnp.ndarray) -> jnp.ndarray:
        """Rows in cluster order -> original item order (``s[:, argsort(perm)]``)."""
        return s_BxI if self.inv_perm is None else s_BxI[:, self.inv_perm]

    # -- training ------------------------------------------------------------------------------

    def anneals(self, step) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(λ, KL anneal)`` before optimizer step ``step`` (0-based)."""
        epochs_done = jnp.asarray(step, jnp.int32) // self.steps_per_epoch
        lam = lamda_anneal(epochs_done, self.lamda, self.anneal_steps, self.anneal_cap)
        kl_w = vae_anneal(step, self.vae_anneal_steps, self.vae_anneal_cap)
        return lam, kl_w

    def loss(self, params, model_state, x_BxI, mask_B, key):
        """L-DiffRec loss over the valid rows of a (padded) batch; see the module docstring.

        Args:
          params: ``{"ae": ..., "denoiser": ...}``.
          model_state: ``{"hist": LossHistory, "step": int32}``.
          x_BxI: ``[B, I]`` train rows in original item order (binary or time-weighted).
          mask_B: bool ``[B]``, False for padding rows.
          key: PRNG key.

        Returns:
          ``(loss, (new_model_state, aux))`` with ``aux`` holding the loss terms and anneals.
        """
        k_drop, k_rep, k_t, k_noise, k_den = jax.random.split(key, 5)
        ae, den = self._modules(params)
        x = self.to_cluster_order(x_BxI)
        x_drop, z, mu, logvar = ae.encode(
            x, dropout_key=k_drop, reparam_key=k_rep if self.reparam else None
        )
        hist = model_state["hist"]
        B = x.shape[0]
        t_B, pt_B = timesteps.sample_timesteps(
            k_t, hist, B, method=self.dcfg.timestep_sampling, uniform_prob=self.dcfg.uniform_prob
        )

        def denoise_fn(x_t, t, cond=None):
            return den(x_t, t, dropout_key=k_den)

        if self.noise_free:
            x0_hat = denoise_fn(z, t_B)
            diff_B = jnp.mean(jnp.square(z - x0_hat), axis=-1)
        else:
            loss_fn = dif.get_loss_fn(self.schedule, mean_type=self.mean_type, reweight=self.dcfg.reweight)
            diff_B, aux = loss_fn(denoise_fn, z, t_B, k_noise)
            x0_hat = dif.predict_x0(self.schedule, aux["x_t"], t_B, aux["out"], self.mean_type)
        logits = ae.decode(x0_hat)
        target = x_drop if self.recon_target == "dropped" else x
        rec_B = -jnp.sum(jax.nn.log_softmax(logits, axis=-1) * target, axis=-1)
        kl_B = kl_divergence(mu, logvar)

        maskf = mask_B.astype(jnp.float32)
        n = jnp.maximum(maskf.sum(), 1.0)
        bmean = lambda v: jnp.sum(v * maskf) / n  # noqa: E731
        elbo = bmean(diff_B / pt_B)
        rec, kl = bmean(rec_B), bmean(kl_B)
        step = model_state["step"]
        lam, kl_w = self.anneals(step)
        vae = rec + kl_w * kl
        loss = lam * elbo + vae if self.dcfg.reweight else elbo + lam * vae
        new_state = {
            "hist": timesteps.update_loss_history(hist, t_B, diff_B, mask_B),
            "step": step + 1,
        }
        aux = {"elbo": elbo, "recon": rec, "kl": kl, "lamda": lam, "kl_anneal": kl_w}
        return loss, (new_state, aux)

    # -- inference -----------------------------------------------------------------------------

    def score(self, params, model_state, x_BxI, key):
        """Scores ``[B, I]`` in original item order: encode μ, reverse diffusion, decode."""
        ae, den = self._modules(params)
        _, _, mu, _ = ae.encode(self.to_cluster_order(x_BxI))

        def denoise_fn(x_t, t, cond=None):
            return den(x_t, t)

        if self.noise_free:
            z = samplers.iterate_denoiser(denoise_fn, mu, self.num_steps)
        else:
            z = samplers.diffrec_reverse(
                denoise_fn,
                self.schedule,
                mu,
                key,
                noise_steps=self.scfg.noise_steps,
                sampling_noise=self.scfg.noise,
                mean_type=self.mean_type,
            )
        return self.to_item_order(ae.decode(z))


def param_labels(params) -> dict:
    """``"ae"`` / ``"denoiser"`` label for every leaf of ``{"ae": ..., "denoiser": ...}``."""
    return {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}
