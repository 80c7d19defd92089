"""DiffuRec (Li, Sun & Li, TOIS 2023): diffusion over the target item's embedding, a Transformer Approximator.

Faithful to the code described in ``shared/specs/diffurec.md``:

* History (section 2.1): ``S = LN(Drop_0.3(E[seq]))`` (TF-style LayerNorm, eps 1e-12), no positional
  embedding, histories left-padded with 0 (the most recent item in column ``L-1``).
* Forward noising (2.3): ``x_0 = E[target]``, ``t ~ U{0..T-1}`` (the reference's loss-aware sampler
  never receives a loss, so it is uniform), ``x_t = q_sample(x_0, t, eps)`` with the truncated linear
  schedule (section 3).
* Approximator (2.4): ``e_t = Linear(4H->H)(SiLU(Linear(H->4H)(emb(1000 t / T))))`` with the core's
  sinusoid (cosines first); ``z = x_t + e_t``; ``lambda ~ N(0.001, 0.001)`` drawn element-wise
  ``[B, L, H]`` at *every* call; the Transformer input is ``S + lambda * z`` (``z`` broadcast over all
  columns, padding included); 4 pre-LN blocks, 4 heads, bidirectional; output ``Drop`` + ``LN`` at
  column ``L-1`` gives ``x0_hat``. Only that column is computed in the last block.
* Loss (2.5-2.6): cross-entropy of ``x0_hat E^T`` over all ``N + 1`` rows against the target.
* Inference (5): ancestral sampling from ``x_T ~ N(0, I)`` over all ``T`` steps with the core's
  :func:`~diffrec_jax.samplers.ancestral_sample` in the "fixed large" variance (``sigma_t^2 =
  beta_t``), dropout off, ``lambda`` still random; scores ``x E^T``.
* ``sampling.mode="one_step"``: one Approximator call with ``x_t = 0`` at ``t = 0`` (the spec's
  cheap approximation, 32x fewer passes); :func:`measure_reverse_effect` measures how much the 32
  reverse steps change the output and the ranking on trained parameters.

Collapsed padding (``eval.collapse_padding``; ``train.collapse_padding`` for the named variant).
With the query mask, no positions and dropout off, a history of ``R < L`` items has ``P = L - R``
padding columns whose Transformer inputs ``LN(E[0]) + lambda_i z`` are identical whenever their
lambda draws are. By induction over the blocks they stay identical:

* a padded *query* row is masked entirely, so it attends uniformly, ``(sum_real v_j + P v_pad) / L``,
  the same for every padding column; LayerNorms, the FFN and the residuals act column-wise;
* a real query attends to the ``P`` equal keys with ``P exp(q k_pad) = exp(q k_pad + log P)``.

The padded rows *do* matter: their outputs are the next block's keys and values at the padding
columns, which the real columns read (the spec's "padding keys" check: 95 % of the output moves when
``E[0]`` is redrawn); only in the last block, computed at column ``L-1`` alone, are they unused.
So the ``L``-column forward equals one over the ``R`` real columns plus one *pad slot* with the
attention bias ``log P`` (:func:`collapsed_padding_bias`), where a masked query row's logits are the
bias alone (uniform over the ``L`` original columns: weight ``1/L`` per item, ``P/L`` for the slot).
Columns left of the slot in a wider batch are dead (bias ``-1e9``). A row needs
``min(R + 1, L)`` columns (:func:`collapsed_width`); batches are built from rows of similar need
(``diffrec_jax.training.sequences.eval_plan``). Tested to float tolerance against the full form with lambda at its mean
(``lambda_std = 0``), through the 32-step chain, on every length 1..50 and on truncated histories.
With the reference's per-position draws it is not exact: the slot uses the draw of column
``L-R-1`` (the padding next to the items) for all pads, the real columns keep their own; how far
the metrics move is measured against the spread of repeated faithful evaluations
(``experiments/diffurec_collapsed.py``, ``results/diffurec_collapsed/``). In training
(the variant) the pads additionally differ by dropout (embedding 0.3, attention, residual, block
output): there the slot draws one dropout mask for all pads, and attention dropout drops the pads'
summed weight at once; the variant is therefore a different (if close) stochastic model, not the
reference, and its batches are length-bucketed (``train.length_buckets``), so their composition
differs from the reference's uniform shuffles too.

Reference quirks and the switches (faithful default first):

1. Padding is masked on *query rows* (padded queries attend uniformly, real queries attend to the
   padding keys): ``model.mask_mode = "query"``; ``"key"`` is the usual key-padding mask.
2. The padding row is ranked and is part of the softmax: ``eval.score_padding = True``.
3. Metrics are means of per-batch means over batches of 512 (``eval.protocol = "reference"`` with
   ``eval.batch_mean_of = 512``); ``"exact"`` is the per-user mean.
4. The position table exists but is unused: ``model.pos_emb = False`` (True adds it, init N(0, 1)).
5. Unused layers (105,216 parameters) are left out: 2,474,368 parameters on Beauty.
6. Model selection: validation every 20 epochs, "improved" if *any* validation metric improves
   (``eval.select_rule = "any"``), patience 5 evaluations, test once at the end on the kept model
   (``eval.test_at_end``); ``StepLR(100 epochs, 0.1)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffrec_jax import diffusion as dif
from diffrec_jax import samplers, schedules
from diffrec_jax.models.mlp import timestep_embedding
from diffrec_jax.models.seq import TransformerEncoder, fold, is_key_batch, linear


def trunc_lin_betas(num_steps: int) -> np.ndarray:
    """DiffuRec's ``trunc_lin`` betas: ``linspace((1000/T) 1e-4 + 0.01, (1000/T) 0.02 + 0.01, T)``.

    If the end exceeds 1, it falls back to ``(1000/T) 0.001 + 0.01`` (as the reference).
    """
    scale = 1000.0 / num_steps
    start = scale * 1e-4 + 0.01
    end = scale * 0.02 + 0.01
    if end > 1:
        end = scale * 0.001 + 0.01
    return np.linspace(start, end, num_steps, dtype=np.float64)


def diffurec_schedule(kind: str, num_steps: int) -> schedules.Schedule:
    """``trunc_lin`` (DiffuRec's default), or a core schedule by name (``linear``, ``cosine``, ...)."""
    if kind == "trunc_lin":
        return schedules.from_betas(trunc_lin_betas(num_steps))
    return schedules.make_schedule(kind, num_steps)


def fixed_large_variance(s: schedules.Schedule) -> schedules.Schedule:
    """The schedule with the reverse variance set to ``beta_t`` (``t >= 1``; posterior variance at
    ``t = 1`` for ``t = 0``, where no noise is added): DiffuRec's "fixed large" choice."""
    log_var = jnp.log(jnp.concatenate([s.posterior_variance[1:2], s.betas[1:]]))
    return s._replace(posterior_log_variance_clipped=log_var)


class DiffuRecNet(nnx.Module):
    """Item table, time MLP and the Transformer Approximator."""

    def __init__(self, num_embeddings: int, max_len: int, mcfg, rngs: nnx.Rngs):
        H = int(mcfg.hidden)
        self.H = H
        self.item_emb = nnx.Param(jax.random.normal(rngs.params(), (num_embeddings, H)))
        self.time1 = linear(H, 4 * H, rngs)
        self.time2 = linear(4 * H, H, rngs)
        self.encoder = TransformerEncoder(
            H, max_len, num_blocks=int(mcfg.num_blocks), num_heads=int(mcfg.num_heads),
            style="prenorm", causal=False, mask_mode=mcfg.get("mask_mode", "query"),
            pos_emb=bool(mcfg.get("pos_emb", False)), ffn_dim=4 * H, act="gelu_tanh",
            dropout_rate=float(mcfg.dropout), emb_dropout=float(mcfg.get("emb_dropout", 0.3)),
            input_ln=True, zero_pad_inputs=False, ln_eps=1e-12, rngs=rngs,
        )

    def history(self, seq_BxL, key=None):
        """``S = LN(Drop(E[seq]))`` ``[B, L, H]`` and the padding mask ``[B, L]``."""
        mask = seq_BxL > 0
        return self.encoder.embed(self.item_emb[...][seq_BxL], mask, key), mask

    def time_emb(self, t_B, T: int):
        """``e_t`` from the rescaled step ``1000 t / T``: ``[B, H]``."""
        s = timestep_embedding(t_B.astype(jnp.float32) * (1000.0 / T), self.H)
        return self.time2(jax.nn.silu(self.time1(s)))

    def approximator(self, S_BxLxH, mask_BxL, x_t_BxH, t_B, T, lam_mean, lam_std, lam_key, key=None,
                     full_len: int | None = None, key_bias_BxL=None):
        """``x0_hat = f(S, x_t, t)``: ``[B, H]`` at column ``L-1``.

        ``lam_key`` (one key or per-example keys) draws ``lambda ~ N(mean, std)`` ``[B, L, H]``;
        with ``full_len`` it is drawn for ``full_len`` columns and the last ``L`` are used, so a
        history cut to its last ``L`` columns sees the same values as the full one.
        ``key_bias_BxL``: the collapsed-padding attention bias (:func:`collapsed_padding_bias`).
        """
        z = x_t_BxH + self.time_emb(t_B, T)
        shape = S_BxLxH.shape
        lam_shape = (full_len or shape[1], shape[2])
        if is_key_batch(lam_key):
            noise = jax.vmap(lambda k: jax.random.normal(k, lam_shape))(lam_key)
        else:
            noise = jax.random.normal(lam_key, (shape[0],) + lam_shape)
        lam = lam_mean + lam_std * noise[:, lam_shape[0] - shape[1]:]
        h = S_BxLxH + lam * z[:, None, :]
        last = jnp.full((shape[0],), shape[1] - 1, jnp.int32)
        return self.encoder.encode(h, mask_BxL, key, last, key_bias_BxL)


def collapsed_padding_bias(mask_BxW: jnp.ndarray, full_len: int) -> jnp.ndarray:
    """Attention bias ``[B, W]`` that makes a ``W``-column history stand for its ``full_len``-column one.

    Row ``b`` holds ``R = sum(mask[b])`` real items in its last ``R`` columns (left padding). With
    ``R < W`` the column ``W-1-R`` is the *pad slot*: it stands for the ``P = full_len - R`` padding
    columns of the full history and gets bias ``log P``; real columns get 0; the columns left of the
    slot are *dead* (bias ``-1e9``: weight exactly 0 as keys; as queries they are masked and never
    read). With ``R = W`` there is no slot and no bias (needs ``W = full_len``, or ``R > full_len``
    items were kept, which the loaders never do). The caller must give ``W >= min(R + 1, full_len)``.
    """
    W = mask_BxW.shape[1]
    R = jnp.sum(mask_BxW, axis=1).astype(jnp.int32)
    pos = jnp.arange(W)[None, :]
    pads = (full_len - R).astype(jnp.float32)[:, None]
    slot = pos == (W - 1 - R)[:, None]
    return jnp.where(mask_BxW, 0.0, jnp.where(slot, jnp.log(jnp.maximum(pads, 1.0)), -1e9))


def collapsed_width(lengths_N: np.ndarray, full_len: int) -> np.ndarray:
    """Columns a history of ``lengths_N`` items needs in the collapsed form: ``min(len + 1, full_len)``
    (its items, kept to the last ``full_len``, plus one pad slot when it is shorter than that)."""
    return np.minimum(np.asarray(lengths_N) + 1, full_len)


class DiffuRec:
    """DiffuRec in the sequential harness (see the module docstring for the contract and quirks)."""

    name = "diffurec"

    def __init__(self, config, data):
        if data.pad_side != "left" or data.pad_id != 0:
            raise ValueError(
                f"DiffuRec expects left-padded histories with pad id 0 (load_diffurec_npz or a 'loo' "
                f"synthetic set); {data.name!r} is {data.pad_side}-padded with pad {data.pad_id}"
            )
        self.mcfg = config.model
        self.dcfg = config.diffusion
        self.scfg = config.sampling
        self.V = int(data.num_embeddings)
        self.L = int(data.max_len)
        self.num_steps = int(self.dcfg.steps)
        self.schedule = diffurec_schedule(self.dcfg.schedule, self.num_steps)
        self.lam_mean = float(self.mcfg.get("lambda_mean", 0.001))
        self.lam_std = float(self.mcfg.get("lambda_std", 0.001))
        self.mode = self.scfg.get("mode", "reverse")
        # With the key-padding mask and no positions, padding columns never reach the output:
        # histories may be cut to any width >= their length (length bucketing).
        self.length_invariant = self.mcfg.get("mask_mode", "query") == "key" and not self.mcfg.get("pos_emb", False)
        # collapsed padding (query mask): evaluation and, as a named variant, training
        self.collapse_eval = bool(config.eval.get("collapse_padding", False))
        self.collapse_train = bool(config.train.get("collapse_padding", False))
        self.graphdef = None

    def needed_width(self, lengths_N: np.ndarray, *, train: bool) -> np.ndarray | None:
        """History columns row ``n`` needs for an exact (or, in training, the variant's) forward:
        its length (key mask), ``min(len + 1, L)`` (collapsed padding), or None when every row needs
        all ``L`` columns (the faithful query mask)."""
        lengths_N = np.minimum(np.asarray(lengths_N), self.L)
        if self.length_invariant:
            return lengths_N
        if self.collapse_train if train else self.collapse_eval:
            return collapsed_width(lengths_N, self.L)
        return None

    @staticmethod
    def validate_config(config: Any) -> None:
        m = config.model
        if m.get("mask_mode", "query") not in ("query", "key"):
            raise ValueError(f"config.model.mask_mode must be 'query' or 'key', got {m.mask_mode!r}")
        if config.sampling.get("mode", "reverse") not in ("reverse", "one_step"):
            raise ValueError(f"config.sampling.mode must be 'reverse' or 'one_step', got {config.sampling.mode!r}")
        if int(m.hidden) % int(m.num_heads):
            raise ValueError(f"config.model.hidden={m.hidden} must be divisible by num_heads={m.num_heads}")
        if int(config.diffusion.steps) < 2:
            raise ValueError(f"config.diffusion.steps must be >= 2, got {config.diffusion.steps}")
        for f in ("dropout", "emb_dropout"):
            if not 0.0 <= m.get(f, 0.0) < 1.0:
                raise ValueError(f"config.model.{f} must be in [0, 1), got {m[f]}")
        for field in ("eval", "train"):
            if not config[field].get("collapse_padding", False):
                continue
            if m.get("mask_mode", "query") != "query":
                raise ValueError(
                    f"config.{field}.collapse_padding needs model.mask_mode='query' (with the key mask "
                    "padding is already ignored: use config.train.length_buckets)")
            if m.get("pos_emb", False):
                raise ValueError(
                    f"config.{field}.collapse_padding needs model.pos_emb=False (positions make the "
                    "padding columns differ)")

    def init(self, key):
        net = DiffuRecNet(self.V, self.L, self.mcfg, nnx.Rngs(params=key))
        self.graphdef, params = nnx.split(net)
        return self.graphdef, params, {}

    def net(self, params) -> DiffuRecNet:
        return nnx.merge(self.graphdef, params)

    def loss(self, params, model_state, batch, mask_B, key):
        """Cross-entropy of ``f(S, x_t, t) E^T`` against the target (mean over valid rows)."""
        net = self.net(params)
        k_emb, k_t, k_eps, k_lam, k_drop = jax.random.split(key, 5)
        E = net.item_emb[...]
        tgt = batch["target"]
        S, mask = net.history(batch["seq"], k_emb)
        B = tgt.shape[0]
        t_B = jax.random.randint(k_t, (B,), 0, self.num_steps)
        x0 = E[tgt]
        x_t = dif.q_sample(self.schedule, x0, t_B, jax.random.normal(k_eps, x0.shape))
        bias = collapsed_padding_bias(mask, self.L) if self.collapse_train else None
        x0_hat = net.approximator(S, mask, x_t, t_B, self.num_steps, self.lam_mean, self.lam_std, k_lam, k_drop,
                                  key_bias_BxL=bias)
        logits = x0_hat @ E.T
        loss_B = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tgt[:, None], 1)[:, 0]
        m = mask_B.astype(jnp.float32)
        return jnp.sum(loss_B * m) / jnp.maximum(m.sum(), 1.0), (model_state, {})

    def generate(self, params, batch, keys_B, *, mode: str | None = None):
        """The representation that is scored: ``[B, H]`` (reverse process or one step).

        Row ``b`` uses only ``keys_B[b]``: ``x_T`` from ``fold_in(k_b, 1)``, the reverse noise from
        ``fold_in(k_b, 2)`` and ``lambda`` at step ``t`` from ``fold_in(fold_in(k_b, 3), t)``.
        """
        net = self.net(params)
        S, mask = net.history(batch["seq"], None)
        B, H = S.shape[0], S.shape[2]
        lam_keys = fold(keys_B, 3)
        mode = self.mode if mode is None else mode
        # collapsed padding: the batch may be cut to any width >= min(len + 1, L) (collapsed_width)
        bias = collapsed_padding_bias(mask, self.L) if self.collapse_eval else None
        if mode == "one_step":
            t0 = jnp.zeros((B,), jnp.int32)
            return net.approximator(S, mask, jnp.zeros((B, H)), t0, self.num_steps, self.lam_mean,
                                    self.lam_std, fold(lam_keys, 0), full_len=self.L, key_bias_BxL=bias)

        def denoise_fn(x, t_B, cond):
            S_, m_, lk, b_ = cond
            k_t = jax.vmap(jax.random.fold_in)(lk, t_B)
            return net.approximator(S_, m_, x, t_B, self.num_steps, self.lam_mean, self.lam_std, k_t,
                                    full_len=self.L, key_bias_BxL=b_)

        x_T = samplers.normal_per_example(fold(keys_B, 1), 0, (B, H))
        return samplers.ancestral_sample(
            denoise_fn, fixed_large_variance(self.schedule), x_T, fold(keys_B, 2),
            cond=(S, mask, lam_keys, bias), mean_type="x0",
        )

    def score(self, params, model_state, batch, keys_B):
        """``x E^T`` over all ``N + 1`` rows."""
        x = self.generate(params, batch, keys_B)
        return x @ self.net(params).item_emb[...].T


def measure_reverse_effect(model: DiffuRec, params, split, *, rows: int = 1024, batch_size: int = 256,
                           seed: int = 0, ks=(10,), widths=(4, 8, 16, 32)) -> dict:
    """How much the 32 reverse steps change the output and the ranking (spec, "Measured here").

    Compares, on ``rows`` examples of ``split`` (a :class:`SeqSplit`; a seeded random subset):
    two reverse runs with different keys, and the reverse output against the one-step output
    (``x_t = 0``, ``t = 0``). For a length-invariant model (key mask), rows are sorted by length
    and each batch is cut to the smallest of ``widths`` (or ``L``) that holds it.

    Returns:
      relative L2 differences (mean over rows of ``|a - b| / |a|``), top-K overlaps (fraction of
      shared items in the two top-K lists), and HR@K/NDCG@K of each variant on those rows.
    """
    n = min(rows, len(split))
    pick = np.sort(np.random.default_rng(seed).choice(len(split), n, replace=False))
    if model.length_invariant:
        pick = pick[np.argsort(split.lengths[pick], kind="stable")]
    kmax = max(ks)
    all_w = tuple(sorted({w for w in widths if w < model.L} | {model.L}))

    @functools.partial(jax.jit, static_argnums=3)
    def run(seq, tgt, idx, width):
        batch = {"seq": seq[:, -width:], "len": jnp.zeros(seq.shape[0], jnp.int32), "target": tgt}
        k1 = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(idx)
        k2 = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed + 1), i))(idx)
        a = model.generate(params, batch, k1, mode="reverse")
        b = model.generate(params, batch, k2, mode="reverse")
        c = model.generate(params, batch, k1, mode="one_step")
        E = model.net(params).item_emb[...]
        tops = [jax.lax.top_k(x @ E.T, kmax)[1] for x in (a, b, c)]
        return a, b, c, tops

    acc: dict[str, list] = {}
    for s0 in range(0, n, batch_size):
        rows_b = pick[s0 : s0 + batch_size]
        m = rows_b.size
        rows_p = np.pad(rows_b, (0, batch_size - m), mode="edge")  # one shape per width
        width = model.L
        if model.length_invariant:
            width = next(w for w in all_w if w >= int(split.lengths[rows_p].max()))
        seq, tgt = jnp.asarray(split.seq[rows_p]), jnp.asarray(split.targets[rows_p])
        a, b, c, tops = run(seq, tgt, jnp.asarray(rows_p), width)
        a, b, c, tops, tgt = a[:m], b[:m], c[:m], [t[:m] for t in tops], tgt[:m]
        rel = lambda x, y: jnp.linalg.norm(x - y, axis=-1) / jnp.linalg.norm(x, axis=-1)  # noqa: E731
        acc.setdefault("rel_l2_reverse_vs_reverse", []).append(rel(a, b))
        acc.setdefault("rel_l2_reverse_vs_one_step", []).append(rel(a, c))
        for K in ks:
            ov = lambda p, q: jnp.mean(  # noqa: E731
                jnp.any(p[:, :K, None] == q[:, None, :K], axis=2).astype(jnp.float32), axis=1)
            acc.setdefault(f"top{K}_overlap_reverse_vs_reverse", []).append(ov(tops[0], tops[1]))
            acc.setdefault(f"top{K}_overlap_reverse_vs_one_step", []).append(ov(tops[0], tops[2]))
            for name, tp in zip(("reverse", "reverse2", "one_step"), tops):
                hit = tp[:, :K] == tgt[:, None]
                rank = jnp.argmax(hit, axis=1)
                acc.setdefault(f"hr@{K}_{name}", []).append(jnp.any(hit, 1).astype(jnp.float32))
                acc.setdefault(f"ndcg@{K}_{name}", []).append(
                    jnp.where(jnp.any(hit, 1), 1.0 / jnp.log2(rank + 2.0), 0.0))
    out = {"rows": n}
    for k, v in acc.items():
        out[k] = float(np.mean(np.concatenate(jax.device_get(v))))
    return out
