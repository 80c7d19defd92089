"""The list-wise evaluator and classifier guidance on the response condition.

* **Conditioning** ([design]): the condition ``c*`` is set by a rule (``config.infer.condition``:
  all-positive, observed, all-negative, or clicks on the first ``k`` slots). Two ways to make the
  reverse process follow it: classifier-free guidance on the denoiser's own use of ``c``
  (``guidance``), and classifier guidance with the evaluator as the likelihood
  (:func:`evaluator_guide`: beam score + ``lambda log P_evaluator(c* | list)``). On the synthetic
  world the denoiser trained on logged responses barely reads ``c`` (the responses say little
  about the list: 0.19 nats for the exact posterior), so only the second moves the lists; the
  exact Bayes posterior (:func:`diffrec_jax.data.rerank_synthetic.bayes_conditional`) shows which
  conditions can raise the utility at all.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffrec_jax.models.dcdr.networks import (Context, bce_with_logits, config_get, dense, dense_init,
                                              dropout, embed, init_embeddings, init_transformer,
                                              transformer, world_sizes)

__all__ = ["ListEvaluator", "evaluator_guide"]


def evaluator_guide(evaluator: "ListEvaluator", eparams, ctx: Context, cond: jnp.ndarray,
                    weight: float) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """``guide_fn`` for :func:`generate`: ``weight * log P_evaluator(cond | list)`` of every list.

    Classifier guidance on the response condition ([design]): the beam is steered towards lists
    whose responses, as the evaluator predicts them, match ``cond``. With the true click model
    in place of the evaluator this is the ideal conditional generator's likelihood term
    (:func:`diffrec_jax.data.rerank_synthetic.bayes_conditional`).

    Args:
      evaluator, eparams: a trained :class:`ListEvaluator`.
      ctx: request context (batch ``R``).
      cond: int ``[R, n]`` response codes.
      weight: ``lambda >= 0``.
    """
    fn = evaluator.jit_condition_loglik

    def guide_fn(lists):
        R, M, n = lists.shape
        ll = fn(eparams, ctx.repeat(M), lists.reshape(R * M, n), jnp.repeat(cond, M, axis=0))
        return weight * ll.reshape(R, M)

    return guide_fn


class ListEvaluator:
    """List-wise evaluator: per-position click and like probabilities of a whole list.

    ``logit_k = MLP-free head(h_k) + <u, e_{L_k}> + b_{L_k} + b^pos_k`` where ``h`` is a
    Transformer over ``[user token, list tokens]`` (list token = candidate embedding + position
    embedding), so it can model position, preference and the mutual influence of items (e.g.
    repeated categories); with ``causal`` (config ``evaluator.causal``) position ``k`` sees only the
    user and positions ``<= k``, a top-down examination order as in DLCM-style rerankers.

    ``kind = "pairwise"`` ([design]) replaces the Transformer by a mutual-influence model: an item
    term plus the summed influence of every earlier item on item ``k``, each a small MLP of the two
    item embeddings, their distance and a same-category indicator (a standard diversity feature):
    ``logit_k = b^pos_k + f(x_k, u) + sum_{j<k} g(x_j, x_k, k - j, 1[cat_j = cat_k])``.

    Trained with per-position BCE on the exposed slots of the logs; utility
    ``= sum_{k<=m} P(click_k)``.
    """

    name = "list_evaluator"

    def __init__(self, config: Any, world: Any):
        m = config.evaluator
        self.use_ids = bool(config_get(m, "use_ids", True))
        self.use_rank = bool(config_get(m, "use_rank", True))
        self.causal = bool(config_get(m, "causal", False))
        self.kind = config_get(m, "kind", "transformer")
        if self.kind not in ("transformer", "pairwise"):
            raise ValueError(f"config.evaluator.kind must be 'transformer' or 'pairwise', got {self.kind!r}")
        self.sizes = world_sizes(world)
        self.d = int(config_get(m, "emb_dim", 64))
        self.n_layers = int(config_get(m, "n_layers", 2))
        self.n_heads = int(config_get(m, "n_heads", 4))
        self.rate = float(config_get(m, "dropout", 0.1))
        self.item_cat = jnp.asarray(world.item_cat)

    def init(self, key):
        s, d = self.sizes, self.d
        ks = jax.random.split(key, 5)
        params = {
            "emb": init_embeddings(ks[0], s.n_users, s.n_items, s.n_cats, d, s.n),
            "item_bias": jnp.zeros((s.n_items,), jnp.float32),
            "pos": 0.1 * jax.random.normal(ks[1], (s.n, d), jnp.float32),
            "pos_bias": jnp.zeros((s.n, 2), jnp.float32),
            "type": 0.1 * jax.random.normal(ks[2], (2, d), jnp.float32),
            "head": dense_init(ks[4], d, 2, 0.1),
        }
        if self.kind == "transformer":
            params["tf"] = init_transformer(ks[3], d, self.n_layers)
        else:
            kp = jax.random.split(ks[3], 5)
            params.update({
                "item1": dense_init(kp[0], d, d), "item2": dense_init(kp[1], d, 2, 0.1),
                "dist": 0.1 * jax.random.normal(kp[2], (s.n, d), jnp.float32),
                "pair1": dense_init(kp[3], 3 * d + 1, d), "pair2": dense_init(kp[4], d, 2, 0.1),
            })
        return None, params, {}

    def _pairwise(self, params, u, x, cats, key):
        """Item term ``MLP(x_k + u)`` plus the summed influence of every earlier item,
        ``sum_{j<k} MLP([x_j, x_k, pos(k - j), 1[cat_j = cat_k]])``, ``[B, n, 2]``."""
        B, n, d = x.shape
        item = dense(params["item2"], dropout(jax.nn.gelu(dense(params["item1"], x + u[:, None]), approximate=True), self.rate, key))
        j, k = jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij")  # [n, n]: (j, k)
        dist = params["dist"][jnp.clip(k - j, 0, n - 1)]  # [n, n, d]
        same = (cats[:, :, None] == cats[:, None, :]).astype(jnp.float32)[..., None]  # [B, j, k, 1]
        feats = jnp.concatenate([jnp.broadcast_to(x[:, :, None], (B, n, n, d)),
                                 jnp.broadcast_to(x[:, None, :], (B, n, n, d)),
                                 jnp.broadcast_to(dist[None], (B, n, n, d)), same], -1)
        pair = dense(params["pair2"], jax.nn.gelu(dense(params["pair1"], feats), approximate=True))  # [B, j, k, 2]
        before = (j < k).astype(jnp.float32)[None, :, :, None]
        return item + jnp.sum(pair * before, 1)

    def logits(self, params, ctx: Context, lists: jnp.ndarray, key=None) -> jnp.ndarray:
        """``[B, n, 2]`` click / like logits of each position of ``lists`` (int ``[B, n]``)."""
        u, c = embed(params["emb"], self.item_cat, ctx, self.use_ids, self.use_rank)
        B, n, d = c.shape
        x = jnp.take_along_axis(c, lists[:, :, None], 1)
        items = jnp.take_along_axis(ctx.cands, lists, 1)
        if self.kind == "pairwise":
            out = self._pairwise(params, u, x, self.item_cat[items], key) + params["pos_bias"][None, :n]
            if self.use_ids:
                out = out + (jnp.einsum("bd,bkd->bk", u, x) + params["item_bias"][items])[..., None]
            return out
        h = jnp.concatenate([(u + params["type"][0])[:, None],
                             x + params["pos"][None, :n] + params["type"][1]], 1)
        h = transformer(params["tf"], h, self.n_heads, self.rate, key, causal=self.causal)[:, 1:]
        base = jnp.einsum("bd,bkd->bk", u, x)
        if self.use_ids:
            base = base + params["item_bias"][items]
        return dense(params["head"], h) + base[..., None] + params["pos_bias"][None, :n]

    def loss(self, params, ctx: Context, lists, clicks, likes, mask_B, key):
        """Mean BCE of clicks and likes over the exposed slots of the valid rows."""
        lg = self.logits(params, ctx, lists, key)
        m = self.sizes.m
        y = jnp.stack([clicks, likes], -1)[:, :m]
        bce = jnp.mean(bce_with_logits(lg[:, :m], y), axis=(1, 2))
        w = mask_B.astype(jnp.float32)
        loss = jnp.sum(bce * w) / jnp.maximum(w.sum(), 1.0)
        return loss, {"bce": loss}

    def condition_loglik(self, params, ctx: Context, lists, cond) -> jnp.ndarray:
        """The evaluator's ``log P(responses = cond | list)``, ``[B]`` (the likelihood term of
        classifier guidance on the condition, [design]).

        The click head gives ``P(click_k)``, the like head ``P(click_k and like_k)`` (it is trained
        on likes that are 0 without a click), so code 0 scores ``log(1 - P(click))``, code 1
        ``log(P(click) - P(click and like))``, code 2 ``log P(click and like)``; codes 3
        (unexposed) and 4 (null) and the slots ``k >= m`` add nothing.

        Args:
          params: evaluator parameters.
          ctx: request context (batch ``B``).
          lists: int ``[B, n]``.
          cond: int ``[B, n]`` response codes.
        """
        lg = self.logits(params, ctx, lists)
        m = self.sizes.m
        lc, ll, cond = lg[:, :m, 0], lg[:, :m, 1], cond[:, :m]
        p_c = jax.nn.sigmoid(lc)
        p_cl = jnp.minimum(jax.nn.sigmoid(ll), p_c)
        per = jnp.where(cond == 0, jax.nn.log_sigmoid(-lc), 0.0)
        per = per + jnp.where(cond == 1, jnp.log(jnp.maximum(p_c - p_cl, 1e-6)), 0.0)
        per = per + jnp.where(cond == 2, jnp.log(jnp.maximum(p_cl, 1e-6)), 0.0)
        return per.sum(-1)

    @functools.cached_property
    def jit_condition_loglik(self):
        """:meth:`condition_loglik` jitted once per evaluator."""
        return jax.jit(self.condition_loglik)

    def utility(self, params, ctx: Context, lists) -> jnp.ndarray:
        """Predicted expected clicks ``sum_{k<=m} sigmoid(click_logit_k)``, ``[B]``."""
        return jnp.sum(jax.nn.sigmoid(self.logits(params, ctx, lists)[:, : self.sizes.m, 0]), -1)
