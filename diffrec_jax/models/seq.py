"""Transformer sequence encoder (Flax NNX) shared by SASRec, DreamRec and DiffuRec, and SASRec.

Sequence-model contract (used by :mod:`diffrec_jax.training.sequences`). A model is a
class ``Model(config, data)`` built from a :class:`~diffrec_jax.data.sequences.SequenceData`:

* ``init(key) -> (graphdef, params, model_state)``;
* ``loss(params, model_state, batch, mask_B, key) -> (loss, (model_state, aux))`` where ``batch``
  is ``{"seq": int32[B, L], "len": int32[B], "target": int32[B]}`` and ``mask_B`` is False on
  padding rows of a padded batch;
* ``score(params, model_state, batch, keys_B) -> scores_BxV`` over all ``V = n_items + 1`` rows of
  the item table (the padding row included; the trainer may mask it), with one PRNG key per example
  so that a row's score does not depend on the batch it is in;
* optional static ``validate_config(config)``.

The encoder (:class:`TransformerEncoder`) covers the two block types the specs need:

* ``style="sasrec"`` (DreamRec's guidance encoder and its SASRec baseline; dreamrec.md section 3):
  ``Q_in = LN1(X)``, queries from ``Q_in``, keys/values from the un-normalised ``X``, no output
  projection, ``A = softmax(Q K^T / sqrt(d_h) + masks) V + Q_in``; ``F = LN_ff(Drop(W2 ReLU(W1
  LN2(A))) + LN2(A))``; ``X <- F * m``; a final ``LN`` after the last block. The reference also
  multiplies each attention row by ``1[sum(Q_in row) != 0]`` (a query mask that only works while
  ``LN1``'s bias is 0); reproduced.
* ``style="prenorm"`` (DiffuRec's ``Transformer_rep``; diffurec.md section 2.4e):
  ``h <- h + Drop(MHA(LN(h)))``, ``h <- h + Drop(FFN(LN(h)))``, ``h <- Drop(h)`` with an output
  projection and a GELU FFN; then a final ``Drop`` and ``LN``.

Options: learned positional embedding on/off, causal or bidirectional attention, and the padding
mask applied to keys (``mask_mode="key"``, the usual key-padding mask) or, as DiffuRec's reference
does, to query rows (``mask_mode="query"``: a padded query attends uniformly; real queries attend to
padded keys too).

``key_bias_BxL`` (optional, default None: no change) adds a per-key-column term to the attention
logits of every block; DiffuRec's collapsed padding uses it to stand one column for many.

``query_idx_B`` computes the last block only at one position per row (``[B]``); keys and values
still use every position, so the output equals the full computation at that position. DreamRec and
SASRec need one position per row (the last item), DiffuRec the last column: this saves most of
the last block's work.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from diffrec_jax.models.mlp import activation

NEG_INF = -(2.0**32) + 1.0  # the masking constant of the SASRec-style reference


# ----------------------------------------------------------------------------------------------
# Helpers: PyTorch-like initialisers, LayerNorm, dropout with per-example keys
# ----------------------------------------------------------------------------------------------


def torch_uniform(fan_in: int):
    """PyTorch's default ``nn.Linear``/``nn.Conv1d`` init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(n_in: int, n_out: int, rngs: nnx.Rngs, *, kernel: str = "torch") -> nnx.Linear:
    """``nnx.Linear`` with PyTorch-default init (``kernel="xavier"``: Xavier-normal weights)."""
    kinit = (
        nnx.initializers.variance_scaling(1.0, "fan_avg", "normal")
        if kernel == "xavier"
        else torch_uniform(n_in)
    )
    return nnx.Linear(n_in, n_out, kernel_init=kinit, bias_init=torch_uniform(n_in), rngs=rngs)


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm with gain 1 and bias 0, ``(x - mean) / sqrt(var + eps)`` (two-pass variance)."""
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


def is_key_batch(key: jax.Array) -> bool:
    """Whether ``key`` is a batch of PRNG keys (typed ``[B]`` or raw ``uint32[B, 2]``)."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return key.ndim == (1 if typed else 2)


def fold(key: jax.Array | None, i: int) -> jax.Array | None:
    """``fold_in(key, i)`` for one key or a batch of keys (None stays None)."""
    if key is None:
        return None
    if is_key_batch(key):
        return jax.vmap(lambda k: jax.random.fold_in(k, i))(key)
    return jax.random.fold_in(key, i)


def dropout(x: jnp.ndarray, rate: float, key: jax.Array | None) -> jnp.ndarray:
    """Inverted dropout ``x m / (1 - rate)``, ``m ~ Bernoulli(1 - rate)``; identity when ``key`` is None or ``rate == 0``.

    ``key`` may be one key or one key per example (leading axis of ``x``); with per-example keys
    the mask of row ``b`` depends only on ``key[b]``.
    """
    if key is None or rate == 0.0:
        return x
    # 16 random bits per element (half the hashing of a float uniform): keep <=> bits < thr,
    # P(keep) = round(65536 (1 - rate)) / 65536, within 8e-6 of 1 - rate.
    thr = jnp.uint16(min(round(65536 * (1.0 - rate)), 65535))

    def draw(k, shape):
        return jax.random.bits(k, shape, jnp.uint16) < thr

    keep = jax.vmap(lambda k: draw(k, x.shape[1:]))(key) if is_key_batch(key) else draw(key, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def last_index(len_B: jnp.ndarray, max_len: int, pad_side: str) -> jnp.ndarray:
    """Column of the most recent item: ``L-1`` (left padding) or ``max(len-1, 0)`` (right padding).

    For an empty right-padded history this is column 0 (a padding column), as DreamRec's
    ``len_seq - 1`` with ``len_seq = 1``.
    """
    if pad_side == "left":
        return jnp.full(len_B.shape, max_len - 1, jnp.int32)
    return jnp.maximum(len_B - 1, 0).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------


def _gather_rows(x_BxLxD: jnp.ndarray, idx_B: jnp.ndarray) -> jnp.ndarray:
    return jnp.take_along_axis(x_BxLxD, idx_B[:, None, None], axis=1)  # [B, 1, D]


def _fused_kv(k_lin: nnx.Linear, v_lin: nnx.Linear, x_BxLxD: jnp.ndarray):
    """``(x W_k + b_k, x W_v + b_v)`` as one product with the concatenated kernels."""
    W = jnp.concatenate([k_lin.kernel[...], v_lin.kernel[...]], axis=1)
    b = jnp.concatenate([k_lin.bias[...], v_lin.bias[...]])
    kv = x_BxLxD @ W + b
    D = k_lin.kernel.shape[1]
    return kv[..., :D], kv[..., D:]


class _Attention(nnx.Module):
    """Multi-head dot-product attention core (projections live in the blocks)."""

    def __init__(self, num_heads: int, causal: bool, mask_mode: str, neg: float, rate: float):
        self.num_heads = num_heads
        self.causal = causal
        self.mask_mode = mask_mode
        self.neg = neg
        self.rate = rate

    def __call__(self, q_BxQxD, k_BxLxD, v_BxLxD, mask_BxL, qpos_BxQ, qmask_BxQ, key, key_bias_BxL=None):
        """``softmax(q k^T / sqrt(d_h) + masks) v`` with heads merged back; returns ``[B, Q, D]``.

        ``qpos_BxQ`` are the query columns (for the causal mask), ``qmask_BxQ`` whether each query
        column holds a real item (for ``mask_mode="query"``).

        ``key_bias_BxL`` (optional) is added to every logit of key column ``j``; with the query mask,
        a masked query row's logits are the bias alone (instead of one constant), so the row
        attends with weights ``softmax(bias)``. A column standing for ``c`` identical columns has
        bias ``log c`` (DiffuRec's collapsed padding, see :mod:`diffrec_jax.models.diffurec`).
        """
        B, Q, D = q_BxQxD.shape
        L = k_BxLxD.shape[1]
        H = self.num_heads
        dh = D // H
        q = q_BxQxD.reshape(B, Q, H, dh)
        k = k_BxLxD.reshape(B, L, H, dh)
        v = v_BxLxD.reshape(B, L, H, dh)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
        if self.mask_mode == "key":
            allowed = jnp.broadcast_to(mask_BxL[:, None, None, :], logits.shape)
        else:  # DiffuRec: padded query rows masked entirely (-> uniform), padded keys visible
            allowed = jnp.broadcast_to(qmask_BxQ[:, None, :, None], logits.shape)
        if self.causal:
            kpos = jnp.arange(L)
            allowed = allowed & (kpos[None, None, None, :] <= qpos_BxQ[:, None, :, None])
        if key_bias_BxL is None:
            logits = jnp.where(allowed, logits, self.neg)
        elif self.mask_mode == "query":
            logits = jnp.where(allowed, logits, 0.0) + key_bias_BxL[:, None, None, :]
        else:
            logits = jnp.where(allowed, logits + key_bias_BxL[:, None, None, :], self.neg)
        w = jax.nn.softmax(logits, axis=-1)
        return w, v

    def combine(self, w, v, key):
        w = dropout(w, self.rate, key)
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v)
        B, Q, H, dh = out.shape
        return out.reshape(B, Q, H * dh)


class SASRecBlock(nnx.Module):
    """SASRec-style block of DreamRec's reference (see the module docstring)."""

    def __init__(self, dim, num_heads, causal, mask_mode, dropout_rate, ln_eps, rngs):
        self.ln1 = layer_norm(dim, ln_eps, rngs)
        self.q = linear(dim, dim, rngs)
        self.k = linear(dim, dim, rngs)
        self.v = linear(dim, dim, rngs)
        self.attn = _Attention(num_heads, causal, mask_mode, NEG_INF, dropout_rate)
        self.ln2 = layer_norm(dim, ln_eps, rngs)
        self.w1 = linear(dim, dim, rngs)
        self.w2 = linear(dim, dim, rngs)
        self.ln_ff = layer_norm(dim, ln_eps, rngs)
        self.rate = dropout_rate

    def __call__(self, x_BxLxD, mask_BxL, key, query_idx_B=None, key_bias_BxL=None):
        B, L, _ = x_BxLxD.shape
        if query_idx_B is None:
            xq = x_BxLxD
            qpos = jnp.broadcast_to(jnp.arange(L), (B, L))
        else:
            xq = _gather_rows(x_BxLxD, query_idx_B)
            qpos = query_idx_B[:, None]
        qmask = jnp.take_along_axis(mask_BxL, qpos, axis=1)
        q_in = self.ln1(xq)
        k, v = _fused_kv(self.k, self.v, x_BxLxD)
        w, v = self.attn(self.q(q_in), k, v, mask_BxL, qpos, qmask, key, key_bias_BxL)
        # reference quirk: rows whose normalised query sums to exactly 0 get zero attention
        w = w * (jnp.sum(q_in, -1) != 0)[:, None, :, None].astype(w.dtype)
        a = self.attn.combine(w, v, fold(key, 1)) + q_in
        a2 = self.ln2(a)
        f = self.w2(jax.nn.relu(self.w1(a2)))
        f = self.ln_ff(dropout(f, self.rate, fold(key, 2)) + a2)
        return f * qmask[..., None].astype(f.dtype)


class PreNormBlock(nnx.Module):
    """Pre-LN block of DiffuRec's reference (see the module docstring)."""

    def __init__(self, dim, num_heads, ffn_dim, causal, mask_mode, dropout_rate, ln_eps, act, rngs):
        self.ln_attn = layer_norm(dim, ln_eps, rngs)
        self.q = linear(dim, dim, rngs)
        self.k = linear(dim, dim, rngs)
        self.v = linear(dim, dim, rngs)
        self.o = linear(dim, dim, rngs, kernel="xavier")
        self.attn = _Attention(num_heads, causal, mask_mode, -1e9, dropout_rate)
        self.ln_ffn = layer_norm(dim, ln_eps, rngs)
        self.w1 = linear(dim, ffn_dim, rngs, kernel="xavier")
        self.w2 = linear(ffn_dim, dim, rngs, kernel="xavier")
        self.rate = dropout_rate
        self.act = act

    def __call__(self, h_BxLxD, mask_BxL, key, query_idx_B=None, key_bias_BxL=None):
        B, L, _ = h_BxLxD.shape
        if query_idx_B is None:
            hq = h_BxLxD
            qpos = jnp.broadcast_to(jnp.arange(L), (B, L))
        else:
            hq = _gather_rows(h_BxLxD, query_idx_B)
            qpos = query_idx_B[:, None]
        qmask = jnp.take_along_axis(mask_BxL, qpos, axis=1)
        hn = self.ln_attn(h_BxLxD)
        hqn = hn if query_idx_B is None else _gather_rows(hn, query_idx_B)
        k, v = _fused_kv(self.k, self.v, hn)
        w, v = self.attn(self.q(hqn), k, v, mask_BxL, qpos, qmask, key, key_bias_BxL)
        att = self.o(self.attn.combine(w, v, fold(key, 1)))
        hq = hq + dropout(att, self.rate, fold(key, 2))
        f = self.w2(dropout(activation(self.act)(self.w1(self.ln_ffn(hq))), self.rate, fold(key, 3)))
        hq = hq + dropout(f, self.rate, fold(key, 4))
        return dropout(hq, self.rate, fold(key, 5))


# ----------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------


class TransformerEncoder(nnx.Module):
    """Stack of Transformer blocks over embedded histories, with input and output processing.

    ``embed``: ``X = x (+ P if pos_emb)``, ``Drop(emb_dropout)``, optional input LayerNorm, optional
    zeroing of padded positions. ``encode``: the blocks, then (``prenorm``) ``Drop`` and the final
    LayerNorm, or (``sasrec``) the final LayerNorm. ``__call__`` = ``encode(embed(x))``.

    Args:
      dim: model width ``D``.
      max_len: ``L`` (size of the positional table).
      num_blocks, num_heads: depth and heads (``D % heads == 0``).
      style: ``"sasrec"`` or ``"prenorm"``.
      causal: mask keys after the query.
      mask_mode: ``"key"`` or ``"query"`` (DiffuRec's reference).
      pos_emb: add a learned ``[L, D]`` table (init N(0, 1) as ``nn.Embedding``).
      ffn_dim: hidden width of the FFN (``prenorm``; ``sasrec`` uses ``D``).
      act: FFN activation of ``prenorm`` (``relu``, ``gelu``, ``gelu_tanh``).
      dropout_rate: dropout in the blocks.
      emb_dropout: dropout on the input embeddings.
      input_ln: LayerNorm after the input dropout (DiffuRec).
      zero_pad_inputs: multiply padded positions by 0 after dropout (DreamRec/SASRec).
      ln_eps: LayerNorm epsilon.
      rngs: parameter RNGs.
    """

    def __init__(
        self,
        dim: int,
        max_len: int,
        *,
        num_blocks: int = 1,
        num_heads: int = 1,
        style: str = "sasrec",
        causal: bool = True,
        mask_mode: str = "key",
        pos_emb: bool = True,
        ffn_dim: int | None = None,
        act: str = "gelu_tanh",
        dropout_rate: float = 0.1,
        emb_dropout: float = 0.1,
        input_ln: bool = False,
        zero_pad_inputs: bool = True,
        ln_eps: float = 1e-5,
        rngs: nnx.Rngs,
    ):
        if style not in ("sasrec", "prenorm"):
            raise ValueError(f"style must be 'sasrec' or 'prenorm', got {style!r}")
        if mask_mode not in ("key", "query"):
            raise ValueError(f"mask_mode must be 'key' or 'query', got {mask_mode!r}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        activation(act)  # refuses an unknown name, listing the known ones
        self.dim, self.max_len, self.style = dim, max_len, style
        self.dropout_rate, self.emb_dropout = float(dropout_rate), float(emb_dropout)
        self.zero_pad_inputs = zero_pad_inputs
        self.pos = (
            nnx.Param(jax.random.normal(rngs.params(), (max_len, dim), jnp.float32)) if pos_emb else None
        )
        self.input_ln = layer_norm(dim, ln_eps, rngs) if input_ln else None
        if style == "sasrec":
            self.blocks = nnx.List(
                [SASRecBlock(dim, num_heads, causal, mask_mode, dropout_rate, ln_eps, rngs)
                 for _ in range(num_blocks)]
            )
        else:
            self.blocks = nnx.List(
                [PreNormBlock(dim, num_heads, ffn_dim or 4 * dim, causal, mask_mode, dropout_rate,
                              ln_eps, act, rngs)
                 for _ in range(num_blocks)]
            )
        self.final_ln = layer_norm(dim, ln_eps, rngs)

    def embed(self, x_BxLxD: jnp.ndarray, mask_BxL: jnp.ndarray, key: jax.Array | None) -> jnp.ndarray:
        """Input processing: positions, dropout, optional LayerNorm and zeroed padding; ``[B, L, D]``."""
        if self.pos is not None:
            x_BxLxD = x_BxLxD + self.pos[...][None]
        x_BxLxD = dropout(x_BxLxD, self.emb_dropout, key)
        if self.input_ln is not None:
            x_BxLxD = self.input_ln(x_BxLxD)
        if self.zero_pad_inputs:
            x_BxLxD = x_BxLxD * mask_BxL[..., None].astype(x_BxLxD.dtype)
        return x_BxLxD

    def encode(
        self,
        h_BxLxD: jnp.ndarray,
        mask_BxL: jnp.ndarray,
        key: jax.Array | None,
        query_idx_B: jnp.ndarray | None = None,
        key_bias_BxL: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """The blocks and the output LayerNorm.

        ``key_bias_BxL``: an additive attention bias per key column in every block (see
        :class:`_Attention`); None (the default) leaves the attention as it was.

        Returns:
          ``[B, L, D]``, or ``[B, D]`` at column ``query_idx_B[b]`` of each row when given.
        """
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            q = query_idx_B if i == n - 1 else None
            h_BxLxD = blk(h_BxLxD, mask_BxL, fold(key, 10 + i), q, key_bias_BxL)
        if self.style == "prenorm":
            h_BxLxD = dropout(h_BxLxD, self.dropout_rate, fold(key, 99))
        h = self.final_ln(h_BxLxD)
        return h[:, 0] if query_idx_B is not None else h

    def __call__(self, x_BxLxD, mask_BxL, key=None, query_idx_B=None):
        return self.encode(self.embed(x_BxLxD, mask_BxL, fold(key, 0)), mask_BxL, fold(key, 1), query_idx_B)


# ----------------------------------------------------------------------------------------------
# SASRec
# ----------------------------------------------------------------------------------------------


class SASRecNet(nnx.Module):
    """Item table ``E [V, D]`` and a causal SASRec-style encoder; ``h = enc(E[seq])[last]``."""

    def __init__(self, num_embeddings: int, max_len: int, mcfg, rngs: nnx.Rngs):
        d = int(mcfg.hidden)
        std = float(mcfg.get("emb_init_std", 1.0 / math.sqrt(d)))
        self.item_emb = nnx.Param(std * jax.random.normal(rngs.params(), (num_embeddings, d)))
        self.encoder = TransformerEncoder(
            d,
            max_len,
            num_blocks=int(mcfg.num_blocks),
            num_heads=int(mcfg.num_heads),
            style="sasrec",
            causal=True,
            mask_mode="key",
            pos_emb=bool(mcfg.get("pos_emb", True)),
            dropout_rate=float(mcfg.dropout),
            emb_dropout=float(mcfg.dropout),
            zero_pad_inputs=True,
            ln_eps=1e-8 if mcfg.get("ln_eps") is None else float(mcfg.ln_eps),
            rngs=rngs,
        )

    def __call__(self, seq_BxL, last_B, mask_BxL, key=None):
        x = self.item_emb[...][seq_BxL]
        return self.encoder(x, mask_BxL, key, last_B)


class SASRec:
    """SASRec (Kang & McAuley 2018) in the sequential harness, as the baseline of both papers.

    One causal SASRec-style encoder (learned positions, key-padding mask), the user state ``h`` is
    its output at the most recent item, scores are ``h E^T`` over the whole item table (tied
    embeddings). Loss (``model.loss``): ``"ce"``, full softmax cross-entropy over the items (the
    padding row excluded), or ``"bce"``, DreamRec's ``SASRec.py`` objective: binary cross-entropy
    of the target against one uniformly drawn negative.
    """

    name = "sasrec"

    def __init__(self, config, data):
        self.mcfg = config.model
        self.V = int(data.num_embeddings)
        self.L = int(data.max_len)
        self.pad_id = int(data.pad_id)
        self.pad_side = data.pad_side
        self.item_lo, self.item_hi = data.item_ids
        self.graphdef = None

    @staticmethod
    def validate_config(config: Any) -> None:
        m = config.model
        if m.get("loss", "ce") not in ("ce", "bce"):
            raise ValueError(f"config.model.loss must be 'ce' or 'bce', got {m.loss!r}")
        if not 0.0 <= m.dropout < 1.0:
            raise ValueError(f"config.model.dropout must be in [0, 1), got {m.dropout}")
        if int(m.hidden) % int(m.num_heads):
            raise ValueError(f"config.model.hidden={m.hidden} must be divisible by num_heads={m.num_heads}")

    def init(self, key):
        net = SASRecNet(self.V, self.L, self.mcfg, nnx.Rngs(params=key))
        self.graphdef, params = nnx.split(net)
        return self.graphdef, params, {}

    def _h(self, params, batch, key):
        net = nnx.merge(self.graphdef, params)
        seq = batch["seq"]
        mask = seq != self.pad_id
        return net, net(seq, last_index(batch["len"], self.L, self.pad_side), mask, key)

    def loss(self, params, model_state, batch, mask_B, key):
        k_drop, k_neg = jax.random.split(key)
        net, h = self._h(params, batch, k_drop)
        E = net.item_emb[...]
        tgt = batch["target"]
        if self.mcfg.get("loss", "ce") == "ce":
            logits = h @ E.T
            logits = logits.at[:, self.pad_id].set(-jnp.inf)
            loss_B = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, tgt[:, None], 1)[:, 0]
        else:
            neg = jax.random.randint(k_neg, tgt.shape, self.item_lo, self.item_hi)
            pos_l = jnp.sum(h * E[tgt], -1)
            neg_l = jnp.sum(h * E[neg], -1)
            loss_B = jax.nn.softplus(-pos_l) + jax.nn.softplus(neg_l)
        m = mask_B.astype(jnp.float32)
        return jnp.sum(loss_B * m) / jnp.maximum(m.sum(), 1.0), (model_state, {})

    def score(self, params, model_state, batch, keys_B):
        net, h = self._h(params, batch, None)
        return h @ net.item_emb[...].T
