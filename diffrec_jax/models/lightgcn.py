"""LightGCN (He, Deng, Wang, Li, Zhang and Wang, SIGIR 2020) behind the trainer contract.

Graph: the bipartite user-item graph of ``X = data.train.binary()`` (``[U, I]``), stored as its
``E = nnz(X)`` edges ``(u_e, i_e)`` with the symmetric normalisation

    ``w_e = 1 / sqrt(d_u d_i)``   (``d_u``, ``d_i``: user and item degrees),

i.e. the non-zero blocks of ``A_hat = D^{-1/2} A D^{-1/2}`` with ``A = [[0, X], [X^T, 0]]``. The
adjacency is never densified: one propagation layer is two ``jax.ops.segment_sum`` over edges,

    ``e_u^{(k+1)} = sum_{e: u_e = u} w_e e_{i_e}^{(k)}``,
    ``e_i^{(k+1)} = sum_{e: i_e = i} w_e e_{u_e}^{(k)}``,

and the final embeddings average the ``K + 1`` layers: ``e = (1 / (K + 1)) sum_{k=0..K} e^{(k)}``.

Training (BPR): for each user of the batch, ``S = model.samples_per_user`` positives drawn
uniformly from the user's train items and ``S`` negatives drawn uniformly from the items *not*
in the row (exact inverse-CDF sampling over the row's complement, so no rejection is needed),

    ``L = mean_{(u, p, n)} softplus(-(e_u . e_p - e_u . e_n))
         + reg * mean_{(u, p, n)} 0.5 (||e_u^{(0)}||^2 + ||e_p^{(0)}||^2 + ||e_n^{(0)}||^2)``,

the L2 term on the ego (layer-0) embeddings of the batch, as the reference implementation.
One epoch of the trainer visits every user once, i.e. ``U x S`` triples.

The trainer passes only user rows, and LightGCN needs the user ids to look up user embeddings,
so the class sets ``needs_user_ids = True`` and the trainer passes ``user_ids_B`` to
:meth:`LightGCN.loss` and :meth:`LightGCN.score`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LightGCN", "normalized_edges", "sample_bpr_triples"]


def normalized_edges(x_csr: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges of the bipartite graph of a CSR pattern with weights ``1 / sqrt(d_u d_i)``.

    Args:
      x_csr: ``[U, I]`` sparse rows (only the pattern is used).

    Returns:
      ``(users_E, items_E, weights_E)``: int32, int32, float32, one entry per interaction.
    """
    users = x_csr.user_ids().astype(np.int32)
    items = np.asarray(x_csr.indices, np.int32)
    d_u = np.bincount(users, minlength=x_csr.n_users).astype(np.float64)
    d_i = np.bincount(items, minlength=x_csr.n_items).astype(np.float64)
    w = 1.0 / np.sqrt(d_u[users] * d_i[items])
    return users, items, w.astype(np.float32)


def _inverse_cdf_sample(member_BxI: jnp.ndarray, u_BxS: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Uniform draws from the set ``{i: member[b, i]}`` of each row.

    With ``c_b = cumsum(member_b)`` and ``n_b = c_b[-1]``, draw ``r = floor(u n_b)`` and return the
    first ``i`` with ``c_b[i] > r``: the ``(r + 1)``-th member, uniformly over members.

    Args:
      member_BxI: bool ``[B, I]``.
      u_BxS: ``[B, S]`` uniforms in ``[0, 1)``.

    Returns:
      ``(items_BxS int32, ok_B bool)``; ``ok`` is False for rows with no member (their items
      are clipped to ``I - 1`` and must be ignored).
    """
    cum = jnp.cumsum(member_BxI.astype(jnp.int32), axis=-1)
    n_B = cum[:, -1]
    r = jnp.minimum(jnp.floor(u_BxS * n_B[:, None]).astype(jnp.int32), jnp.maximum(n_B - 1, 0)[:, None])
    items = jax.vmap(lambda c, rr: jnp.searchsorted(c, rr, side="right"))(cum, r)
    return jnp.minimum(items, member_BxI.shape[-1] - 1).astype(jnp.int32), n_B > 0


def sample_bpr_triples(
    x_BxI: jnp.ndarray, key: jax.Array, n_samples: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Positives uniform over each row's non-zeros, negatives uniform over its zeros.

    Randomness is drawn per row from ``fold_in(key, b)``, so adding padding rows leaves the draws
    of the other rows unchanged.

    Args:
      x_BxI: ``[B, I]`` train rows (``> 0``: interacted).
      key: PRNG key.
      n_samples: ``S`` triples per row.

    Returns:
      ``(pos_BxS, neg_BxS, valid_B)``: int32 item ids and a bool per row, False when the row has
      no positive or no negative item (its triples must be ignored).
    """
    rows_B = jnp.arange(x_BxI.shape[0])
    u = jax.vmap(lambda b: jax.random.uniform(jax.random.fold_in(key, b), (2, n_samples)))(rows_B)
    seen = x_BxI > 0
    pos, ok_pos = _inverse_cdf_sample(seen, u[:, 0])
    neg, ok_neg = _inverse_cdf_sample(~seen, u[:, 1])
    return pos, neg, ok_pos & ok_neg


class LightGCN:
    """LightGCN with BPR training, following the trainer contract with ``needs_user_ids = True``.

    Parameters: ``{"user_emb": [U, d], "item_emb": [I, d]}``, initialised ``N(0, init_std^2)``.

    Config (``config.model``): ``emb_dim`` (64), ``n_layers`` (K = 3), ``reg`` (1e-4, L2 on the
    batch's ego embeddings), ``samples_per_user`` (BPR triples per user and epoch),
    ``init_std`` (0.1).
    """

    name = "lightgcn"
    needs_user_ids = True
    DEFAULTS = {"emb_dim": 64, "n_layers": 3, "reg": 1e-4, "samples_per_user": 32, "init_std": 0.1}

    def __init__(self, config: Any, data: Any):
        m = config.model
        self.n_users = int(data.n_users)
        self.n_items = int(data.n_items)
        self.emb_dim = int(_get(m, "emb_dim"))
        self.n_layers = int(_get(m, "n_layers"))
        self.reg = float(_get(m, "reg"))
        self.samples_per_user = int(_get(m, "samples_per_user"))
        self.init_std = float(_get(m, "init_std"))
        users, items, w = normalized_edges(data.train.binary())
        self.edge_users = jnp.asarray(users)
        self.edge_items = jnp.asarray(items)
        self.edge_weights = jnp.asarray(w)

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses bad LightGCN fields, naming them."""
        m = config.model
        for field, lo in (("emb_dim", 1), ("n_layers", 0), ("samples_per_user", 1)):
            v = _get(m, field)
            if int(v) != v or v < lo:
                raise ValueError(f"config.model.{field} must be an integer >= {lo}, got {v}")
        if not _get(m, "reg") >= 0:
            raise ValueError(f"config.model.reg must be >= 0, got {_get(m, 'reg')}")
        if not _get(m, "init_std") > 0:
            raise ValueError(f"config.model.init_std must be > 0, got {_get(m, 'init_std')}")

    def init(self, key: jax.Array):
        """Returns ``(None, params, {})``: no graph definition, a dict of embedding tables."""
        k_u, k_i = jax.random.split(key)
        params = {
            "user_emb": self.init_std * jax.random.normal(k_u, (self.n_users, self.emb_dim), jnp.float32),
            "item_emb": self.init_std * jax.random.normal(k_i, (self.n_items, self.emb_dim), jnp.float32),
        }
        return None, params, {}

    def propagate(self, params: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Final embeddings, the mean of layers ``0..K`` of ``e^{(k+1)} = A_hat e^{(k)}``.

        Returns:
          ``(users_Uxd, items_Ixd)``.
        """
        eu, ei = params["user_emb"], params["item_emb"]
        su, si = eu, ei
        w = self.edge_weights[:, None]
        for _ in range(self.n_layers):
            eu, ei = (
                jax.ops.segment_sum(w * ei[self.edge_items], self.edge_users, num_segments=self.n_users),
                jax.ops.segment_sum(w * eu[self.edge_users], self.edge_items, num_segments=self.n_items),
            )
            su, si = su + eu, si + ei
        scale = 1.0 / (self.n_layers + 1)
        return su * scale, si * scale

    def loss(
        self,
        params: dict,
        model_state: Any,
        x_BxI: jnp.ndarray,
        mask_B: jnp.ndarray,
        key: jax.Array,
        user_ids_B: jnp.ndarray | None = None,
    ):
        """BPR loss with L2 on the ego embeddings over the valid rows' sampled triples.

        Args:
          params: ``{"user_emb", "item_emb"}``.
          model_state: unused (returned as is).
          x_BxI: ``[B, I]`` train rows of the batch users.
          mask_B: ``[B]`` bool, False for padding rows.
          key: PRNG key of this step.
          user_ids_B: ``[B]`` int user ids of the rows (required).

        Returns:
          ``(loss, (model_state, {"bpr", "reg"}))``.
        """
        if user_ids_B is None:
            raise ValueError("LightGCN.loss needs user_ids_B (the trainer passes it: needs_user_ids)")
        S = self.samples_per_user
        pos, neg, ok_B = sample_bpr_triples(x_BxI, key, S)
        eu_all, ei_all = self.propagate(params)
        eu = eu_all[user_ids_B]  # [B, d]
        ep, en = ei_all[pos], ei_all[neg]  # [B, S, d]
        diff = jnp.einsum("bd,bsd->bs", eu, ep - en)
        valid = (mask_B & ok_B).astype(jnp.float32)[:, None] * jnp.ones((1, S), jnp.float32)
        n = jnp.maximum(valid.sum(), 1.0)
        bpr = jnp.sum(jax.nn.softplus(-diff) * valid) / n
        u0 = params["user_emb"][user_ids_B]
        p0, n0 = params["item_emb"][pos], params["item_emb"][neg]
        sq = jnp.sum(jnp.square(u0), -1)[:, None] + jnp.sum(jnp.square(p0), -1) + jnp.sum(jnp.square(n0), -1)
        reg = 0.5 * jnp.sum(sq * valid) / n
        return bpr + self.reg * reg, (model_state, {"bpr": bpr, "reg": reg})

    def score(
        self,
        params: dict,
        model_state: Any,
        x_BxI: jnp.ndarray,
        key: Any = None,
        user_ids_B: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """``s_BxI = e_u e_items^T`` from the propagated embeddings; ``x_BxI`` is not needed."""
        del model_state, x_BxI, key
        if user_ids_B is None:
            raise ValueError("LightGCN.score needs user_ids_B (the trainer passes it: needs_user_ids)")
        eu_all, ei_all = self.propagate(params)
        return jnp.matmul(eu_all[user_ids_B], ei_all.T, precision=jax.lax.Precision.HIGHEST)

    def item_embeddings(self, params: dict) -> np.ndarray:
        """Final propagated item embeddings, float32 ``[I, emb_dim]`` (host array)."""
        params = {k: jnp.asarray(params[k]) for k in ("user_emb", "item_emb")}
        return np.asarray(jax.device_get(jax.jit(self.propagate)(params)[1]), np.float32)


def _get(m: Any, field: str) -> Any:
    return m.get(field, LightGCN.DEFAULTS[field])
