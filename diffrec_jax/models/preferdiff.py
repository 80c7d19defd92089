"""PreferDiff (Liu et al., ICLR 2025, "Preference Diffusion for Recommendation").

PreferDiff keeps DreamRec's generator (:mod:`diffrec_jax.models.dreamrec`: a causal SASRec-style
history encoder gives the guidance ``c``, a denoiser ``F(x_t, c, t)`` predicts ``x_0``, classifier-
free guidance at sampling time, scores ``x E^T`` over the item table) and changes the objective: a
BPR-style preference term between the target item and negatives, both noised and denoised under the
same history, next to the usual reconstruction term.

Objective (paper section 3; symbols as in this module)::

    e+   = E[target]                                (positive, a row of the trained table)
    e-   = mean_{j in N(b)} E[j]                     (centroid of the row's negatives, paper's
                                                     "multiple negatives" extension)
    t ~ U{0..T-1},  x+_t = sqrt(abar_t) e+ + sqrt(1-abar_t) eps+,
                    x-_t = sqrt(abar_t) e- + sqrt(1-abar_t) eps-   (same t, independent noise)
    c' = c with probability 1-p, else the learned null vector (condition dropout, shared by both)
    l+ = rec(e+, F(x+_t, c', t)),   l- = rec(e-, F(x-_t, c', t))
    rec(a, b) = (cos(a, b) - 1)^2                    ("cosine", the paper's choice)
              | mean_d (a - b)^2                     ("mse", DreamRec's L_simple)
    L_rank = -log sigmoid(-gamma (l+ - l-))          (BPR-Diff, upper bound of the BPR log-likelihood)
    L = (1 - rank_weight) mean_b l+ + rank_weight L_rank

``rank_weight`` is ``1 - lambda`` of the paper (lambda weighs the generative term; the reference's
best Beauty setting is lambda = 0.4, i.e. ``rank_weight = 0.6``). With ``rank_weight = 0`` and
``recon_loss = "mse"`` the loss is DreamRec's, to the bit: the same four keys (encoder dropout,
condition dropout, t, eps) are drawn in the same order, the negatives use keys folded from the step
key separately, and the rank branch is not traced (``tests/test_preferdiff.py``).

Config fields (``config.model``): ``rank_weight`` (1 - lambda), ``rank_scale`` (gamma, 5 in the
reference), ``recon_loss`` (``cosine`` | ``mse``), ``negatives`` (``in_batch``: the other targets of
the batch, the reference's ``sample_func=batch``; ``uniform``: items drawn uniformly from the
catalogue), ``num_negatives`` (0 with ``in_batch``: every other valid row of the batch; ``k > 0``: k
of them drawn without replacement, the reference's ``sample_func=random``), ``rank_reduction``
(``example``: the paper's per-example ``-log sigmoid`` then the batch mean; ``batch``: the reference
code's ``-log sigmoid(-gamma (mean l+ - mean l-))`` on the batch means), plus DreamRec's fields
(``hidden``, ``num_blocks``, ``num_heads``, ``dropout``, ``cfg_dropout``, ``denoiser``,
``item_init_std``, ``stop_target_grad``, ``deterministic_eval``). ``config.sampling``: ``w``
(guidance), ``mode`` (``ddim``: the core's deterministic DDIM over ``sampling.steps`` spaced steps,
as the reference's default sampler; ``ddpm``: all ``T`` ancestral steps, DreamRec's), ``steps``,
``fast`` (DreamRec's affine ``mlp1`` split).

What is mimicked from the reference code (``lswhim/PreferDiff``, read, not copied):

* the in-batch negatives (every other target of the batch, duplicates of the positive included)
  averaged into one centroid, noised with fresh noise at the positive's ``t``, denoised under the
  same (dropped-out) guidance vector;
* the cosine error ``(cos - 1)^2`` averaged over the batch; gamma = 5; the linear beta schedule
  1e-4..0.02 with T = 2000; guidance ``x0 = (1 + w) F(x, c) - w F(x, null)``; condition dropout
  p = 0.1 with a learned N(0, 1) null vector; one causal block, 2 heads, dropout 0.1, history
  length 10; batch 256, Adam, lr 1e-4; the ``mlp1`` denoiser ``Linear(3d -> d)`` and the step MLP
  (DreamRec's, reused here);
* ID embeddings ``N(0, 1)`` (the reference's ``ab=iids`` switch).

Differences, each deliberate:

1. Padding rows of a batch (``mask_B`` False) are neither positives nor negatives; the reference
   has no padding rows.
2. ``rank_reduction="example"`` (default) follows the paper's equation (expectation outside the
   log-sigmoid); the released code applies the log-sigmoid to the batch-mean losses
   (``"batch"``).
3. The reference adds ``1e-8`` inside ``logsigmoid``; not reproduced (no numerical role).
4. Sampling: the reference's ``sample_from_noise`` walks 21 strided steps and indexes its DDIM
   coefficients by the stride counter while feeding the denoiser the absolute step; we use the
   core's DDIM (:func:`~diffrec_jax.samplers.ddim_sample`, eta 0, ``sampling.steps`` evenly spaced
   steps including T-1 and 0), or DDPM.
5. No learning-rate warm-up (the reference warms up over 10,000 steps) and no gradient clipping
   unless ``optim.grad_clip`` is set: the library's optimizer has no warm-up.
6. Left-padded data (DiffuRec's Beauty) are accepted: the guidance vector is the encoder output at
   the last real item, whatever the padding side.

Not verified here: the paper's main tables use 3,072-wide embeddings; the released code's default
item table is a frozen, whitened OpenAI text embedding (3,072 = text-embedding-3-large's width),
with the ID table as a switch, and we could not check which of the two produced each published
number, nor reproduce either at that width on CPU. The paper's own Beauty split (max length 10,
its files) differs from DiffuRec's split used here, so its numbers are not comparable one to one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from diffrec_jax import diffusion as dif
from diffrec_jax import samplers
from diffrec_jax.models.dreamrec import DreamRecNet, dreamrec_schedule
from diffrec_jax.models.seq import fold, last_index

_SCHEDULES = ("exp", "cosine", "linear", "sqrt")  # dreamrec_schedule's kinds
_RECON = ("cosine", "mse")
_NEGATIVES = ("in_batch", "uniform")
_REDUCTIONS = ("example", "batch")
_MODES = ("ddim", "ddpm")


def recon_error(a_BxD: jnp.ndarray, b_BxD: jnp.ndarray, kind: str) -> jnp.ndarray:
    """Per-example reconstruction error ``[B]``: ``(cos(a, b) - 1)^2`` or ``mean_d (a - b)^2``.

    The cosine normalises with ``max(||v||, 1e-12)`` (PyTorch's ``F.normalize``), so a zero vector
    gives ``cos = 0`` and error 1.
    """
    if kind == "mse":
        return jnp.mean(jnp.square(a_BxD - b_BxD), axis=-1)
    na = a_BxD / jnp.maximum(jnp.linalg.norm(a_BxD, axis=-1, keepdims=True), 1e-12)
    nb = b_BxD / jnp.maximum(jnp.linalg.norm(b_BxD, axis=-1, keepdims=True), 1e-12)
    return jnp.square(jnp.sum(na * nb, axis=-1) - 1.0)


def in_batch_negative_weights(mask_B: jnp.ndarray, key: jax.Array | None, k: int) -> jnp.ndarray:
    """``W [B, B]``: row ``b`` averages the targets of the other valid rows (``k > 0``: ``k`` of them
    drawn without replacement with ``key``). Rows of ``W`` sum to 1, or to 0 where no negative exists.
    """
    B = mask_B.shape[0]
    ok = mask_B[None, :] & ~jnp.eye(B, dtype=bool)
    if k > 0:
        u = jnp.where(ok, jax.random.uniform(key, (B, B)), -1.0)
        kth = jax.lax.top_k(u, min(k, B))[0][:, -1:]
        ok = ok & (u >= kth)
    w = ok.astype(jnp.float32)
    return w / jnp.maximum(w.sum(axis=1, keepdims=True), 1.0)


class PreferDiffNet(DreamRecNet):
    """DreamRec's network (same parameters, same init order) with the guidance gathered at the last
    real item for either padding side."""

    def __init__(self, num_embeddings: int, max_len: int, mcfg, pad_side: str, rngs: nnx.Rngs):
        super().__init__(num_embeddings, max_len, mcfg, rngs)
        self.pad_side = pad_side

    def guidance(self, seq_BxL, len_B, pad_id: int, key=None) -> jnp.ndarray:
        """``c``: ``[B, d]``, the encoder output at the most recent item; ``key`` enables dropout."""
        mask = seq_BxL != pad_id
        x = self.item_emb[...][seq_BxL]
        return self.encoder(x, mask, key, last_index(len_B, seq_BxL.shape[1], self.pad_side))


class PreferDiff:
    """PreferDiff in the sequential harness (see the module docstring for the objective and quirks).

    Built on DreamRec's network (:class:`~diffrec_jax.models.dreamrec.DreamRecNet`) and schedules;
    the loss, the guided denoiser and the sampler are written here against the core.
    """

    name = "preferdiff"

    def __init__(self, config, data):
        self.mcfg = config.model
        self.dcfg = config.diffusion
        self.scfg = config.sampling
        self.V = int(data.num_embeddings)
        self.L = int(data.max_len)
        self.pad_id = int(data.pad_id)
        self.pad_side = str(data.pad_side)
        self.num_steps = int(self.dcfg.steps)
        self.schedule = dreamrec_schedule(
            self.dcfg.schedule, self.num_steps, self.dcfg.get("beta_start", 1e-4), self.dcfg.get("beta_end", 0.02)
        )
        self.p = float(self.mcfg.get("cfg_dropout", 0.1))
        self.w = float(self.scfg.get("w", 2.0))
        self.rank_weight = float(self.mcfg.get("rank_weight", 0.6))
        self.gamma = float(self.mcfg.get("rank_scale", 5.0))
        self.recon = str(self.mcfg.get("recon_loss", "cosine"))
        self.negatives = str(self.mcfg.get("negatives", "in_batch"))
        self.num_neg = int(self.mcfg.get("num_negatives", 0))
        self.reduction = str(self.mcfg.get("rank_reduction", "example"))
        self.mode = str(self.scfg.get("mode", "ddim"))
        self.sample_steps = int(self.scfg.get("steps", 20))
        self.graphdef = None

    @staticmethod
    def validate_config(config: Any) -> None:
        m, d, s = config.model, config.diffusion, config.sampling
        if m.get("denoiser", "mlp1") not in ("mlp1", "mlp2"):
            raise ValueError(f"config.model.denoiser must be 'mlp1' or 'mlp2', got {m.denoiser!r}")
        if d.schedule not in _SCHEDULES:
            raise ValueError(f"config.diffusion.schedule must be one of {_SCHEDULES}, got {d.schedule!r}")
        if int(d.steps) < 1:
            raise ValueError(f"config.diffusion.steps must be >= 1, got {d.steps}")
        if int(m.hidden) % 2 or int(m.hidden) < 4:
            raise ValueError(f"config.model.hidden must be even and >= 4, got {m.hidden}")
        if int(m.hidden) % int(m.get("num_heads", 1)):
            raise ValueError(f"config.model.num_heads must divide config.model.hidden={m.hidden}, got {m.num_heads}")
        if not 0.0 <= m.get("cfg_dropout", 0.1) <= 1.0:
            raise ValueError(f"config.model.cfg_dropout must be in [0, 1], got {m.cfg_dropout}")
        if not 0.0 <= m.dropout < 1.0:
            raise ValueError(f"config.model.dropout must be in [0, 1), got {m.dropout}")
        if not m.get("item_init_std", 1.0) > 0:
            raise ValueError(f"config.model.item_init_std must be > 0, got {m.item_init_std}")
        if not 0.0 <= m.get("rank_weight", 0.6) <= 1.0:
            raise ValueError(f"config.model.rank_weight must be in [0, 1] (1 - the paper's lambda), got {m.rank_weight}")
        if not m.get("rank_scale", 5.0) > 0:
            raise ValueError(f"config.model.rank_scale must be > 0, got {m.rank_scale}")
        if m.get("recon_loss", "cosine") not in _RECON:
            raise ValueError(f"config.model.recon_loss must be one of {_RECON}, got {m.recon_loss!r}")
        if m.get("negatives", "in_batch") not in _NEGATIVES:
            raise ValueError(f"config.model.negatives must be one of {_NEGATIVES}, got {m.negatives!r}")
        k = m.get("num_negatives", 0)
        if int(k) != k or k < 0 or (k == 0 and m.get("negatives", "in_batch") == "uniform"):
            raise ValueError(f"config.model.num_negatives must be an integer >= 0 (>= 1 with 'uniform'), got {k}")
        if m.get("rank_reduction", "example") not in _REDUCTIONS:
            raise ValueError(f"config.model.rank_reduction must be one of {_REDUCTIONS}, got {m.rank_reduction!r}")
        if s.get("mode", "ddim") not in _MODES:
            raise ValueError(f"config.sampling.mode must be one of {_MODES}, got {s.mode!r}")
        if int(s.get("steps", 20)) < 1:
            raise ValueError(f"config.sampling.steps must be >= 1, got {s.steps}")

    def init(self, key):
        net = PreferDiffNet(self.V, self.L, self.mcfg, self.pad_side, nnx.Rngs(params=key))
        self.graphdef, params = nnx.split(net)
        return self.graphdef, params, {}

    # -- training ------------------------------------------------------------------------------

    def negative_centroid(self, table_VxD, target_B, mask_B, key) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(e- [B, d], has_neg [B] bool)``: the centroid of each row's negatives."""
        if self.negatives == "in_batch":
            W = in_batch_negative_weights(mask_B, key, self.num_neg)
            return W @ table_VxD[target_B], W.sum(axis=1) > 0
        B = target_B.shape[0]
        r = jax.random.randint(key, (B, self.num_neg), 0, self.V - 1)
        ids = r + (r >= self.pad_id)  # never the padding row
        return jnp.mean(table_VxD[ids], axis=1), jnp.ones((B,), bool)

    def loss(self, params, model_state, batch, mask_B, key):
        """``(1 - rank_weight) mean l+ + rank_weight L_rank`` over the valid rows (module docstring).

        ``aux``: ``loss_pos`` (mean l+), and with a rank term ``loss_neg`` (mean l-) and ``loss_rank``.
        """
        net = self.net(params)
        k_enc, k_cfg, k_t, k_eps = jax.random.split(key, 4)  # DreamRec's draws, in DreamRec's order
        table = net.item_emb[...]
        e0 = table[batch["target"]]
        if self.mcfg.get("stop_target_grad", False):
            e0 = jax.lax.stop_gradient(e0)
        c = net.guidance(batch["seq"], batch["len"], self.pad_id, k_enc)
        B = c.shape[0]
        keep = jax.random.bernoulli(k_cfg, 1.0 - self.p, (B, 1)).astype(c.dtype)
        c = keep * c + (1.0 - keep) * net.null[...]
        t_B = jax.random.randint(k_t, (B,), 0, self.num_steps)
        tau = net.tau(t_B)
        x_t = dif.q_sample(self.schedule, e0, t_B, jax.random.normal(k_eps, e0.shape))
        pos_B = recon_error(e0, net.denoise(x_t, c, tau), self.recon)
        m = mask_B.astype(jnp.float32)
        pos = jnp.sum(pos_B * m) / jnp.maximum(m.sum(), 1.0)
        if self.rank_weight == 0.0:  # DreamRec's loss exactly (for recon_loss="mse")
            return pos, (model_state, {"loss_pos": pos})

        k_neg, k_neps = jax.random.split(jax.random.fold_in(key, 7))
        table_n = jax.lax.stop_gradient(table) if self.mcfg.get("stop_target_grad", False) else table
        e_neg, has_neg = self.negative_centroid(table_n, batch["target"], mask_B, k_neg)
        x_neg = dif.q_sample(self.schedule, e_neg, t_B, jax.random.normal(k_neps, e_neg.shape))
        neg_B = recon_error(e_neg, net.denoise(x_neg, c, tau), self.recon)
        mr = m * has_neg.astype(jnp.float32)
        neg_mean = jnp.sum(neg_B * mr) / jnp.maximum(mr.sum(), 1.0)
        if self.reduction == "example":
            rank_B = -jax.nn.log_sigmoid(-self.gamma * (pos_B - neg_B))
            rank = jnp.sum(rank_B * mr) / jnp.maximum(mr.sum(), 1.0)
        else:  # the reference code: log-sigmoid of the difference of the batch means
            rank = -jax.nn.log_sigmoid(-self.gamma * (pos - neg_mean))
        total = (1.0 - self.rank_weight) * pos + self.rank_weight * rank
        return total, (model_state, {"loss_pos": pos, "loss_neg": neg_mean, "loss_rank": rank})

    # -- sampling ------------------------------------------------------------------------------

    def net(self, params) -> PreferDiffNet:
        return nnx.merge(self.graphdef, params)

    def guided_denoiser(self, net: PreferDiffNet, w, *, fast: bool):
        """``(guided_fn, prepare)``: ``(1 + w) F(x, c, t) - w F(x, null, t)`` from the core's
        combinator and ``prepare(c) -> cond``. ``fast`` (``mlp1`` only) uses the affine split
        ``F = x W_x + c W_c + (tau(t) W_tau + b)`` with ``c W_c`` computed once per row."""
        T = self.num_steps
        if fast:
            Wx, Wc, tw_T = net.affine_parts(T)

            def denoise_fn(x, t_B, cond):
                return x @ Wx + cond + tw_T[t_B]

            null, prepare = net.null[...] @ Wc, (lambda c: c @ Wc)
        else:
            tau_T = net.tau(jnp.arange(T, dtype=jnp.int32))

            def denoise_fn(x, t_B, cond):
                return net.denoise(x, cond, tau_T[t_B])

            null, prepare = net.null[...], (lambda c: c)
        return samplers.classifier_free_guidance(denoise_fn, w, null), prepare

    def sample(self, params, c_BxD, keys_B, *, w: float | None = None, fast: bool | None = None):
        """``[B, d]`` generated target embeddings from guidance ``c``.

        ``x_T`` from ``fold_in(k_b, 1)``; DDIM (eta 0) over ``sampling.steps`` spaced steps, or DDPM
        ancestral over all ``T`` with its noise from ``fold_in(k_b, 2)``. Row ``b`` uses only
        ``keys_B[b]``: a batch equals ``vmap`` over its rows.
        """
        net = self.net(params)
        w = self.w if w is None else w
        if fast is None:
            fast = bool(self.scfg.get("fast", True)) and net.kind == "mlp1"
        guided, prepare = self.guided_denoiser(net, w, fast=fast)
        x_T = samplers.normal_per_example(fold(keys_B, 1), 0, c_BxD.shape, c_BxD.dtype)
        if self.mode == "ddpm":
            return samplers.ancestral_sample(
                guided, self.schedule, x_T, fold(keys_B, 2), cond=prepare(c_BxD), mean_type="x0"
            )
        return samplers.ddim_sample(
            guided, self.schedule, x_T, None, num_steps=self.sample_steps, eta=0.0, cond=prepare(c_BxD),
            mean_type="x0",
        )

    def score(self, params, model_state, batch, keys_B):
        """``x E^T`` over all table rows for the generated ``x`` (dropout on unless ``deterministic_eval``)."""
        net = self.net(params)
        k_drop = None if self.mcfg.get("deterministic_eval", True) else fold(keys_B, 3)
        c = net.guidance(batch["seq"], batch["len"], self.pad_id, k_drop)
        x = self.sample(params, c, keys_B)
        return x @ net.item_emb[...].T
