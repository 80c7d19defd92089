"""Networks (functional): embeddings, a pre-LN Transformer, heads, shared by the three models.

Also the request :class:`Context` and its embeddings, the config / world helpers and the BCE the
models use.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "Context",
    "Sizes",
    "bce_with_logits",
    "config_get",
    "dense",
    "dense_init",
    "dropout",
    "embed",
    "init_embeddings",
    "init_rank",
    "init_transformer",
    "transformer",
    "world_sizes",
]


def dense_init(key, n_in, n_out, scale=1.0):
    return {"w": jax.random.normal(key, (n_in, n_out), jnp.float32) * scale / math.sqrt(n_in),
            "b": jnp.zeros((n_out,), jnp.float32)}


def dense(p, x):
    return x @ p["w"] + p["b"]


def _ln_init(d):
    return {"g": jnp.ones((d,), jnp.float32), "b": jnp.zeros((d,), jnp.float32)}


def _ln(p, x, eps=1e-6):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), -1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps) * p["g"] + p["b"]


def dropout(x, rate, key):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def init_transformer(key: jax.Array, d: int, n_layers: int, ffn_mult: int = 4) -> dict:
    """Parameters of ``n_layers`` pre-LN blocks (``h += MHA(LN h)``, ``h += FFN(LN h)``) + final LN."""
    blocks = []
    for k in jax.random.split(key, n_layers):
        ks = jax.random.split(k, 4)
        blocks.append({
            "ln1": _ln_init(d), "qkv": dense_init(ks[0], d, 3 * d), "o": dense_init(ks[1], d, d, 0.5),
            "ln2": _ln_init(d), "f1": dense_init(ks[2], d, ffn_mult * d),
            "f2": dense_init(ks[3], ffn_mult * d, d, 0.5),
        })
    return {"blocks": blocks, "ln_f": _ln_init(d)}


def transformer(p: dict, h_BxSxD: jnp.ndarray, n_heads: int, rate: float = 0.0,
                key: jax.Array | None = None, causal: bool = False) -> jnp.ndarray:
    """Pre-LN Transformer over ``S`` tokens, bidirectional or causal.

    Args:
      p: :func:`init_transformer` parameters.
      h_BxSxD: ``[B, S, d]`` tokens.
      n_heads: attention heads (``d`` divisible by it).
      rate: dropout rate on the residual branches (training only, with ``key``).
      key: PRNG key or None.
      causal: token ``i`` attends to tokens ``<= i`` only (a top-down examination order when the
        list follows a user token).

    Returns:
      ``[B, S, d]``.
    """
    B, S, D = h_BxSxD.shape
    hd = D // n_heads
    h = h_BxSxD
    for i, blk in enumerate(p["blocks"]):
        ka = kb = None
        if key is not None:
            ka, kb = jax.random.split(jax.random.fold_in(key, i))
        x = _ln(blk["ln1"], h)
        q, k, v = jnp.split(dense(blk["qkv"], x), 3, -1)
        q, k, v = (a.reshape(B, S, n_heads, hd) for a in (q, k, v))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        if causal:
            logits = jnp.where(jnp.tril(jnp.ones((S, S), bool)), logits, -1e9)
        att = jax.nn.softmax(logits, -1)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(B, S, D)
        h = h + dropout(dense(blk["o"], o), rate, ka)
        x = _ln(blk["ln2"], h)
        h = h + dropout(dense(blk["f2"], jax.nn.gelu(dense(blk["f1"], x), approximate=True)), rate, kb)
    return _ln(p["ln_f"], h)


class Context(NamedTuple):
    """Request context on device: ``user [B]``, ``cands [B, n]`` item ids, ``hist [B, H]`` items
    and ``rank [B, n]`` the initial-ranking position of each candidate (the ranking stage's output,
    available at reranking time; ``None`` to leave it out)."""

    user: jnp.ndarray
    cands: jnp.ndarray
    hist: jnp.ndarray
    rank: jnp.ndarray | None = None

    def repeat(self, b: int) -> "Context":
        """Every request repeated ``b`` times (``[R] -> [R * b]``)."""
        return Context(*(None if a is None else jnp.repeat(a, b, axis=0) for a in self))


def init_rank(init: jnp.ndarray) -> jnp.ndarray:
    """Position of each candidate in the initial list (the inverse permutation), int32 ``[B, n]``."""
    return jnp.argsort(init, axis=-1).astype(jnp.int32)


def init_embeddings(key, n_users, n_items, n_cats, d, n) -> dict:
    ks = jax.random.split(key, 5)
    return {
        "user": 0.1 * jax.random.normal(ks[0], (n_users, d), jnp.float32),
        "item": 0.1 * jax.random.normal(ks[1], (n_items, d), jnp.float32),
        "cat": 0.1 * jax.random.normal(ks[2], (n_cats, d), jnp.float32),
        "hist": dense_init(ks[3], d, d),
        "rank": 0.1 * jax.random.normal(ks[4], (n, d), jnp.float32),
    }


def embed(p: dict, item_cat: jnp.ndarray, ctx: Context, use_ids: bool = True,
           use_rank: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(user [B, d], cands [B, n, d])``: user id embedding + projected mean history item
    embedding; candidate = item id embedding + category embedding (+ embedding of its position in
    the initial ranking when ``ctx.rank`` is given). With ``use_ids = False`` the user and item id
    embeddings are left out (features: category, initial rank, and the history's categories)."""
    def item_repr(items):
        e = p["cat"][item_cat[items]]
        return e + p["item"][items] if use_ids else e

    u = dense(p["hist"], jnp.mean(item_repr(ctx.hist), 1))
    if use_ids:
        u = u + p["user"][ctx.user]
    c = item_repr(ctx.cands)
    if use_rank and ctx.rank is not None:
        c = c + p["rank"][ctx.rank]
    return u, c


class Sizes(NamedTuple):
    n_users: int
    n_items: int
    n_cats: int
    n: int
    m: int


def world_sizes(world) -> Sizes:
    return Sizes(world.n_users, world.n_items, world.n_cats, world.n, world.m)


def config_get(m: Any, field: str, default: Any) -> Any:
    return m.get(field, default) if hasattr(m, "get") else getattr(m, field, default)



def bce_with_logits(logits, y):
    return jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))
