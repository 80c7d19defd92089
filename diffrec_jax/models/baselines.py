"""Closed-form item-item baselines: EASE, ItemKNN and RP3beta.

Each model learns an item-item matrix ``B`` (``[I, I]``) from the binary train matrix
``X`` (``[U, I]``, ``data.train.binary()``) once, without gradient training, and scores a user
from their train row ``x`` (``[I]``) as ``s = x B``. They follow the ``closed_form = True``
contract of :mod:`diffrec_jax.models`: the trainer calls ``fit(key)`` once, then evaluates with
``score(params, model_state, x_BxI, key)``.

The fit runs on the host in NumPy float64 (the Gram matrix ``X^T X`` is accumulated over blocks
of users, so no more than ``block x I`` of ``X`` is dense at a time) and returns float32 device
arrays. No SciPy is needed.

* :class:`EASE` (Steck, WWW 2019): ``B = I - P diagMat(1 / diag(P))`` with
  ``P = (X^T X + lambda I)^{-1}``, the minimiser of ``||X - X B||_F^2 + lambda ||B||_F^2`` under
  ``diag(B) = 0``.
* :class:`ItemKNN`: cosine item-item similarity with shrinkage, top-k neighbours per item
  (the neighbours of the *target* item are summed, as ItemKNNCF in Ferrari Dacrema et al.).
* :class:`RP3beta` (Paudel et al., TiiS 2017): three-step random walk user -> item -> user ->
  item with transition probabilities raised to ``alpha``, divided by the target's popularity to
  the power ``beta``, top-k per row (the source item).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffrec_jax.data import CSR

__all__ = ["EASE", "ItemKNN", "RP3beta", "gram_matrix", "keep_topk_per_row"]


# ----------------------------------------------------------------------------------------------
# Host-side helpers
# ----------------------------------------------------------------------------------------------


def gram_matrix(
    x: CSR, user_weights_U: np.ndarray | None = None, *, block_users: int = 2048
) -> np.ndarray:
    """Weighted item-item Gram matrix ``G = X^T diagMat(w) X`` in float64.

    ``G_ij = sum_u w_u X_ui X_uj``; with ``w = 1`` and a binary ``X``, ``G_ij`` counts the users
    who have both items and ``G_ii`` is item ``i``'s popularity.

    Args:
      x: ``[U, I]`` sparse rows (values used as stored).
      user_weights_U: optional ``[U]`` per-user weights ``w`` (1 if None).
      block_users: users densified at a time (memory ``block_users x I``).

    Returns:
      float64 ``[I, I]`` symmetric matrix.
    """
    n_users, n_items = x.n_users, x.n_items
    g = np.zeros((n_items, n_items), np.float64)
    for start in range(0, n_users, block_users):
        rows = np.arange(start, min(start + block_users, n_users))
        xb = x.to_dense(rows, dtype=np.float64)
        if user_weights_U is not None:
            g += (xb * np.asarray(user_weights_U, np.float64)[rows, None]).T @ xb
        else:
            g += xb.T @ xb
    return g


def keep_topk_per_row(w_IxJ: np.ndarray, k: int) -> np.ndarray:
    """Zeroes all but the ``k`` largest entries of each row.

    Ties are broken towards the lower column index (a stable sort of ``-w``), so the result is a
    deterministic function of ``w``.

    Args:
      w_IxJ: ``[I, J]`` matrix.
      k: entries kept per row; ``k >= J`` keeps everything.

    Returns:
      ``[I, J]`` copy with at most ``k`` non-zero entries per row.
    """
    n_cols = w_IxJ.shape[1]
    if k >= n_cols:
        return w_IxJ.copy()
    keep = np.argsort(-w_IxJ, axis=1, kind="stable")[:, :k]
    out = np.zeros_like(w_IxJ)
    rows = np.arange(w_IxJ.shape[0])[:, None]
    out[rows, keep] = w_IxJ[rows, keep]
    return out


def _get(config: Any, field: str, default: Any) -> Any:
    return config.model.get(field, default)


def _check_topk(config: Any, default: int) -> None:
    k = _get(config, "topk", default)
    if int(k) != k or k < 1:
        raise ValueError(f"config.model.topk must be an integer >= 1, got {k}")


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


class _ItemItemModel:
    """Shared plumbing of the closed-form ``s = x B`` models (not registered itself).

    Subclasses implement ``_fit_matrix() -> np.ndarray [I, I]`` (float64).
    """

    name = "itemitem"
    closed_form = True

    def __init__(self, config: Any, data: Any):
        self.config = config
        self.mcfg = config.model
        self.n_items = int(data.n_items)
        self.x_train = data.train.binary()

    def _fit_matrix(self) -> np.ndarray:
        raise NotImplementedError

    def fit(self, key: jax.Array | None = None) -> tuple[dict, dict]:
        """Computes the item-item matrix (deterministic: ``key`` is unused).

        Returns:
          ``({"B": float32 [I, I]}, {})``: the parameters and an empty model state.
        """
        del key
        b = self._fit_matrix()
        return {"B": jnp.asarray(b, jnp.float32)}, {}

    def score(self, params: dict, model_state: Any, x_BxI: jnp.ndarray, key: Any = None) -> jnp.ndarray:
        """Scores ``s_BxI = x_BxI B_IxI`` from the users' train rows.

        Args:
          params: ``{"B": [I, I]}`` from :meth:`fit`.
          model_state: unused.
          x_BxI: ``[B, I]`` train rows (the user profiles).
          key: unused (the models are deterministic).

        Returns:
          float32 ``[B, I]`` scores (history is masked by the evaluator).
        """
        del model_state, key
        return jnp.matmul(x_BxI, params["B"], precision=jax.lax.Precision.HIGHEST)


class EASE(_ItemItemModel):
    """EASE^R (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

    Solves ``min_B ||X - X B||_F^2 + lambda ||B||_F^2`` s.t. ``diag(B) = 0``. With
    ``P = (X^T X + lambda I)^{-1}`` the Lagrangian gives the closed form

        ``B = I - P diagMat(1 / diag(P))``, i.e. ``B_ij = -P_ij / P_jj`` (``i != j``), ``B_jj = 0``.

    Config: ``model.l2`` (lambda > 0; a few hundred for ML-1M-sized data).
    """

    name = "ease"
    DEFAULT_L2 = 500.0

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses a non-positive ``config.model.l2``."""
        l2 = _get(config, "l2", EASE.DEFAULT_L2)
        if not l2 > 0:
            raise ValueError(f"config.model.l2 must be > 0, got {l2}")

    def _fit_matrix(self) -> np.ndarray:
        lam = float(_get(self.config, "l2", self.DEFAULT_L2))
        g = gram_matrix(self.x_train)
        g[np.diag_indices_from(g)] += lam
        p = np.linalg.inv(g)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        return b


class ItemKNN(_ItemItemModel):
    """Item-based kNN with shrunk cosine similarity (Sarwar et al. 2001; Ferrari Dacrema et al. 2019).

    With ``G = X^T X`` and item norms ``n_i = sqrt(G_ii)``:

        ``S_ij = G_ij / (n_i n_j + shrink + 1e-6)`` for ``i != j``, ``S_ii = 0``.

    For each item ``j``, only its ``topk`` most similar items are kept (row ``j`` of ``S``,
    ``S_topk = keep_topk_per_row(S, topk)``), and a candidate ``j`` is scored by the profile
    items among its neighbours: ``s_uj = sum_i x_ui S_topk[j, i]``, i.e. ``B = S_topk^T``.

    Config: ``model.topk`` (neighbours per item, >= 1), ``model.shrink`` (>= 0).
    """

    name = "itemknn"
    DEFAULT_TOPK = 100
    DEFAULT_SHRINK = 10.0

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses a bad ``config.model.topk`` or negative ``config.model.shrink``."""
        _check_topk(config, ItemKNN.DEFAULT_TOPK)
        shrink = _get(config, "shrink", ItemKNN.DEFAULT_SHRINK)
        if not shrink >= 0:
            raise ValueError(f"config.model.shrink must be >= 0, got {shrink}")

    def _fit_matrix(self) -> np.ndarray:
        k = int(_get(self.config, "topk", self.DEFAULT_TOPK))
        shrink = float(_get(self.config, "shrink", self.DEFAULT_SHRINK))
        g = gram_matrix(self.x_train)
        norms = np.sqrt(np.diag(g))
        s = g / (np.outer(norms, norms) + shrink + 1e-6)
        s[np.diag_indices_from(s)] = 0.0
        return keep_topk_per_row(s, k).T.copy()


class RP3beta(_ItemItemModel):
    """RP3beta (Paudel, Christoffel, Newell and Bernstein, "Updatable, accurate, diverse, and
    scalable recommendations for interactive applications", ACM TiiS 2017).

    With user degrees ``d_u = sum_i X_ui``, item popularities ``p_i = sum_u X_ui``, the
    transition matrices ``P_ui = X / d_u`` (``[U, I]``, rows sum to 1) and ``P_iu = X^T / p_i``
    (``[I, U]``), each entry raised to ``alpha``:

        ``W_ij = sum_u P_iu[i, u]^alpha P_ui[u, j]^alpha / p_j^beta
              = (1 / p_i^alpha) (sum_u X_ui X_uj / d_u^alpha) / p_j^beta``,

    then ``W_ii = 0`` and only the ``topk`` largest entries of each row are kept:
    ``B = keep_topk_per_row(W, topk)`` and ``s_uj = sum_i x_ui B_ij``.

    Config: ``model.alpha`` (> 0), ``model.beta`` (>= 0), ``model.topk`` (>= 1).
    """

    name = "rp3beta"
    DEFAULT_ALPHA = 1.0
    DEFAULT_BETA = 0.5
    DEFAULT_TOPK = 100

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses ``alpha <= 0``, ``beta < 0`` or a bad ``topk``."""
        alpha = _get(config, "alpha", RP3beta.DEFAULT_ALPHA)
        beta = _get(config, "beta", RP3beta.DEFAULT_BETA)
        if not alpha > 0:
            raise ValueError(f"config.model.alpha must be > 0, got {alpha}")
        if not beta >= 0:
            raise ValueError(f"config.model.beta must be >= 0, got {beta}")
        _check_topk(config, RP3beta.DEFAULT_TOPK)

    def _fit_matrix(self) -> np.ndarray:
        alpha = float(_get(self.config, "alpha", self.DEFAULT_ALPHA))
        beta = float(_get(self.config, "beta", self.DEFAULT_BETA))
        k = int(_get(self.config, "topk", self.DEFAULT_TOPK))
        d_u = np.maximum(self.x_train.row_lengths().astype(np.float64), 1.0)
        g = gram_matrix(self.x_train, d_u**-alpha)
        pop = np.maximum(_popularity(self.x_train), 1.0)
        w = g * (pop**-alpha)[:, None] * (pop**-beta)[None, :]
        w[np.diag_indices_from(w)] = 0.0
        return keep_topk_per_row(w, k)


def _popularity(x: CSR) -> np.ndarray:
    """Number of users per item, float64 ``[I]``."""
    return np.bincount(x.indices, minlength=x.n_items).astype(np.float64)
