"""The point-wise reranker baseline (:class:`PointwiseRanker`) is trained on the same logs."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from diffrec_jax.models.dcdr.networks import (Context, bce_with_logits, config_get, dense, dense_init,
                                              dropout, embed, init_embeddings, world_sizes)

__all__ = ["PointwiseRanker"]


class PointwiseRanker:
    """Point-wise reranker baseline trained on the same logs.

    ``logit(u, i, k) = MLP([u, e_i, u * e_i]) + <u, e_i> + b_i + b^pos_k`` (BCE on clicks of the
    exposed slots; the position bias absorbs the logging position); at inference candidates are
    sorted by ``logit`` without the position term.
    """

    name = "pointwise"

    def __init__(self, config: Any, world: Any):
        m = config.pointwise
        self.use_ids = bool(config_get(m, "use_ids", True))
        self.use_rank = bool(config_get(m, "use_rank", True))
        self.sizes = world_sizes(world)
        self.d = int(config_get(m, "emb_dim", 64))
        self.rate = float(config_get(m, "dropout", 0.1))
        self.item_cat = jnp.asarray(world.item_cat)

    def init(self, key):
        s, d = self.sizes, self.d
        ks = jax.random.split(key, 3)
        params = {
            "emb": init_embeddings(ks[0], s.n_users, s.n_items, s.n_cats, d, s.n),
            "item_bias": jnp.zeros((s.n_items,), jnp.float32),
            "pos_bias": jnp.zeros((s.n,), jnp.float32),
            "h1": dense_init(ks[1], 3 * d, d),
            "h2": dense_init(ks[2], d, 1, 0.1),
        }
        return None, params, {}

    def item_logits(self, params, ctx: Context, key=None) -> jnp.ndarray:
        """``[B, n]`` position-free click logits of the candidates."""
        u, c = embed(params["emb"], self.item_cat, ctx, self.use_ids, self.use_rank)
        uu = jnp.broadcast_to(u[:, None], c.shape)
        f = jnp.concatenate([uu, c, uu * c], -1)
        h = dropout(jax.nn.gelu(dense(params["h1"], f), approximate=True), self.rate, key)
        out = dense(params["h2"], h)[..., 0] + jnp.sum(uu * c, -1)
        return out + params["item_bias"][ctx.cands] if self.use_ids else out

    def loss(self, params, ctx: Context, lists, clicks, likes, mask_B, key):
        del likes
        m = self.sizes.m
        lg = jnp.take_along_axis(self.item_logits(params, ctx, key), lists, 1) + params["pos_bias"][None]
        bce = jnp.mean(bce_with_logits(lg[:, :m], clicks[:, :m]), 1)
        w = mask_B.astype(jnp.float32)
        loss = jnp.sum(bce * w) / jnp.maximum(w.sum(), 1.0)
        return loss, {"bce": loss}

    def rerank(self, params, ctx: Context) -> jnp.ndarray:
        """Candidates sorted by predicted click logit, int32 ``[B, n]``."""
        return jnp.argsort(-self.item_logits(params, ctx), -1).astype(jnp.int32)
