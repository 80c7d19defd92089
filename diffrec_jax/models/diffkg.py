"""DiffKG (Jiang, Yang, Xia and Huang, WSDM 2024): knowledge-graph diffusion for recommendation.

Spec: ``shared/specs/diffkg.md`` (written from reading the reference; nothing copied). Notation:
``U`` users, ``I`` items (= KG entities ``0..I-1``), ``E`` = ``entity_n`` KG entities, ``R2`` =
``relation_num`` (with inverses), ``d`` the embedding width.

**Recommender.** Parameters ``uEmb [U, d]``, ``eEmb [E, d]``, ``rEmb [R2, d]`` and the RGAT
weight ``W [2d, d]`` (Xavier uniform; ``W`` with gain ``sqrt 2``). Relation-aware KG attention
over an edge list ``(h, t, r)``, ``kg_layers`` hops from ``e = eEmb``:

    a_ht = LeakyReLU_0.2( sum_k ([e_h || e_t] W)_k rEmb[r]_k ),
    alpha_ht = softmax of a over the edges of head h              (segment softmax),
    e'_h = normalize( dropout( e_h + sum_t alpha_ht e_t ) ),      res <- res_lambda res + e',

with ``res`` initialised to ``eEmb``; item embeddings are ``res[:I]``. Message passing is
``jax.ops.segment_max`` / ``segment_sum`` over padded edge lists (padding edges go to a dummy
segment ``E``), never a dense ``E x E`` matrix. Collaborative propagation of
``X^0 = [uEmb; res[:I]]`` on the user-item graph: by default (``gcn = "lightgcn"``) our
:class:`~diffrec_jax.models.lightgcn.LightGCN` propagation itself (``A_hat = D^{-1/2} A D^{-1/2}``,
mean of layers ``0..K``), so the comparison with LightGCN isolates the KG; ``gcn = "reference"``
is the reference's operator (``D^{-1/2} (A + I) D^{-1/2}``, self-loops included, *sum* of
layers). BPR triples come from LightGCN's exact sampler (:func:`sample_bpr_triples`:
``samples_per_user`` uniform positives and negatives per user row and epoch; the reference
draws one negative per train pair: equal in expectation when ``samples_per_user`` ~ nnz / U).

**Two views and InfoNCE.** The *original* view runs RGAT on a fixed edge sample drawn once
(``triplet_num`` edges per head, ``-1`` = all); the *denoised* view on the sub-KG rebuilt each
epoch (below). ``cl_pattern = 0``: main = denoised, auxiliary = original; ``1``: swapped. With
``z1`` = auxiliary and ``z2`` = main embeddings, both L2-normalised, for the batch's positive items
``n`` (duplicates kept) against all items ``m`` (and likewise batch users against all users):

    L_cl = mean_n [ -log( exp(z1_n . z2_n / tau) / sum_m exp(z1_n . z2_m / tau) ) ].

Loss per step: ``BPR(main) + reg sum_{params} ||.||^2 + ssl_reg (L_cl^users + L_cl^items)``.

**KG diffusion.** Each entity's binary KG adjacency row ``x_0 = A[e]`` (length ``E``; dense rows are
built per batch from the CSR, :meth:`KnowledgeGraph.adjacency_rows`) is diffused with DiffRec's
Gaussian process (``1 - abar_t = linspace(s m, s M, T)``, ``beta_0 := 1e-4``, uniform ``t``) and
the x0-predicting :class:`~diffrec_jax.models.mlp.DiffRecDenoiser` (``dims = [1000]``, L2-normalised
input, dropout 0.5). Loss ``(1 - e_loss) mean_B w_t mean_E (x_0 - x̂_0)^2 + e_loss CKGC`` with
``w_t = SNR(t-1) - SNR(t)``, ``w_0 = 1`` (:func:`diffrec_jax.diffusion.get_loss_fn`) and the
collaborative KG convolution

    CKGC = mean_{B, d} ( x̂_0[:, :I] (X^T uEmb) - eEmb[batch] )^2

(``X`` the binary train matrix; the reference forms ``(X x̂_0[:, :I]^T)^T uEmb``, the same product
associated differently; ``uEmb``, ``eEmb`` detached).

**Rebuild (every epoch).** For every entity, the deterministic reverse chain from its clean row,
``x <- c1_t f(x, t) + c2_t x`` for ``t = T-1..0`` (posterior mean, no dropout), computed in the
denoiser's hidden space (:func:`projected_reverse_norm`, exact up to float reassociation); keep the
top ``rebuild_k`` columns as tails, add the reverse pairs, keep only pairs of the original
(inverse-augmented) KG with their original relation, then keep each edge with probability
``keep_rate``. That edge list is the denoised view until the next rebuild.

**Training** (:meth:`DiffKG.train_epoch`, the training loop's hook for a model that owns its
epoch, because an epoch is not a sum of per-step losses: it is 1. a diffusion pass over all entity
rows, 2. the KG rebuild, 3. a recommender pass over all users; the loop then validates, keeps the
best epoch by ``select_metric`` and stops after ``patience_epochs``). :meth:`DiffKG.score` ranks
with the epoch's main-view embeddings (no dropout).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from diffrec_jax import diffusion as dif
from diffrec_jax import schedules
from diffrec_jax.batching import padded_batches
from diffrec_jax.data import kg as kg_data
from diffrec_jax.models.lightgcn import LightGCN, sample_bpr_triples
from diffrec_jax.models.mlp import DiffRecDenoiser, activation, timestep_embedding

log = logging.getLogger("diffrec_jax")

__all__ = ["DiffKG", "kg_schedule", "load_kg_for", "projected_reverse_norm", "rgat", "segment_softmax"]


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


def segment_softmax(a_E: jnp.ndarray, seg_E: jnp.ndarray, num_segments: int) -> jnp.ndarray:
    """Softmax of ``a`` within each segment: ``exp(a_e - max_s) / sum_{e' in s} exp(a_e' - max_s)``."""
    mx = jax.ops.segment_max(a_E, seg_E, num_segments=num_segments)
    ex = jnp.exp(a_E - jax.lax.stop_gradient(mx)[seg_E])
    den = jax.ops.segment_sum(ex, seg_E, num_segments=num_segments)
    return ex / den[seg_E]


def _l2n(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _drop(x, rate, key):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def rgat(e_Exd: jnp.ndarray, r_Rxd: jnp.ndarray, w_2dxd: jnp.ndarray, heads: jnp.ndarray,
         tails: jnp.ndarray, rels: jnp.ndarray, *, n_layers: int, res_lambda: float,
         dropout: float = 0.0, key: jax.Array | None = None) -> jnp.ndarray:
    """Relation-aware graph attention over a padded edge list (module docstring).

    Args:
      e_Exd: entity embeddings ``[E, d]``.
      r_Rxd: relation embeddings ``[R2, d]``.
      w_2dxd: attention weight ``[2d, d]``.
      heads, tails, rels: int32 ``[N]`` edges; padding edges have ``heads == E`` (dropped).
      n_layers: hops.
      res_lambda: residual mixing of the running output.
      dropout: message dropout rate (training, with ``key``).
      key: PRNG key or None.

    Returns:
      ``[E, d]`` the running output ``res``.
    """
    E = e_Exd.shape[0]
    tails_c = jnp.minimum(tails, E - 1)
    ent = e_Exd
    res = e_Exd
    for layer in range(n_layers):
        ep = jnp.concatenate([ent, jnp.zeros_like(ent[:1])], 0)  # row E: padding
        eh, et = ep[heads], ent[tails_c]
        a = jax.nn.leaky_relu(jnp.sum((jnp.concatenate([eh, et], -1) @ w_2dxd) * r_Rxd[rels], -1), 0.2)
        alpha = segment_softmax(a, heads, E + 1)
        agg = jax.ops.segment_sum(alpha[:, None] * et, heads, num_segments=E + 1)[:E]
        new = ent + agg
        if key is not None:
            new = _drop(new, dropout, jax.random.fold_in(key, layer))
        new = _l2n(new)
        res = res_lambda * res + new
        ent = new
    return res


def kg_schedule(steps: int, noise_scale: float, noise_min: float, noise_max: float,
                beta0: float = 1e-4) -> schedules.Schedule:
    """DiffKG's schedule: DiffRec's linear-variance betas with ``beta_0`` overwritten by ``beta0``
    (``1e-4`` in the reference, where DiffRec uses ``1e-5``)."""
    b = schedules.diffrec_betas(steps, noise_scale, noise_min, noise_max, beta_fixed=False)
    b[0] = beta0
    return schedules.from_betas(b)


def projected_reverse_norm(denoiser: DiffRecDenoiser, schedule: schedules.Schedule, x_BxE: jnp.ndarray | None,
                           out_cols: int | None = None, *, sparse: tuple | None = None) -> jnp.ndarray:
    """The deterministic chain ``x <- c1_t f(x, t) + c2_t x`` (``t = T-1..0``) of an x0-predicting
    :class:`DiffRecDenoiser` **with input L2 normalisation**, in its hidden space.

    ``f(x, t) = a(x, t) W_o + b_o`` where ``a`` depends on ``x`` only through ``h = x W_x`` and
    ``||x||`` (the input is ``x / ||x||``). Tracking ``h = x W_x``, ``o = x W_o^T``, ``c = x . b_o``
    and ``n = ||x||^2``, one step with ``a = a(h / sqrt n, t)`` is

        h' = c1 (a W_o W_x + b_o W_x) + c2 h,      o' = c1 (a G + W_o b_o) + c2 o,
        c' = c1 (a . W_o b_o + ||b_o||^2) + c2 c,   n' = c1^2 ||f||^2 + 2 c1 c2 (a . o + c) + c2^2 n,

    with ``G = W_o W_o^T`` and ``||f||^2 = a G a^T + 2 a . W_o b_o + ||b_o||^2``: every step costs
    ``H x H`` instead of two ``E``-wide layers, and only the last (``t = 0``: ``c1 = 1``, ``c2 = 0``)
    goes through the output layer. Equals :func:`diffrec_jax.samplers.diffrec_reverse` (no noise,
    ``mean_type = "x0"``) up to float reassociation (tested).

    Args:
      denoiser: merged denoiser with ``norm=True``.
      schedule: its schedule.
      x_BxE: dense start rows, or None with ``sparse``.
      out_cols: compute only the first ``out_cols`` output columns (default all).
      sparse: binary start rows as ``(row_N, col_N, valid_N, B)`` (one entry per non-zero, padded
        entries ``valid = False``): the initial projections become sums of ``N`` kernel rows
        instead of ``B x E`` products.

    Returns:
      ``[B, out_cols]`` the chain's final ``x``.
    """
    act = activation(denoiser.act_name)
    E = denoiser.in_features
    first = denoiser.in_layers[0]
    w_first = first.kernel[...]
    w_x, w_emb = w_first[:E], w_first[E:]
    last = denoiser.out_layers[-1]
    w_o, b_o = last.kernel[...], last.bias[...]  # [H, E], [E]
    hp = jax.lax.Precision.HIGHEST
    m_proj = jnp.matmul(w_o, w_x, precision=hp)
    c_proj = jnp.matmul(b_o, w_x, precision=hp)
    G = jnp.matmul(w_o, w_o.T, precision=hp)
    wb = jnp.matmul(w_o, b_o, precision=hp)
    bb = jnp.sum(b_o * b_o)

    def hidden(h, n, t):
        t_B = jnp.full((h.shape[0],), t, jnp.int32)
        emb = denoiser.emb_layer(timestep_embedding(t_B, denoiser.emb_size))
        inv = 1.0 / jnp.maximum(jnp.sqrt(jnp.maximum(n, 0.0)), 1e-12)
        a = act(h * inv[:, None] + emb @ w_emb + first.bias[...])
        for layer in list(denoiser.in_layers)[1:]:
            a = act(layer(a))
        for layer in list(denoiser.out_layers)[:-1]:
            a = act(layer(a))
        return a

    def step(state, t):
        h, o, c, n = state
        a = hidden(h, n, t)
        c1, c2 = schedule.posterior_mean_coef1[t], schedule.posterior_mean_coef2[t]
        aG = jnp.matmul(a, G, precision=hp)
        ff = jnp.sum(aG * a, -1) + 2.0 * (a @ wb) + bb
        fx = jnp.sum(a * o, -1) + c
        n2 = c1 * c1 * ff + 2.0 * c1 * c2 * fx + c2 * c2 * n
        h2 = c1 * (jnp.matmul(a, m_proj, precision=hp) + c_proj) + c2 * h
        o2 = c1 * (aG + wb) + c2 * o
        c_2 = c1 * (a @ wb + bb) + c2 * c
        return (h2, o2, c_2, n2), None

    if sparse is None:
        x = x_BxE
        state = (jnp.matmul(x, w_x, precision=hp), jnp.matmul(x, w_o.T, precision=hp), x @ b_o,
                 jnp.sum(x * x, -1))
    else:
        row, col, valid, B = sparse
        v = valid.astype(jnp.float32)
        seg = jnp.where(valid, row, B)  # padding entries go to a dropped segment

        def ssum(vals):
            return jax.ops.segment_sum(vals, seg, num_segments=B + 1)[:B]

        state = (ssum(w_x[col] * v[:, None]), ssum(w_o.T[col] * v[:, None]), ssum(b_o[col] * v), ssum(v))
    T = schedule.num_steps
    state, _ = jax.lax.scan(step, state, jnp.arange(T - 1, 0, -1, dtype=jnp.int32))
    a = hidden(state[0], state[3], 0)
    cols = E if out_cols is None else int(out_cols)
    return schedule.posterior_mean_coef1[0] * (a @ w_o[:, :cols] + b_o[:cols])


def load_kg_for(config: Any, data: Any) -> kg_data.KnowledgeGraph:
    """The KG a config names: ``config.model.kg_path`` (integer ``h r t`` file) if set, else the
    KGCN ``kg.txt`` in ``config.data.dir`` when ``config.data.source == "lastfm_kgcn"``."""
    path = config.model.get("kg_path", "")
    if path:
        tr = kg_data.load_kg_triples(path)
        return kg_data.build_kg(tr, name=str(path), n_entities=max(int(tr[:, [0, 2]].max()) + 1, data.n_items))
    if config.data.get("source") == "lastfm_kgcn":
        p = Path(config.data.dir) / "kg.txt"
        tr, _ = kg_data.read_kgcn_kg(p)
        return kg_data.build_kg(tr, name=str(p), n_entities=max(int(tr[:, [0, 2]].max()) + 1, data.n_items))
    raise ValueError("DiffKG needs a KG: set config.model.kg_path or use config.data.source='lastfm_kgcn'")


def _xavier_uniform(key, shape, gain=1.0):
    fan_in, fan_out = shape[0], shape[1]
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class DiffKG:
    """DiffKG behind the model contract; it owns its epoch (:meth:`train_epoch`).

    Config (``config.model``; defaults = the reference's): ``emb_dim`` 64, ``gnn_layers`` 2,
    ``kg_layers`` 1, ``mess_dropout`` 0.1, ``res_lambda`` 0.5, ``triplet_num`` 10, ``cl_pattern``
    0, ``ssl_reg`` 0.1, ``temp`` 0.1, ``reg`` 1e-7, ``samples_per_user`` 8, ``gcn`` "lightgcn",
    ``lr`` 1e-3; denoiser ``dims`` (1000,), ``emb_size`` 10, ``norm`` True, ``dropout`` 0.5;
    ``e_loss`` 0.5, ``rebuild_k`` 1, ``keep_rate`` 0.5, ``diff_batch`` 1024, ``diff_lr`` 1e-3,
    ``kg_path``, ``kg_every`` 1 (diffusion pass + rebuild every this many epochs; 1 = reference),
    ``use_diffusion`` True (False: ablation without the denoised view). Schedule from ``config.diffusion``: ``steps`` 5, ``noise_scale`` 0.1,
    ``noise_min`` 1e-4, ``noise_max`` 0.02. Training: ``config.train.num_epochs``,
    ``batch_size`` (users per recommender step), ``patience_epochs``; ``config.eval``.
    """

    name = "diffkg"
    needs_user_ids = True
    DEFAULTS = {
        "emb_dim": 64, "gnn_layers": 2, "kg_layers": 1, "mess_dropout": 0.1, "res_lambda": 0.5,
        "triplet_num": 10, "cl_pattern": 0, "ssl_reg": 0.1, "temp": 0.1, "reg": 1e-7,
        "samples_per_user": 8, "gcn": "lightgcn", "lr": 1e-3, "dims": (1000,), "emb_size": 10,
        "norm": True, "dropout": 0.5, "e_loss": 0.5, "rebuild_k": 1, "keep_rate": 0.5,
        "diff_batch": 1024, "diff_lr": 1e-3, "kg_path": "", "use_diffusion": True, "kg_every": 1,
    }

    def __init__(self, config: Any, data: Any, kg: kg_data.KnowledgeGraph | None = None):
        self.config = config
        self.data = data
        g = self.setting
        self.kg = load_kg_for(config, data) if kg is None else kg
        if self.kg.n_entities < data.n_items:
            raise ValueError(f"the KG has {self.kg.n_entities} entities, fewer than the {data.n_items} items")
        self.U, self.I, self.E = int(data.n_users), int(data.n_items), int(self.kg.n_entities)
        self.R2 = int(self.kg.n_relations)
        self.d = int(g("emb_dim"))
        d = config.diffusion
        self.schedule = kg_schedule(int(d.steps), float(d.noise_scale), float(d.noise_min), float(d.noise_max))
        self.loss_fn = dif.get_loss_fn(self.schedule, mean_type="x0", reweight=True)
        gcn = g("gcn")
        if gcn not in ("lightgcn", "reference"):
            raise ValueError(f"config.model.gcn must be 'lightgcn' or 'reference', got {gcn!r}")
        self.gcn = gcn
        x = data.train.binary()
        if gcn == "lightgcn":
            import ml_collections

            lcfg = ml_collections.ConfigDict({"model": {"emb_dim": self.d, "n_layers": int(g("gnn_layers")),
                                                        "reg": 0.0, "samples_per_user": int(g("samples_per_user")),
                                                        "init_std": 0.1}})
            self.lightgcn = LightGCN(lcfg, data)
        else:
            u, i, w, (su, si) = kg_data.user_item_edges(x)
            self.ui = tuple(jnp.asarray(a) for a in (u, i, w, su, si))
        # items x users incidence for CKGC: X^T uEmb via segment_sum over the train pairs
        self.x_users = jnp.asarray(x.user_ids().astype(np.int32))
        self.x_items = jnp.asarray(np.asarray(x.indices, np.int32))
        self.denoiser_graphdef = None

    # -- config --------------------------------------------------------------------------------

    def setting(self, field: str):
        m = self.config.model
        return m[field] if field in m else self.DEFAULTS[field]

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses bad DiffKG fields, naming them."""
        m = config.model
        get = lambda f: m.get(f, DiffKG.DEFAULTS[f]) if f in m else DiffKG.DEFAULTS[f]  # noqa: E731
        for f, lo in (("emb_dim", 1), ("gnn_layers", 0), ("kg_layers", 1), ("samples_per_user", 1),
                      ("rebuild_k", 1), ("diff_batch", 1), ("emb_size", 1), ("kg_every", 1)):
            v = get(f)
            if int(v) != v or v < lo:
                raise ValueError(f"config.model.{f} must be an integer >= {lo}, got {v}")
        t = get("triplet_num")
        if int(t) != t or (t < 1 and t != -1):
            raise ValueError(f"config.model.triplet_num must be -1 (all) or >= 1, got {t}")
        if get("cl_pattern") not in (0, 1):
            raise ValueError(f"config.model.cl_pattern must be 0 or 1, got {get('cl_pattern')}")
        for f in ("mess_dropout", "dropout"):
            if not 0 <= get(f) < 1:
                raise ValueError(f"config.model.{f} must be in [0, 1), got {get(f)}")
        for f in ("keep_rate", "e_loss"):
            if not 0 <= get(f) <= 1:
                raise ValueError(f"config.model.{f} must be in [0, 1], got {get(f)}")
        for f in ("temp", "lr", "diff_lr"):
            if not get(f) > 0:
                raise ValueError(f"config.model.{f} must be > 0, got {get(f)}")
        for f in ("reg", "ssl_reg"):
            if not get(f) >= 0:
                raise ValueError(f"config.model.{f} must be >= 0, got {get(f)}")
        if get("gcn") not in ("lightgcn", "reference"):
            raise ValueError(f"config.model.gcn must be 'lightgcn' or 'reference', got {get('gcn')!r}")

    # -- parameters ------------------------------------------------------------------------------

    def init_recommender(self, key: jax.Array) -> dict:
        """Xavier-uniform ``uEmb, eEmb, rEmb`` and ``W`` (gain ``sqrt 2``)."""
        ks = jax.random.split(key, 4)
        d = self.d
        return {
            "user": _xavier_uniform(ks[0], (self.U, d)),
            "entity": _xavier_uniform(ks[1], (self.E, d)),
            "relation": _xavier_uniform(ks[2], (self.R2, d)),
            "W": _xavier_uniform(ks[3], (2 * d, d), math.sqrt(2.0)),
        }

    def make_denoiser(self, key: jax.Array) -> DiffRecDenoiser:
        g = self.setting
        return DiffRecDenoiser(self.E, tuple(int(x) for x in g("dims")), emb_size=int(g("emb_size")),
                               dropout_rate=float(g("dropout")), act="tanh", norm=bool(g("norm")),
                               init="diffrec", rngs=nnx.Rngs(params=key))

    def init(self, key: jax.Array):
        """``(denoiser graphdef, {"rec": ..., "denoiser": ...}, {})``."""
        k1, k2 = jax.random.split(key)
        graphdef, dparams = nnx.split(self.make_denoiser(k2))
        self.denoiser_graphdef = graphdef
        return graphdef, {"rec": self.init_recommender(k1), "denoiser": dparams}, {}

    # -- recommender -----------------------------------------------------------------------------

    def propagate(self, users_Uxd: jnp.ndarray, items_Ixd: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Collaborative propagation of ``[uEmb; items]`` (LightGCN's, or the reference's)."""
        if self.gcn == "lightgcn":
            return self.lightgcn.propagate({"user_emb": users_Uxd, "item_emb": items_Ixd})
        u, i, w, su, si = self.ui
        eu, ei = users_Uxd, items_Ixd
        acc_u, acc_i = eu, ei
        for _ in range(int(self.setting("gnn_layers"))):
            eu, ei = (
                jax.ops.segment_sum(w[:, None] * ei[i], u, num_segments=self.U) + su[:, None] * eu,
                jax.ops.segment_sum(w[:, None] * eu[u], i, num_segments=self.I) + si[:, None] * ei,
            )
            acc_u, acc_i = acc_u + eu, acc_i + ei
        return acc_u, acc_i

    def view(self, rec: dict, edges: tuple, key: jax.Array | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Final ``(users [U, d], items [I, d])`` of one KG view (edges ``(h, t, r)`` padded)."""
        g = self.setting
        res = rgat(rec["entity"], rec["relation"], rec["W"], *edges, n_layers=int(g("kg_layers")),
                   res_lambda=float(g("res_lambda")), dropout=float(g("mess_dropout")), key=key)
        return self.propagate(rec["user"], res[: self.I])

    def rec_loss(self, rec: dict, x_BxI: jnp.ndarray, users_B: jnp.ndarray, mask_B: jnp.ndarray,
                 main_edges: tuple, aux_edges: tuple, key: jax.Array):
        """BPR(main view) + L2 + ssl_reg * InfoNCE(aux, main) for a batch of users.

        Returns:
          ``(loss, {"bpr", "reg", "cl"})``.
        """
        g = self.setting
        k_s, k_m, k_a = jax.random.split(key, 3)
        S = int(g("samples_per_user"))
        pos, neg, ok = sample_bpr_triples(x_BxI, k_s, S)
        u_main, i_main = self.view(rec, main_edges, k_m)
        u_aux, i_aux = self.view(rec, aux_edges, k_a)
        valid = (mask_B & ok).astype(jnp.float32)
        vs = valid[:, None] * jnp.ones((1, S), jnp.float32)
        eu = u_main[users_B]
        diff = jnp.einsum("bd,bsd->bs", eu, i_main[pos] - i_main[neg])
        n = jnp.maximum(vs.sum(), 1.0)
        bpr = jnp.sum(jax.nn.softplus(-diff) * vs) / n
        reg = sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(rec))
        tau = float(g("temp"))

        def nce(z1_all, z2_all, idx, w):
            z1, z2 = _l2n(z1_all[idx]), _l2n(z2_all)
            logits = jnp.matmul(z1, z2.T) / tau
            pos_l = jnp.sum(z1 * z2[idx], -1) / tau
            return jnp.sum((jax.nn.logsumexp(logits, -1) - pos_l) * w) / jnp.maximum(w.sum(), 1.0)

        cl = nce(u_aux, u_main, users_B, valid) + nce(i_aux, i_main, pos.reshape(-1), vs.reshape(-1))
        loss = bpr + float(g("reg")) * reg + float(g("ssl_reg")) * cl
        return loss, {"bpr": bpr, "reg": reg, "cl": cl}

    # -- diffusion -------------------------------------------------------------------------------

    def diffusion_loss(self, dparams, x0_BxE: jnp.ndarray, rows_B: jnp.ndarray, mask_B: jnp.ndarray,
                       item_users_Ixd: jnp.ndarray, entity_Exd: jnp.ndarray, key: jax.Array):
        """``(1 - e_loss) mean(w_t mse) + e_loss mean(CKGC)`` over the valid rows.

        Args:
          dparams: denoiser parameters.
          x0_BxE: clean adjacency rows.
          rows_B: their entity ids.
          mask_B: False on padding rows.
          item_users_Ixd: ``X^T uEmb`` (detached).
          entity_Exd: ``eEmb`` (detached).
          key: PRNG key.
        """
        k_t, k_n, k_d = jax.random.split(key, 3)
        model = nnx.merge(self.denoiser_graphdef, dparams)
        B = x0_BxE.shape[0]
        t_B = jax.random.randint(k_t, (B,), 0, self.schedule.num_steps)
        loss_B, aux = self.loss_fn(lambda x, t, c=None: model(x, t, dropout_key=k_d), x0_BxE, t_B, k_n)
        e_hat = aux["out"][:, : self.I] @ item_users_Ixd
        ckgc_B = jnp.mean(jnp.square(e_hat - entity_Exd[rows_B]), -1)
        w = mask_B.astype(jnp.float32)
        nw = jnp.maximum(w.sum(), 1.0)
        diff, ckgc = jnp.sum(loss_B * w) / nw, jnp.sum(ckgc_B * w) / nw
        el = float(self.setting("e_loss"))
        return (1.0 - el) * diff + el * ckgc, {"diff": diff, "ckgc": ckgc}

    def item_users(self, user_Uxd: jnp.ndarray) -> jnp.ndarray:
        """``X^T uEmb``: for each item the sum of its train users' embeddings, ``[I, d]``."""
        return jax.ops.segment_sum(user_Uxd[self.x_users], self.x_items, num_segments=self.I)

    def denoise_topk(self, dparams, rows: np.ndarray, k: int) -> np.ndarray:
        """Top-``k`` columns of the reverse chain run from the clean rows of ``rows``, ``[B, k]``.

        The rows enter as their non-zeros (padded to a power of two, so few shapes compile).
        """
        rows = np.asarray(rows, np.int64)
        tails, _, mask = self.kg.neighbor_lists(rows)
        r_idx = np.nonzero(mask)
        nnz = len(r_idx[0])
        size = 1 << max(int(nnz - 1).bit_length(), 4)
        row = np.zeros(size, np.int32)
        col = np.zeros(size, np.int32)
        valid = np.zeros(size, bool)
        row[:nnz], col[:nnz], valid[:nnz] = r_idx[0], tails[r_idx], True
        self._make_fns()
        return np.asarray(self._topk_fn(dparams, jnp.asarray(row), jnp.asarray(col), jnp.asarray(valid),
                                        len(rows), k))

    def _make_fns(self):
        if hasattr(self, "_topk_fn"):
            return

        @jax.jit
        def topk_fn(dparams, row, col, valid, b_arr, k_arr):
            den = nnx.merge(self.denoiser_graphdef, dparams)
            out = projected_reverse_norm(den, self.schedule, None, sparse=(row, col, valid, b_arr.shape[0]))
            return jax.lax.top_k(out, k_arr.shape[0])[1]

        self._topk_fn = lambda p, row, col, valid, B, k: topk_fn(
            p, row, col, valid, jnp.zeros((B,), jnp.int32), jnp.zeros((k,), jnp.int32))

    def rebuild(self, dparams, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The denoised sub-KG (module docstring): top-k tails, reverses added, filtered to the
        original KG with its relations, thinned by ``keep_rate``.

        Returns:
          ``(heads, tails, relations)`` int32 numpy arrays.
        """
        g = self.setting
        k = int(g("rebuild_k"))
        bs = int(g("diff_batch"))
        tails = np.concatenate([self.denoise_topk(dparams, np.arange(s, min(self.E, s + bs)), k)
                                for s in range(0, self.E, bs)], 0)  # [E, k]
        h = np.repeat(np.arange(self.E, dtype=np.int64), k)
        t = tails.reshape(-1).astype(np.int64)
        hh, tt = np.concatenate([h, t]), np.concatenate([t, h])
        key = np.unique(hh * self.E + tt)
        hh, tt = key // self.E, key % self.E
        rel = self.kg.relation_of(hh, tt)
        ok = rel >= 0
        hh, tt, rel = hh[ok], tt[ok], rel[ok]
        keep = rng.random(hh.shape[0]) < float(g("keep_rate"))
        return hh[keep].astype(np.int32), tt[keep].astype(np.int32), rel[keep].astype(np.int32)

    # -- training --------------------------------------------------------------------------------

    def _pad_edges(self, edges, size: int) -> tuple:
        h, t, r = edges
        n = h.shape[0]
        if n > size:
            raise ValueError(f"{n} edges exceed the padded size {size}")
        pad = size - n
        return (jnp.asarray(np.concatenate([h, np.full(pad, self.E, np.int32)])),
                jnp.asarray(np.concatenate([t, np.zeros(pad, np.int32)])),
                jnp.asarray(np.concatenate([r, np.zeros(pad, np.int32)])))

    def final_embeddings(self, rec: dict, main_edges: tuple) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Main-view users and items without dropout."""
        return self.view(rec, main_edges, None)

    def make_steps(self):
        """Builds the jitted recommender and diffusion steps and their optimizers (once)."""
        if hasattr(self, "_rec_step"):
            return
        g = self.setting
        self.tx_r, self.tx_d = optax.adam(float(g("lr"))), optax.adam(float(g("diff_lr")))

        @jax.jit
        def rec_step(rec, opt, x, users, mask, main_e, aux_e, k):
            (loss, aux), gr = jax.value_and_grad(
                lambda p: self.rec_loss(p, x, users, mask, main_e, aux_e, k), has_aux=True)(rec)
            up, opt = self.tx_r.update(gr, opt, rec)
            return optax.apply_updates(rec, up), opt, loss, aux

        @jax.jit
        def diff_step(dp, opt, x0, rows, mask, iu, ent, k):
            (loss, aux), gr = jax.value_and_grad(
                lambda p: self.diffusion_loss(p, x0, rows, mask, iu, ent, k), has_aux=True)(dp)
            up, opt = self.tx_d.update(gr, opt, dp)
            return optax.apply_updates(dp, up), opt, loss, aux

        self._rec_step, self._diff_step = rec_step, diff_step
        self._final_fn = jax.jit(self.final_embeddings)

    def diffusion_epoch(self, dparams, opt_d, rec: dict, order: np.ndarray, key: jax.Array,
                        on_batch=None) -> tuple[Any, Any, float]:
        """One pass of diffusion training over the entity rows in ``order`` (batches of
        ``diff_batch``; dense ``[B, E]`` rows are built per batch from the CSR; the last batch is
        padded and masked).

        Returns:
          ``(dparams, opt_d, mean loss)``.
        """
        self.make_steps()
        bs = min(int(self.setting("diff_batch")), self.E)
        iu = jax.lax.stop_gradient(self.item_users(rec["user"]))
        ent = jax.lax.stop_gradient(rec["entity"])
        losses = []
        for b, (rows, mask) in enumerate(zip(*padded_batches(order, bs))):
            x0 = jnp.asarray(self.kg.adjacency_rows(rows))
            dparams, opt_d, loss, _ = self._diff_step(dparams, opt_d, x0, jnp.asarray(rows, jnp.int32),
                                                      jnp.asarray(mask), iu, ent, jax.random.fold_in(key, b))
            losses.append(loss)
            if on_batch is not None:
                on_batch(b, loss)
        return dparams, opt_d, float(np.mean(jax.device_get(losses)))

    def rec_epoch(self, rec: dict, opt_r, order: np.ndarray, main_e: tuple, aux_e: tuple,
                  key: jax.Array, on_steps=None) -> tuple[dict, Any, list]:
        """One pass of recommender training over the users in ``order``.

        Returns:
          ``(rec, opt_r, per-batch losses)`` (device scalars).
        """
        self.make_steps()
        bs = min(int(self.config.train.batch_size), self.U)
        x_train = self.data.train.binary()
        losses = []
        for b, (users, mask) in enumerate(zip(*padded_batches(order, bs))):
            x = jnp.asarray(x_train.to_dense(users))
            rec, opt_r, loss, _ = self._rec_step(rec, opt_r, x, jnp.asarray(users, jnp.int32),
                                                 jnp.asarray(mask), main_e, aux_e, jax.random.fold_in(key, b))
            losses.append(loss)
            if on_steps is not None:
                on_steps(1, None)
        return rec, opt_r, losses

    # -- the training loop's hooks (diffrec_jax.training.interactions: a model that owns its epoch) --

    @property
    def steps_per_epoch(self) -> int:
        """Recommender steps of one epoch (what the progress bar counts)."""
        return -(-self.U // min(int(self.config.train.batch_size), self.U))

    def init_train_state(self, key: jax.Array) -> tuple[dict, dict, dict]:
        """Parameters, both optimizers' states and the kept embeddings; samples the original KG
        view (a function of ``key``; the host generator that later thins rebuilt views is
        :meth:`host_state`)."""
        g = self.setting
        k_init, self._k_train = jax.random.split(key)
        _, params, _ = self.init(k_init)
        self._seed = int(jax.random.randint(jax.random.fold_in(key, 7), (), 0, 2**31 - 1))
        self._rng = np.random.default_rng(self._seed)
        orig = self.kg.sample_edges(int(g("triplet_num")), self._rng)
        self._orig_edges = self._pad_edges(orig, orig[0].shape[0])
        self._den_size = 2 * self.E * int(g("rebuild_k"))
        self.make_steps()
        empty = tuple(np.zeros(0, np.int32) for _ in range(3))
        uf, itf = jax.eval_shape(self.final_embeddings, params["rec"], self._orig_edges)
        model_state = {"user_final": jnp.zeros(uf.shape, uf.dtype), "item_final": jnp.zeros(itf.shape, itf.dtype),
                       "den_edges": self._pad_edges(empty, self._den_size)}
        opt = {"rec": self.tx_r.init(params["rec"]), "denoiser": self.tx_d.init(params["denoiser"])}
        return params, opt, model_state

    def host_state(self) -> dict:
        """The host generator's state (checkpointed with the loop's bookkeeping: exact resume)."""
        st = self._rng.bit_generator.state
        return {"rng": json.dumps(st)}

    def set_host_state(self, host: dict) -> None:
        self._rng.bit_generator.state = json.loads(host["rng"])

    def train_epoch(self, params: dict, opt_state: dict, model_state: dict, epoch: int,
                    on_steps=None) -> tuple[dict, dict, dict, list]:
        """One epoch (module docstring, "Training"): diffusion pass + rebuild (every ``kg_every``
        epochs; 1 = the reference), then the recommender pass; the state keeps the epoch's final
        main-view embeddings, which :meth:`score` ranks with.

        ``use_diffusion = False`` keeps the original view only in both branches (an ablation:
        RGAT + LightGCN + BPR, the InfoNCE then ties two dropout draws).

        Returns:
          ``(params, opt_state, model_state, per-batch recommender losses)``; :attr:`epoch_info`
          holds the diffusion loss, rebuild size and timings for ``metrics.jsonl``.
        """
        g = self.setting
        rec, dparams = params["rec"], params["denoiser"]
        opt_r, opt_d = opt_state["rec"], opt_state["denoiser"]
        use_diff = bool(g("use_diffusion"))
        den_edges = model_state["den_edges"] if use_diff else self._orig_edges
        info: dict = {}
        t0 = time.perf_counter()
        if use_diff and (epoch - 1) % int(g("kg_every")) == 0:
            order = np.random.default_rng([self._seed, epoch, 1]).permutation(self.E)
            dparams, opt_d, info["diff_loss"] = self.diffusion_epoch(
                dparams, opt_d, rec, order, jax.random.fold_in(self._k_train, 2 * epoch))
            if not math.isfinite(info["diff_loss"]):
                raise FloatingPointError(f"diffkg: non-finite diffusion loss in epoch {epoch}")
            info["diff_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            den = self.rebuild(dparams, self._rng)
            info["rebuild_s"] = time.perf_counter() - t1
            info["denoised_edges"] = int(den[0].shape[0])
            den_edges = self._pad_edges(den, self._den_size)
        main_e, aux_e = (den_edges, self._orig_edges) if int(g("cl_pattern")) == 0 else (self._orig_edges, den_edges)
        order = np.random.default_rng([self._seed, epoch, 2]).permutation(self.U)
        rec, opt_r, losses = self.rec_epoch(rec, opt_r, order, main_e, aux_e,
                                            jax.random.fold_in(self._k_train, 2 * epoch + 1), on_steps)
        uf, itf = self._final_fn(rec, main_e)
        self.epoch_info = info
        model_state = {"user_final": uf, "item_final": itf,
                       "den_edges": den_edges if use_diff else model_state["den_edges"]}
        return {"rec": rec, "denoiser": dparams}, {"rec": opt_r, "denoiser": opt_d}, model_state, losses

    def best_payload(self, params: dict, model_state: dict) -> dict:
        """What ``best/`` keeps: the parameters and the embeddings :meth:`score` ranks with."""
        return {"params": params, "model_state": {k: model_state[k] for k in ("user_final", "item_final")}}

    def score(self, params, model_state, x_BxI, key=None, user_ids_B=None) -> jnp.ndarray:
        """``<user, item>`` with the kept main-view embeddings."""
        del params, x_BxI, key
        if user_ids_B is None:
            raise ValueError("DiffKG.score needs user_ids_B (the trainer passes it: needs_user_ids)")
        return jnp.matmul(model_state["user_final"][user_ids_B], model_state["item_final"].T,
                          precision=jax.lax.Precision.HIGHEST)
