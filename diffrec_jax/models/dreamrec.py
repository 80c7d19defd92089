"""DreamRec (Yang et al., NeurIPS 2023): guided diffusion that generates the next item's embedding.

Faithful to ``shared/specs/dreamrec.md``:

* Guidance encoder (section 3): ``X = E[seq] + P``, dropout, padded positions zeroed, one causal
  SASRec-style block (:class:`~diffrec_jax.models.seq.TransformerEncoder`, ``style="sasrec"``), final
  LayerNorm; ``c = H[len - 1]`` (an empty history gathers padded column 0, giving ``c = LN3``'s bias).
  Only that column is computed in the block (keys/values use every column): same numbers, fewer
  FLOPs.
* Condition dropout (CFG, training only): ``c <- keep c + (1 - keep) null`` with
  ``keep ~ Bernoulli(1 - p)`` per row and a learned ``null`` vector (init N(0, 1)).
* Denoiser (section 4): ``tau(t) = Linear(2d->d)(GELU(Linear(d->2d)(s(t))))`` with DreamRec's
  sinusoid ``s(t) = [sin(t w), cos(t w)]``, ``w_k = exp(-k ln(10000) / (d/2 - 1))``;
  ``mlp1``: ``x0_hat = Linear(3d->d)([x_t; c; tau(t)])``; ``mlp2``: ``Linear(3d->2d)-GELU-Linear(2d->d)``.
* Loss (section 6): ``e_0 = E[next]`` (gradients through the shared table), ``t ~ U{0..T-1}``,
  ``e_t = sqrt(abar_t) e_0 + sqrt(1 - abar_t) eps``, plain MSE between ``e_0`` and ``x0_hat``.
* Sampling (section 7): ``x_T ~ N(0, I)``, all ``T`` ancestral steps with
  ``x0_hat = (1 + w) f(x, c, t) - w f(x, null, t)`` built with the core's
  :func:`~diffrec_jax.samplers.classifier_free_guidance` and run by
  :func:`~diffrec_jax.samplers.ancestral_sample` (posterior variance, no noise at ``t = 0``, per-example
  keys: a batch equals ``vmap`` over its rows). Scores ``x E^T`` over all ``I + 1`` rows.

Fast sampler (``sampling.fast``, ``mlp1`` only; the spec's section 13 remark): the denoiser is affine,
``f(x, c, t) = W_x x + W_c c + W_tau tau(t) + b``, so the condition enters as ``c W_c`` (computed once
per row, and once for ``null``) and ``tau(t) W_tau + b`` is a ``[T, d]`` table computed once per call.
The combinator then mixes two calls that share ``W_x x`` (XLA eliminates the common product), so a
reverse step costs one ``d x d`` product per row. Same distribution as the generic path; float
rounding differs.

Reference quirks (spec sections 8, 12, 13), with the switch where we differ:

1. Dropout stays on while sampling (the reference never calls ``eval()``): ``model.deterministic_eval``
   (False = faithful: encoder dropout on during evaluation; True = corrected).
2. The padding row is ranked: ``eval.score_padding`` (True = faithful).
3. Evaluation batches of 100 drop the last ``N mod 100`` rows: ``eval.drop_remainder_of = 100`` with
   ``eval.protocol = "reference"``; ``"exact"`` averages over every row.
4. ``evaluate()`` crashes with a ``TypeError`` when a cut-off has no hit: not reproduced.
5. Registered but unused layers (659,690 parameters) are left out: our count is the 659,904 used.
6. Batches draw 256 rows without replacement within a step, independently across steps:
   ``train.sampling = "independent"`` (``"permutation"`` gives proper passes).
7. The ``cosine`` schedule clips betas to ``[1e-4, 0.9999]`` (unlike Nichol & Dhariwal's 0.999).

Measured here (YooChoose, faithful config, seed 100, 75 epochs on a shared 2-core CPU): the MSE
objective with gradients into ``E[next]`` shrinks the trained item rows (mean norm 8 -> 2.2 after 15
epochs, training MSE 5e-4 by epoch 40) while the rows of items that never occur in training keep
their N(0, 1) norm of about 8. The YooChoose split drifts in time: 67 % of test targets (31 % of
validation targets) never occur in training. Ranking by ``x E^T`` then puts never-trained items
first: at the validation-selected epoch (45) every test hit (HR@20 4.33 %, NDCG@20 1.19 %) comes from
a row whose target never occurs in training (seen-target rows: HR@20 0.000); at epoch 15 the top-20 lists
of 2,000 test rows held only 131 distinct items. Validation and test HR@20 oscillate between 0.1 % and
4.3 % from one evaluation to the next. These numbers measure which random never-trained rows align
with the generated vectors, not sequential modelling; SASRec on the same rows (``configs/sasrec_yc.py``)
reaches validation HR@20 24 % and test HR@20 4.6 %.

Two switches that are not in the reference: ``model.item_init_std`` (the table's init scale; a
small one makes the collapse immediate) and ``model.stop_target_grad`` (no gradient into the x0
target rows, so shrinking the table cannot lower the loss; ``configs/dreamrec_yc.py:stopgrad``).
With the latter, 3 seeds reach test HR@20 3.87 +- 0.10 % / NDCG@20 1.91 +- 0.05 %, with personalised
top-20s and the hits on rows whose target occurs in training (README).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffrec_jax import diffusion as dif
from diffrec_jax import samplers, schedules
from diffrec_jax.models.seq import TransformerEncoder, fold, last_index, linear

_SCHEDULES = ("exp", "cosine", "linear", "sqrt")


def dreamrec_schedule(kind: str, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02):
    """DreamRec's four beta schedules (spec section 5) as a core :class:`~diffrec_jax.schedules.Schedule`."""
    if kind == "exp":
        return schedules.make_schedule("exp", num_steps)
    if kind == "linear":
        return schedules.make_schedule("linear", num_steps, beta_start=beta_start, beta_end=beta_end)
    if kind == "cosine":  # clipped to [1e-4, 0.9999] in DreamRec
        return schedules.from_betas(np.clip(schedules.cosine_betas(num_steps, max_beta=0.9999), 1e-4, 0.9999))
    if kind == "sqrt":
        return schedules.make_schedule("sqrt", num_steps)
    raise ValueError(f"config.diffusion.schedule must be one of {_SCHEDULES}, got {kind!r}")


def step_sinusoid(t_B: jnp.ndarray, dim: int) -> jnp.ndarray:
    """DreamRec's step embedding ``s(t) = [sin(t w), cos(t w)]``, ``w_k = exp(-k ln(1e4) / (h - 1))``.

    Args:
      t_B: ``[B]`` steps (int).
      dim: ``d`` (even, >= 4).

    Returns:
      float32 ``[B, d]``, sines first.
    """
    h = dim // 2
    w = jnp.exp(-jnp.arange(h, dtype=jnp.float32) * (math.log(10000.0) / (h - 1)))
    a = t_B.astype(jnp.float32)[:, None] * w[None, :]
    return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=-1)


class DreamRecNet(nnx.Module):
    """Item table, null condition, guidance encoder, step MLP and denoiser (all trained parameters)."""

    def __init__(self, num_embeddings: int, max_len: int, mcfg, rngs: nnx.Rngs):
        d = int(mcfg.hidden)
        self.d = d
        # N(0, 1) as the reference's nn.Embedding; item_init_std < 1 keeps never-trained (cold) rows
        # short, so they cannot outrank trained ones in x E^T (see the README's DreamRec notes)
        std = float(mcfg.get("item_init_std", 1.0))
        self.item_emb = nnx.Param(std * jax.random.normal(rngs.params(), (num_embeddings, d)))
        self.null = nnx.Param(jax.random.normal(rngs.params(), (1, d)))
        r = float(mcfg.dropout)
        self.encoder = TransformerEncoder(
            d, max_len, num_blocks=int(mcfg.get("num_blocks", 1)), num_heads=int(mcfg.get("num_heads", 1)),
            style="sasrec", causal=True, mask_mode="key", pos_emb=True, dropout_rate=r,
            emb_dropout=r, zero_pad_inputs=True, ln_eps=1e-5, rngs=rngs,
        )
        self.step1 = linear(d, 2 * d, rngs)
        self.step2 = linear(2 * d, d, rngs)
        self.kind = mcfg.get("denoiser", "mlp1")
        if self.kind == "mlp1":
            self.den = linear(3 * d, d, rngs)
        else:
            self.den = linear(3 * d, 2 * d, rngs)
            self.den2 = linear(2 * d, d, rngs)

    def guidance(self, seq_BxL, len_B, pad_id: int, key=None) -> jnp.ndarray:
        """``c = H[len - 1]``: ``[B, d]``; ``key`` (one or per-example) enables dropout."""
        mask = seq_BxL != pad_id
        x = self.item_emb[...][seq_BxL]
        return self.encoder(x, mask, key, last_index(len_B, seq_BxL.shape[1], "right"))

    def tau(self, t_B: jnp.ndarray) -> jnp.ndarray:
        """Step embedding ``tau(t)``: ``[B, d]``."""
        return self.step2(jax.nn.gelu(self.step1(step_sinusoid(t_B, self.d)), approximate=False))

    def denoise(self, x_BxD, c_BxD, tau_BxD) -> jnp.ndarray:
        """``f([x_t; c; tau]) -> x0_hat``: ``[B, d]``."""
        h = jnp.concatenate([x_BxD, c_BxD, tau_BxD], axis=-1)
        if self.kind == "mlp1":
            return self.den(h)
        return self.den2(jax.nn.gelu(self.den(h), approximate=False))

    def affine_parts(self, T: int):
        """``mlp1`` split: ``(W_x [d, d], W_c [d, d], tauW_T [T, d] = tau(t) W_tau + b)``."""
        W = self.den.kernel[...]
        d = self.d
        tw = self.tau(jnp.arange(T, dtype=jnp.int32)) @ W[2 * d :] + self.den.bias[...]
        return W[:d], W[d : 2 * d], tw


class DreamRec:
    """DreamRec in the sequential harness (see the module docstring for the contract and quirks)."""

    name = "dreamrec"

    def __init__(self, config, data):
        if data.pad_side != "right":
            raise ValueError(
                f"DreamRec expects DreamRec's right-padded layout (load_dreamrec_npz or a 'sessions' "
                f"synthetic set); {data.name!r} is {data.pad_side}-padded"
            )
        self.mcfg = config.model
        self.dcfg = config.diffusion
        self.scfg = config.sampling
        self.V = int(data.num_embeddings)
        self.L = int(data.max_len)
        self.pad_id = int(data.pad_id)
        self.num_steps = int(self.dcfg.steps)
        self.schedule = dreamrec_schedule(
            self.dcfg.schedule, self.num_steps, self.dcfg.get("beta_start", 1e-4), self.dcfg.get("beta_end", 0.02)
        )
        self.p = float(self.mcfg.get("cfg_dropout", 0.1))
        self.w = float(self.scfg.get("w", 2.0))
        self.graphdef = None

    @staticmethod
    def validate_config(config: Any) -> None:
        m, d = config.model, config.diffusion
        if m.get("denoiser", "mlp1") not in ("mlp1", "mlp2"):
            raise ValueError(f"config.model.denoiser must be 'mlp1' or 'mlp2', got {m.denoiser!r}")
        if d.schedule not in _SCHEDULES:
            raise ValueError(f"config.diffusion.schedule must be one of {_SCHEDULES}, got {d.schedule!r}")
        if int(d.steps) < 1:
            raise ValueError(f"config.diffusion.steps must be >= 1, got {d.steps}")
        if not 0.0 <= m.get("cfg_dropout", 0.1) <= 1.0:
            raise ValueError(f"config.model.cfg_dropout must be in [0, 1], got {m.cfg_dropout}")
        if not 0.0 <= m.dropout < 1.0:
            raise ValueError(f"config.model.dropout must be in [0, 1), got {m.dropout}")
        if not m.get("item_init_std", 1.0) > 0:
            raise ValueError(f"config.model.item_init_std must be > 0, got {m.item_init_std}")
        if int(m.hidden) % 2 or int(m.hidden) < 4:
            raise ValueError(f"config.model.hidden must be even and >= 4, got {m.hidden}")

    def init(self, key):
        net = DreamRecNet(self.V, self.L, self.mcfg, nnx.Rngs(params=key))
        self.graphdef, params = nnx.split(net)
        return self.graphdef, params, {}

    def net(self, params) -> DreamRecNet:
        return nnx.merge(self.graphdef, params)

    # -- training ------------------------------------------------------------------------------

    def loss(self, params, model_state, batch, mask_B, key):
        """x0-prediction MSE with condition dropout; mean over the valid rows and the ``d`` dims."""
        net = self.net(params)
        k_enc, k_cfg, k_t, k_eps = jax.random.split(key, 4)
        e0 = net.item_emb[...][batch["target"]]
        if self.mcfg.get("stop_target_grad", False):
            # [not in the reference] the regression target is a constant: the table learns only
            # through the history encoder, so shrinking it cannot lower the loss (README)
            e0 = jax.lax.stop_gradient(e0)
        c = net.guidance(batch["seq"], batch["len"], self.pad_id, k_enc)
        B = c.shape[0]
        keep = jax.random.bernoulli(k_cfg, 1.0 - self.p, (B, 1)).astype(c.dtype)
        c = keep * c + (1.0 - keep) * net.null[...]
        t_B = jax.random.randint(k_t, (B,), 0, self.num_steps)
        x_t = dif.q_sample(self.schedule, e0, t_B, jax.random.normal(k_eps, e0.shape))
        x0_hat = net.denoise(x_t, c, net.tau(t_B))
        loss_B = jnp.mean(jnp.square(e0 - x0_hat), axis=-1)
        m = mask_B.astype(jnp.float32)
        return jnp.sum(loss_B * m) / jnp.maximum(m.sum(), 1.0), (model_state, {})

    # -- sampling ------------------------------------------------------------------------------

    def guided_denoiser(self, net: DreamRecNet, w, *, fast: bool):
        """``(denoise_fn, guided_fn, prepare)``: the conditional denoiser ``f(x, t_B, cond)``, its CFG
        version from the core's combinator, and ``prepare(c) -> cond`` (``c W_c`` on the fast path)."""
        if fast:
            Wx, Wc, tw_T = net.affine_parts(self.num_steps)

            def denoise_fn(x, t_B, cond):
                return x @ Wx + cond + tw_T[t_B]

            null = net.null[...] @ Wc
            prepare = lambda c: c @ Wc  # noqa: E731
        else:
            tau_T = net.tau(jnp.arange(self.num_steps, dtype=jnp.int32))

            def denoise_fn(x, t_B, cond):
                return net.denoise(x, cond, tau_T[t_B])

            null = net.null[...]
            prepare = lambda c: c  # noqa: E731
        return denoise_fn, samplers.classifier_free_guidance(denoise_fn, w, null), prepare

    def sample(self, params, c_BxD, keys_B, *, w: float | None = None, fast: bool | None = None):
        """Generates ``[B, d]`` oracle-item embeddings from guidance vectors ``c`` (spec section 7).

        Row ``b`` uses only ``keys_B[b]``: ``x_T`` from ``fold_in(k_b, 1)``, the reverse noise from
        ``fold_in(k_b, 2)`` (per step, as :func:`~diffrec_jax.samplers.ancestral_sample`).
        """
        net = self.net(params)
        w = self.w if w is None else w
        if fast is None:
            fast = bool(self.scfg.get("fast", True)) and net.kind == "mlp1"
        _, guided, prepare = self.guided_denoiser(net, w, fast=fast)
        x_T = samplers.normal_per_example(fold(keys_B, 1), 0, c_BxD.shape, c_BxD.dtype)
        return samplers.ancestral_sample(
            guided, self.schedule, x_T, fold(keys_B, 2), cond=prepare(c_BxD), mean_type="x0"
        )

    def score(self, params, model_state, batch, keys_B):
        """``x E^T`` over all ``I + 1`` rows for generated ``x`` (dropout on unless ``deterministic_eval``)."""
        net = self.net(params)
        k_drop = None if self.mcfg.get("deterministic_eval", False) else fold(keys_B, 3)
        c = net.guidance(batch["seq"], batch["len"], self.pad_id, k_drop)
        x = self.sample(params, c, keys_B)
        return x @ net.item_emb[...].T
