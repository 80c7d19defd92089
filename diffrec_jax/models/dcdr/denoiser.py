"""DCDR's conditional denoiser: network, loss and the reverse process it drives.

* **Conditional denoiser** ``p_theta(x_0 | x_t, t, u, C, c)`` ([design] after [paper]): a
  bidirectional pre-LN Transformer over ``1 + n + n`` tokens (user token = user id embedding +
  projected mean of the history's item embeddings + step embedding; ``n`` list tokens = the item
  at each position of ``x_t`` + position embedding + the embedded response code ``c_k`` of that
  position; ``n`` candidate tokens); **pointer outputs**
  ``logits[k, j] = (W_q h_k) . (W_k g_j) / sqrt(d)`` over the candidates. The response codes are
  0 no click, 1 click, 2 click + like, 3 unexposed; a 5th embedding is the dropped condition
  (condition dropout, enabling classifier-free guidance).

* **Training** ([design]): ``t ~ U{1..T}``, ``x_t ~ q(x_t | x_0)``, loss
  ``-(1/n) sum_k log p_theta(x_0^k | ...)`` (x0 cross-entropy); ``c`` = the logged responses.

The reverse process (inference) is :func:`diffrec_jax.models.dcdr.beam.generate`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from diffrec_jax.models.dcdr.beam import generate, greedy_decode_jax
from diffrec_jax.models.dcdr.kernels import KERNELS, make_discrete_schedule, onehot, q_sample
from diffrec_jax.models.dcdr.networks import (Context, config_get, dense, dense_init, embed,
                                              init_embeddings, init_transformer, transformer,
                                              world_sizes)

__all__ = ["DCDR", "N_CODES", "NULL_CODE"]

N_CODES = 4  # response codes 0..3; index 4 is the dropped (null) condition
NULL_CODE = 4


class DCDR:
    """The conditional denoiser ``p_theta(x_0 | x_t, t, u, C, c)`` with pointer outputs, its loss
    and the reverse process (module docstring).

    Config: ``config.diffusion``: ``steps`` (T), ``schedule`` (linear | cosine), ``beta_min``,
    ``beta_max``; ``config.model``: ``kernel`` (:data:`KERNELS`), ``n_swaps_max``, ``emb_dim``,
    ``n_layers``, ``n_heads``, ``dropout``, ``cond_dropout``.
    """

    name = "dcdr"
    DEFAULTS = {"kernel": "perm_uniform", "n_swaps_max": 1, "emb_dim": 64, "n_layers": 2, "n_heads": 4,
                "dropout": 0.1, "cond_dropout": 0.1}
    DIFFUSION = {"steps": 10, "schedule": "linear", "beta_min": 0.05, "beta_max": 0.3}  # config.diffusion

    def __init__(self, config: Any, world: Any):
        m = config.model
        g = lambda f: config_get(m, f, self.DEFAULTS[f])  # noqa: E731
        self.kernel = g("kernel")
        if self.kernel not in KERNELS:
            raise ValueError(f"config.model.kernel must be one of {KERNELS}, got {self.kernel!r}")
        self.sizes = world_sizes(world)
        d = lambda f: config_get(config.get("diffusion", {}), f, self.DIFFUSION[f])  # noqa: E731
        self.sched = make_discrete_schedule(int(d("steps")), d("schedule"), float(d("beta_min")),
                                            float(d("beta_max")))
        self.n_swaps_max = int(g("n_swaps_max"))
        self.d = int(g("emb_dim"))
        self.n_layers = int(g("n_layers"))
        self.n_heads = int(g("n_heads"))
        self.rate = float(g("dropout"))
        self.cond_dropout = float(g("cond_dropout"))
        self.use_ids = bool(config_get(m, "use_ids", True))
        self.use_rank = bool(config_get(m, "use_rank", True))
        if self.d % self.n_heads:
            raise ValueError(f"config.model.emb_dim ({self.d}) must be divisible by n_heads ({self.n_heads})")
        self.item_cat = jnp.asarray(world.item_cat)

    @staticmethod
    def validate_config(config: Any) -> None:
        """Refuses bad DCDR fields, naming them."""
        m = config.model
        k = config_get(m, "kernel", DCDR.DEFAULTS["kernel"])
        if k not in KERNELS:
            raise ValueError(f"config.model.kernel must be one of {KERNELS}, got {k!r}")
        steps = config_get(config.get("diffusion", {}), "steps", DCDR.DIFFUSION["steps"])
        if int(steps) != steps or steps < 1:
            raise ValueError(f"config.diffusion.steps must be an integer >= 1, got {steps}")
        for f in ("emb_dim", "n_layers", "n_heads", "n_swaps_max"):
            v = config_get(m, f, DCDR.DEFAULTS[f])
            if int(v) != v or v < 1:
                raise ValueError(f"config.model.{f} must be an integer >= 1, got {v}")
        for f in ("dropout", "cond_dropout"):
            v = config_get(m, f, DCDR.DEFAULTS[f])
            if not 0 <= v < 1:
                raise ValueError(f"config.model.{f} must be in [0, 1), got {v}")

    def init(self, key: jax.Array):
        """``(None, params, {})``."""
        s, d = self.sizes, self.d
        ks = jax.random.split(key, 8)
        params = {
            "emb": init_embeddings(ks[0], s.n_users, s.n_items, s.n_cats, d, s.n),
            "pos": 0.1 * jax.random.normal(ks[1], (s.n, d), jnp.float32),
            "cond": 0.1 * jax.random.normal(ks[2], (N_CODES + 1, d), jnp.float32),
            "time": 0.1 * jax.random.normal(ks[3], (self.sched.num_steps + 1, d), jnp.float32),
            "type": 0.1 * jax.random.normal(ks[4], (3, d), jnp.float32),
            "tf": init_transformer(ks[5], d, self.n_layers),
            "ptr_q": dense_init(ks[6], d, d),
            "ptr_k": dense_init(ks[7], d, d),
        }
        return None, params, {}

    def logits(self, params: dict, ctx: Context, x_t: jnp.ndarray, t: jnp.ndarray, cond: jnp.ndarray,
               key: jax.Array | None = None) -> jnp.ndarray:
        """Pointer logits of ``p_theta(x_0^k = j | x_t, t, u, C, c)``.

        Args:
          params: parameters.
          ctx: request context (batch ``B``).
          x_t: int ``[B, n]`` noisy lists (candidate indices).
          t: int ``[B]`` steps.
          cond: int ``[B, n]`` response codes (``NULL_CODE`` = dropped condition).
          key: dropout key (training) or None.

        Returns:
          ``[B, n, n]`` logits (position x candidate).
        """
        u, c = embed(params["emb"], self.item_cat, ctx, self.use_ids, self.use_rank)  # [B, d], [B, n, d]
        B, n, d = c.shape
        user_tok = u + params["time"][t] + params["type"][0]
        xt_emb = jnp.take_along_axis(c, x_t[:, :, None], 1)
        list_tok = xt_emb + params["pos"][None, :n] + params["cond"][cond] + params["type"][1]
        cand_tok = c + params["type"][2]
        h = jnp.concatenate([user_tok[:, None], list_tok, cand_tok], 1)
        h = transformer(params["tf"], h, self.n_heads, self.rate, key)
        q = dense(params["ptr_q"], h[:, 1 : n + 1])
        k = dense(params["ptr_k"], h[:, n + 1 :])
        return jnp.einsum("bkd,bjd->bkj", q, k) / math.sqrt(d)

    def loss(self, params: dict, ctx: Context, x0: jnp.ndarray, cond: jnp.ndarray, mask_B: jnp.ndarray,
             key: jax.Array):
        """x0 cross-entropy ``-(1/n) sum_k log p_theta(x_0^k | x_t, t, u, C, c)``, ``t ~ U{1..T}``.

        Args:
          params: parameters.
          ctx: request context.
          x0: int ``[B, n]`` logged lists.
          cond: int ``[B, n]`` their response codes.
          mask_B: ``[B]`` bool, False on padding rows.
          key: PRNG key.

        Returns:
          ``(loss, {"ce", "acc"})``.
        """
        kt, kq, kc, kd = jax.random.split(key, 4)
        B = x0.shape[0]
        t = jax.random.randint(kt, (B,), 1, self.sched.num_steps + 1)
        x_t = q_sample(self.kernel, kq, x0, t, self.sched, self.n_swaps_max)
        drop = jax.random.uniform(kc, (B,)) < self.cond_dropout
        cond = jnp.where(drop[:, None], NULL_CODE, cond)
        lg = self.logits(params, ctx, x_t, t, cond, kd)
        lp = jax.nn.log_softmax(lg, -1)
        nll = -jnp.take_along_axis(lp, x0[:, :, None], -1)[..., 0].mean(-1)  # [B]
        w = mask_B.astype(jnp.float32)
        ce = jnp.sum(nll * w) / jnp.maximum(w.sum(), 1.0)
        acc = jnp.sum(jnp.mean(jnp.argmax(lg, -1) == x0, -1) * w) / jnp.maximum(w.sum(), 1.0)
        return ce, {"ce": ce, "acc": acc}

    @functools.cached_property
    def jit_logits(self):
        """:meth:`logits` jitted once per model (a fresh ``jax.jit`` per batch would recompile)."""
        return jax.jit(lambda p, ctx, x, t, c: self.logits(p, ctx, x, t, c))

    def make_logits_fn(self, params: dict, ctx: Context, cond: jnp.ndarray, guidance: float = 0.0):
        """``(x_RxBxn, t) -> [R, B, n, n]`` for :func:`generate`; with ``guidance = w > 0``,
        classifier-free guidance ``(1 + w) l(c) - w l(null)`` ([design], optional)."""
        fn = self.jit_logits

        def logits_fn(x, t):
            R, B, n = x.shape
            rep = lambda a: jnp.repeat(a, B, axis=0)  # noqa: E731
            c2 = ctx.repeat(B)
            tt = jnp.full((R * B,), t, jnp.int32)
            lg = fn(params, c2, x.reshape(R * B, n), tt, rep(cond))
            if guidance:
                lg0 = fn(params, c2, x.reshape(R * B, n), tt, jnp.full((R * B, n), NULL_CODE, jnp.int32))
                lg = (1.0 + guidance) * lg - guidance * lg0
            return lg.reshape(R, B, n, n)

        return logits_fn

    def generate(self, params: dict, ctx: Context, init: jnp.ndarray, cond: jnp.ndarray, *,
                 t_start: int, beam: int = 4, early_stop: bool = True, guidance: float = 0.0,
                 noise_start: bool = False, key: jax.Array | None = None,
                 guide_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None):
        """Reverse process from ``init`` under condition ``cond`` (see :func:`generate`).

        ``guidance`` is classifier-free guidance on the denoiser's own use of ``cond``;
        ``guide_fn`` adds a classifier-guidance term to the beam scores (see :func:`generate`;
        :func:`evaluator_guide` builds one from a :class:`ListEvaluator`).

        With ``noise_start`` ([design], the spec's optional "noise it with ``q(x_{t_s} | x_init)``"),
        the beam starts from ``B`` sequences: the initial list and ``B - 1`` draws of
        ``q(x_{t_s} | x_init)`` (``key`` required).
        """
        if noise_start and beam > 1:
            if key is None:
                raise ValueError("noise_start needs a key")
            R, n = init.shape
            rep = jnp.repeat(init, beam - 1, axis=0)
            noised = q_sample(self.kernel, key, rep, jnp.full((R * (beam - 1),), t_start, jnp.int32),
                              self.sched, self.n_swaps_max)
            if self.kernel == "token_uniform":  # a starting sequence must be a valid list
                noised = jax.vmap(lambda x: greedy_decode_jax(jnp.log(onehot(x, n) + 1e-3)))(noised)
            init = jnp.concatenate([init[:, None], noised.reshape(R, beam - 1, n)], 1)
        return generate(self.make_logits_fn(params, ctx, cond, guidance), init, kernel=self.kernel,
                        sched=self.sched, t_start=t_start, beam=beam, early_stop=early_stop,
                        guide_fn=guide_fn)
