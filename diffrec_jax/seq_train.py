"""Training and evaluation loop for sequential (next-item) models: ``train_and_evaluate(config, workdir)``.

Same conventions as :mod:`diffrec_jax.train`:

* Data order is a pure function of ``(seed, epoch)``, PRNG keys of ``(seed, step)``; with the Orbax
  checkpoint written after every evaluation, a resumed run continues exactly as an uninterrupted one.
* Training runs ``train.scan_steps`` optimizer steps per jitted call (one ``lax.scan`` over index
  batches, the train state donated); the examples live on device and are gathered inside the scan.
  ``train.sampling``: ``"permutation"`` (a shuffled pass, last partial batch padded and masked:
  DiffuRec) or ``"independent"`` (``floor(N / B)`` steps, each drawing ``B`` distinct rows
  independently of the other steps: DreamRec's reference).
* Evaluation ranks all ``n_items + 1`` rows of the item table on device, in padded batches, with one
  PRNG key per example (``fold_in(key, row)``), so a row's result does not depend on the batching.
  Per-row HR@K and NDCG@K come back to the host, which averages them as configured:

  - ``eval.protocol="exact"``: the mean over every row;
  - ``eval.protocol="reference"``: the paper's own averaging: DreamRec drops the last
    ``N mod 100`` rows (``eval.drop_remainder_of=100``), DiffuRec averages per-batch means over
    batches of 512 (``eval.batch_mean_of=512``).

  Both are stored (``results["test_exact"]``, ``results["test_reference"]``); ``results["test"]``
  follows ``eval.protocol``. ``eval.score_padding=False`` removes the padding row from the ranking
  (both references rank it).
* Model selection on validation (``eval.select_metric``, or ``eval.select_rule="any"``: any
  reported validation metric improves, as DiffuRec), early stopping after ``train.patience_epochs``
  epochs without improvement; ``eval.test_at_end`` evaluates test once on the best parameters
  (DiffuRec's protocol) instead of at every evaluation.
* Progress bar with loss and throughput, ``metrics.jsonl`` (train loss per epoch, evaluations),
  ``results.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffrec_jax import metrics as M
from diffrec_jax.checkpointing import Checkpointer
from diffrec_jax.data.sequences import (
    SequenceData,
    SeqSplit,
    load_diffurec_npz,
    load_dreamrec_npz,
    make_synthetic_sequences,
)
from diffrec_jax.models.mlp import count_params
from diffrec_jax.train import (MetricWriter, TrainState, _over_budget, _progress, check_train_fields,
                               make_optimizer, padded_batches)

log = logging.getLogger("diffrec_jax")

SEQ_MODELS = {
    "sasrec": "diffrec_jax.models.seq:SASRec",
    "dreamrec": "diffrec_jax.models.dreamrec:DreamRec",
    "diffurec": "diffrec_jax.models.diffurec:DiffuRec",
}
SEQ_METRICS = ("hr", "ndcg")


# ----------------------------------------------------------------------------------------------
# Data, model, optimizer, config checks
# ----------------------------------------------------------------------------------------------


def load_seq_data(dcfg) -> SequenceData:
    """Loads the dataset a sequential ``config.data`` group describes.

    ``source``: ``dreamrec_npz`` (``dir`` holding ``yc.npz``), ``diffurec_npz`` (``dir`` holding
    ``dataset.npz``) or ``synthetic_seq`` (:func:`make_synthetic_sequences` with
    ``config.data.synthetic_seq``).
    """
    src = dcfg.source
    max_len = dcfg.get("max_len")
    on_long = dcfg.get("on_long")
    if src == "dreamrec_npz":
        return load_dreamrec_npz(dcfg.dir, max_len=max_len, on_long=on_long or "error")
    if src == "diffurec_npz":
        return load_diffurec_npz(dcfg.dir, max_len=max_len or 50, on_long=on_long or "truncate")
    if src == "synthetic_seq":
        return make_synthetic_sequences(**dict(dcfg.synthetic_seq), max_len=max_len or 10)
    raise ValueError(
        f"config.data.source: unknown sequential source {src!r}; choose dreamrec_npz, diffurec_npz "
        "or synthetic_seq"
    )


def get_model_class(name: str):
    import importlib

    try:
        module, cls = SEQ_MODELS[name].split(":")
    except KeyError:
        raise ValueError(f"config.model.name: unknown sequential model {name!r}; available: {sorted(SEQ_MODELS)}") from None
    return getattr(importlib.import_module(module), cls)


def get_model(config, data: SequenceData):
    cls = get_model_class(config.model.name)
    if hasattr(cls, "validate_config"):
        cls.validate_config(config)
    return cls(config, data)


def make_seq_optimizer(ocfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """:func:`diffrec_jax.train.make_optimizer`, times an optional step decay of the learning rate.

    ``optim.lr_decay_every_epochs = n`` multiplies the update by ``lr_decay_factor ** (epoch // n)``
    (PyTorch ``StepLR`` stepped once per epoch, as DiffuRec); for Adam/AdamW this equals decaying
    the learning rate.
    """
    tx = make_optimizer(ocfg)
    every = int(ocfg.get("lr_decay_every_epochs", 0) or 0)
    if every > 0:
        gamma = float(ocfg.get("lr_decay_factor", 0.1))
        period = every * steps_per_epoch
        tx = optax.chain(tx, optax.scale_by_schedule(lambda s: gamma ** (s // period)))
    return tx


def validate_config(config, data: SequenceData) -> None:
    """Refuses settings that make no sense before any JAX work, naming the field."""
    t, e = config.train, config.eval
    check_train_fields(t)
    if t.get("sampling", "permutation") not in ("permutation", "independent"):
        raise ValueError(f"config.train.sampling must be 'permutation' or 'independent', got {t.sampling!r}")
    if t.get("sampling") == "independent" and t.batch_size > len(data.train):
        raise ValueError(
            f"config.train.batch_size={t.batch_size} exceeds the {len(data.train)} training rows "
            "(sampling='independent' draws a batch without replacement)"
        )
    if int(t.get("scan_steps", 1)) < 1:
        raise ValueError(f"config.train.scan_steps must be >= 1, got {t.scan_steps}")
    if not e.topk or min(e.topk) < 1 or max(e.topk) > data.num_embeddings:
        raise ValueError(f"config.eval.topk must be K's in [1, {data.num_embeddings}], got {e.topk}")
    name, _, k = e.select_metric.partition("@")
    if name not in SEQ_METRICS or not k.isdigit() or int(k) not in e.topk:
        raise ValueError(
            f"config.eval.select_metric must be hr@K or ndcg@K with K in config.eval.topk {e.topk}, "
            f"got {e.select_metric!r}"
        )
    if e.get("select_rule", "metric") not in ("metric", "any"):
        raise ValueError(f"config.eval.select_rule must be 'metric' or 'any', got {e.select_rule!r}")
    if e.get("protocol", "exact") not in ("exact", "reference"):
        raise ValueError(f"config.eval.protocol must be 'exact' or 'reference', got {e.protocol!r}")
    if e.batch_size < 1:
        raise ValueError(f"config.eval.batch_size must be >= 1, got {e.batch_size}")
    get_model_class(config.model.name)


# ----------------------------------------------------------------------------------------------
# Device data
# ----------------------------------------------------------------------------------------------


def split_arrays(sp: SeqSplit) -> dict:
    """A split on device: ``{"seq": [N, L], "len": [N], "target": [N]}`` int32."""
    return {
        "seq": jnp.asarray(sp.seq),
        "len": jnp.asarray(sp.lengths),
        "target": jnp.asarray(sp.targets),
    }


def _gather(arrays: dict, idx_B: jnp.ndarray, width: int | None = None) -> dict:
    """Rows ``idx_B`` of every array; with ``width``, only the last ``width`` history columns
    (left-padded histories of at most ``width`` items lose nothing but padding)."""
    out = {k: v[idx_B] for k, v in arrays.items()}
    if width is not None:
        out["seq"] = out["seq"][:, -width:]
    return out


def length_buckets(lengths_N: np.ndarray, buckets, max_len: int) -> tuple[np.ndarray, tuple]:
    """Bucket index of each row (the smallest width ``>=`` its length) and the sorted widths."""
    widths = tuple(sorted({int(b) for b in buckets if 0 < int(b) < max_len} | {int(max_len)}))
    return np.searchsorted(np.asarray(widths), lengths_N, side="left"), widths


def needed_widths(model, lengths_N: np.ndarray, *, train: bool) -> np.ndarray | None:
    """History columns each row needs (``model.needed_width``, else its length for a
    ``length_invariant`` model), or None when every row needs all ``L`` columns."""
    f = getattr(model, "needed_width", None)
    if f is not None:
        return f(lengths_N, train=train)
    return np.asarray(lengths_N) if getattr(model, "length_invariant", False) else None


def eval_length_buckets(config) -> tuple:
    """``config.eval.length_buckets`` if set, else ``config.train.length_buckets``."""
    b = config.eval.get("length_buckets") or config.train.get("length_buckets") or ()
    return tuple(int(x) for x in b)


def eval_plan(model, n: int, batch_size: int, *, lengths: np.ndarray | None = None, buckets=(),
              max_len: int | None = None) -> list[tuple[int | None, np.ndarray]]:
    """Groups of rows evaluated together and their history width (None: all ``L`` columns).

    * No buckets, or a model that needs every column: one group of all rows.
    * A length-invariant model: one group per bucket width (the smallest ``>=`` each row's length).
    * Collapsed padding (``model.collapse_eval``): rows sorted by the width they need (stable), cut
      into chunks of ``batch_size``; each chunk uses the smallest bucket width that holds its
      largest need, so only the last chunk is padded and no width is padded per bucket.
    """
    need = None
    if buckets and lengths is not None:
        need = needed_widths(model, np.asarray(lengths[:n]), train=False)
    if need is None:
        return [(None, np.arange(n))]
    widths = np.asarray(length_buckets(need, buckets, max_len)[1])
    if not getattr(model, "collapse_eval", False):
        bucket_N = np.searchsorted(widths, need, side="left")
        groups = [(int(widths[b]), np.flatnonzero(bucket_N == b)) for b in range(len(widths))]
    else:
        order = np.argsort(need, kind="stable")
        groups = []
        for s0 in range(0, n, batch_size):
            rows = order[s0 : s0 + batch_size]
            groups.append((int(widths[np.searchsorted(widths, need[rows].max(), side="left")]), rows))
    return [(None if w == max_len else w, rows) for w, rows in groups if rows.size]


def train_bucket_index(model, data: SequenceData, buckets) -> tuple[np.ndarray, tuple] | None:
    """``length_buckets`` of the training rows' needed widths (None: the model needs all columns)."""
    need = needed_widths(model, data.train.lengths, train=True)
    if need is None or data.pad_side != "left":
        return None
    return length_buckets(need, buckets, data.max_len)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, sampling: str):
    """Index batches of one epoch, a pure function of ``(seed, epoch)``.

    Returns:
      ``(idx_SxB int32, mask_SxB bool)``. ``permutation``: ``ceil(n / B)`` batches of a shuffled
      pass (last one padded, mask False on padding). ``independent``: ``floor(n / B)`` batches, each
      ``B`` distinct rows drawn uniformly and independently of the other batches.
    """
    rng = np.random.default_rng([seed, epoch])
    if sampling == "permutation":
        return padded_batches(rng.permutation(n).astype(np.int32), batch_size)
    steps = max(1, n // batch_size)
    idx = np.stack([rng.choice(n, batch_size, replace=False) for _ in range(steps)]).astype(np.int32)
    return idx, np.ones_like(idx, bool)


def bucketed_epoch_batches(bucket_N: np.ndarray, n_buckets: int, batch_size: int, seed: int, epoch: int):
    """Batches of rows of one length bucket, a pure function of ``(seed, epoch)``.

    Each bucket's rows are shuffled and cut into batches (the last one padded, mask False); the
    batches of all buckets are then shuffled together, so consecutive steps mix lengths.

    Returns:
      list of ``(bucket, idx_B int32, mask_B bool)`` in training order.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    out = []
    for b in range(n_buckets):
        rows = np.flatnonzero(bucket_N == b)
        if rows.size == 0:
            continue
        idx, mask = padded_batches(rng.permutation(rows).astype(np.int32), min(batch_size, rows.size))
        if idx.shape[1] < batch_size:  # one compiled shape per width
            pad = batch_size - idx.shape[1]
            idx = np.pad(idx, ((0, 0), (0, pad)))
            mask = np.pad(mask, ((0, 0), (0, pad)))
        out += [(b, idx[i], mask[i]) for i in range(idx.shape[0])]
    return [out[i] for i in rng.permutation(len(out))]


def make_train_chunk(model, tx, width: int | None = None):
    """Jitted ``(state, arrays, idx_SxB, mask_SxB, valid_S, k_train) -> (state, loss_S)``: a scan of ``S`` steps.

    Step ``s`` uses ``key = fold_in(k_train, state.step)``; steps with ``valid_S[s]`` False leave the
    state untouched (``lax.cond``), so an epoch's last, shorter chunk reuses the same compiled
    program. The state is donated. ``width`` keeps only the last ``width`` history columns
    (length bucketing, see :func:`bucketed_epoch_batches`).
    """

    def step(state, arrays, k_train, idx_B, mask_B):
        key = jax.random.fold_in(k_train, state.step)
        batch = _gather(arrays, idx_B, width)

        def loss_fn(params):
            return model.loss(params, state.model_state, batch, mask_B, key)

        (loss, (model_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, model_state), loss

    def body(carry, inp):
        state, arrays, k_train = carry
        idx_B, mask_B, valid = inp
        state, loss = jax.lax.cond(
            valid,
            lambda s: step(s, arrays, k_train, idx_B, mask_B),
            lambda s: (s, jnp.zeros((), jnp.float32)),
            state,
        )
        return (state, arrays, k_train), loss

    def chunk(state, arrays, idx_SxB, mask_SxB, valid_S, k_train):
        (state, _, _), losses = jax.lax.scan(body, (state, arrays, k_train), (idx_SxB, mask_SxB, valid_S))
        return state, losses

    return jax.jit(chunk, donate_argnums=0)


def run_epoch_chunks(chunk_fn, state, arrays, idx, mask, k_train, S: int, on_chunk=None):
    """Runs one epoch's ``idx.shape[0]`` steps in chunks of ``S`` (the last one padded).

    Returns ``(state, losses)`` with ``losses`` the per-step device arrays (valid steps only).
    """
    n = idx.shape[0]
    losses = []
    for s0 in range(0, n, S):
        k = min(S, n - s0)
        ic = np.zeros((S,) + idx.shape[1:], idx.dtype)
        mc = np.zeros((S,) + mask.shape[1:], bool)
        ic[:k], mc[:k] = idx[s0 : s0 + k], mask[s0 : s0 + k]
        valid = np.arange(S) < k
        state, ls = chunk_fn(state, arrays, ic, mc, valid, k_train)
        losses.append(ls[:k])
        if on_chunk is not None:
            on_chunk(losses, k)
    return state, losses


# Fields that do not change the compiled programs: runs that differ only in these (seeds of a
# multi-seed study, a resumed run with a larger epoch budget) reuse the model and its jitted code.
_RUN_ONLY_FIELDS = ("seed", "train.num_epochs", "train.eval_every_epochs", "train.patience_epochs",
                    "train.max_to_keep")
_PARTS_CACHE: dict = {}


def _compiled_parts(config, data: SequenceData, steps_per_epoch: int):
    """``(model, tx, get_chunk)`` for ``config`` on ``data``, reused across runs in one process;
    ``get_chunk(width)`` is the jitted training chunk for histories cut to ``width`` columns."""
    cfg = json.loads(config.to_json_best_effort())
    for path in _RUN_ONLY_FIELDS:
        node = cfg
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    digest = [data.name, data.n_items, data.pad_id, data.pad_side, data.max_len]
    for s in ("train", "valid", "test"):
        sp = data.split(s)
        digest += [len(sp), hash(sp.seq.tobytes()), hash(sp.targets.tobytes())]
    key = (json.dumps(cfg, sort_keys=True), tuple(digest), steps_per_epoch)
    if key not in _PARTS_CACHE:
        _PARTS_CACHE.clear()
        _EVAL_CACHE.clear()
        model = get_model(config, data)
        tx = make_seq_optimizer(config.optim, steps_per_epoch)
        chunks: dict = {}

        def get_chunk(width=None):
            if width not in chunks:
                chunks[width] = make_train_chunk(model, tx, width)
            return chunks[width]

        _PARTS_CACHE[key] = (model, tx, get_chunk)
    return _PARTS_CACHE[key]


def init_state(model, tx, key) -> TrainState:
    _, params, model_state = model.init(key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def metric_names(ks) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in SEQ_METRICS]


def target_rank(scores_BxV: jnp.ndarray, target_B: jnp.ndarray) -> jnp.ndarray:
    """0-based rank of each row's target in a stable descending sort (ties: lower id first).

    Equals the target's position in :func:`diffrec_jax.metrics.topk_indices`' list when scores are
    distinct (``lax.top_k``'s order among tied scores is implementation-defined on CPU, as is
    ``torch.topk``'s in the references), at ``O(V)`` per row instead of a top-K selection.
    """
    s_t = jnp.take_along_axis(scores_BxV, target_B[:, None], axis=1)
    ids = jnp.arange(scores_BxV.shape[1])[None, :]
    return jnp.sum((scores_BxV > s_t) | ((scores_BxV == s_t) & (ids < target_B[:, None])), axis=1)


def make_eval_step(model, ks, pad_id: int, score_padding: bool, width: int | None = None):
    """Jitted ``(params, model_state, arrays, idx_B, key) -> values_BxM`` per-row HR/NDCG.

    Row ``n`` uses ``fold_in(key, n)``. With one target per row, the ranked list's hit vector is
    one-hot at the target's rank (``#{scores > s_target}`` plus ties with a lower id, i.e. its
    position in :func:`diffrec_jax.metrics.topk_indices`' list), so no top-K selection is needed;
    the metric definitions are the core's (:func:`diffrec_jax.metrics.metric_sums` on one row).
    """
    ks = tuple(int(k) for k in ks)
    names = metric_names(ks)
    kmax = max(ks)

    @jax.jit
    def eval_step(params, model_state, arrays, idx_B, key):
        batch = _gather(arrays, idx_B, width)
        keys_B = jax.vmap(lambda n: jax.random.fold_in(key, n))(idx_B)
        scores = model.score(params, model_state, batch, keys_B)
        if not score_padding:
            scores = scores.at[:, pad_id].set(-jnp.inf)
        rank = target_rank(scores, batch["target"])
        hits = (jnp.arange(kmax)[None, :] == rank[:, None]).astype(jnp.float32)
        per_row = jax.vmap(lambda h: M.metric_sums(h[None], jnp.ones((1,)), ks))(hits)
        return jnp.stack([per_row[n] for n in names], axis=1)

    return eval_step


def average_rows(values_NxM: np.ndarray, names, *, drop_remainder_of: int = 0, batch_mean_of: int = 0) -> dict:
    """Averages per-row metric values; the reference protocols are optional.

    Args:
      values_NxM: per-row metrics, columns ``names``.
      drop_remainder_of: keep only the first ``floor(N / R) R`` rows (DreamRec, ``R = 100``).
      batch_mean_of: unweighted mean of the means of consecutive batches of this size (DiffuRec,
        512; the last, smaller batch gets the weight of a full one).
    """
    v = values_NxM
    if drop_remainder_of:
        v = v[: (len(v) // drop_remainder_of) * drop_remainder_of]
    if batch_mean_of:
        chunks = [v[i : i + batch_mean_of].mean(0) for i in range(0, len(v), batch_mean_of)]
        avg = np.mean(chunks, axis=0)
    else:
        avg = v.mean(0)
    out = {n: float(a) for n, a in zip(names, avg)}
    # one held-out item per row: recall@K equals HR@K; kept under both names so the shared
    # launcher and experiments/reproduce.py (which show recall@K) print it
    out.update({n.replace("hr@", "recall@"): out[n] for n in names if n.startswith("hr@")})
    return out


def eval_split(model, params, model_state, arrays: dict, n: int, ecfg, key, pad_id: int, *,
               lengths: np.ndarray | None = None, buckets=(), max_len: int | None = None) -> dict:
    """Full-ranking HR/NDCG of one split; ``{"exact": {...}, "reference": {...}}``.

    With ``buckets`` (and the rows' ``lengths``), rows are evaluated in groups of similar history
    length, each with only its last ``width`` columns (length-invariant models, or DiffuRec's
    collapsed padding; see :func:`eval_plan`); row ``n`` still uses ``fold_in(key, n)`` and the
    values are put back in row order before averaging.
    """
    ks = tuple(int(k) for k in ecfg.topk)
    score_padding = bool(ecfg.get("score_padding", True))
    bs = min(int(ecfg.batch_size), n)
    groups = eval_plan(model, n, bs, lengths=lengths, buckets=buckets, max_len=max_len)
    names = metric_names(ks)
    vals = np.zeros((n, len(names)), np.float32)
    for width, rows in groups:
        if rows.size == 0:
            continue
        step = _cached_eval_step(model, ks, pad_id, score_padding, width)
        idx, _ = padded_batches(rows.astype(np.int32), bs)
        outs = [step(params, model_state, arrays, idx[b], key) for b in range(idx.shape[0])]
        vals[rows] = np.concatenate(jax.device_get(outs), 0)[: rows.size]
    exact = average_rows(vals, names)
    ref = average_rows(
        vals, names,
        drop_remainder_of=int(ecfg.get("drop_remainder_of", 0) or 0),
        batch_mean_of=int(ecfg.get("batch_mean_of", 0) or 0),
    )
    return {"exact": exact, "reference": ref}


def compile_eval_plan(model, params, model_state, arrays: dict, n: int, ecfg, key, pad_id: int, *,
                      lengths=None, buckets=(), max_len=None) -> dict:
    """Runs one batch of every width :func:`eval_split` would use (compiling each once).

    Returns ``{width: (jitted step, number of batches at that width)}`` (width None: all columns).
    """
    ks = tuple(int(k) for k in ecfg.topk)
    score_padding = bool(ecfg.get("score_padding", True))
    bs = min(int(ecfg.batch_size), n)
    out: dict = {}
    for width, rows in eval_plan(model, n, bs, lengths=lengths, buckets=buckets, max_len=max_len):
        idx, _ = padded_batches(rows.astype(np.int32), bs)
        step = _cached_eval_step(model, ks, pad_id, score_padding, width)
        if width not in out:
            jax.block_until_ready(step(params, model_state, arrays, idx[0], key))
            out[width] = [step, 0]
        out[width][1] += idx.shape[0]
    return {w: tuple(v) for w, v in out.items()}


_EVAL_CACHE: dict = {}


def _cached_eval_step(model, ks, pad_id, score_padding, width=None):
    k = (id(model), ks, pad_id, score_padding, width)
    if k not in _EVAL_CACHE:
        for old in [c for c in _EVAL_CACHE if c[0] != id(model)]:
            del _EVAL_CACHE[old]
        _EVAL_CACHE[k] = make_eval_step(model, ks, pad_id, score_padding, width)
    return _EVAL_CACHE[k]


def _headline(res: dict, protocol: str) -> dict:
    return res["reference"] if protocol == "reference" else res["exact"]


# ----------------------------------------------------------------------------------------------
# Main loop
# ----------------------------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str, *, data: SequenceData | None = None) -> dict:
    """Trains ``config.model.name`` on a sequential dataset with early stopping.

    Args:
      config: ``ml_collections.ConfigDict`` with ``task="sequential"`` (see ``configs/seq_test.py``).
      workdir: run directory: ``config.json``, ``metrics.jsonl``, ``checkpoints/``, ``best/``,
        ``results.json``. An existing checkpoint is resumed.
      data: an already loaded :class:`SequenceData` (otherwise ``config.data`` is loaded).

    Returns:
      ``{"test": {"hr@20": ...}, "valid": {...}, "best_epoch": ..., "params": ...,
      "train_time_s": ..., "eval_time_s": ...}`` (also written to ``workdir/results.json``).
    """
    os.makedirs(workdir, exist_ok=True)
    data = load_seq_data(config.data) if data is None else data
    validate_config(config, data)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    log.info("data: %s", data)

    t_cfg, e_cfg = config.train, config.eval
    protocol = e_cfg.get("protocol", "exact")
    sampling = t_cfg.get("sampling", "permutation")
    N, bs = len(data.train), min(int(t_cfg.batch_size), len(data.train))
    steps_per_epoch = math.ceil(N / bs) if sampling == "permutation" else max(1, N // bs)
    buckets = tuple(int(b) for b in (t_cfg.get("length_buckets") or ()))
    e_buckets = eval_length_buckets(config)
    if buckets:
        tb = train_bucket_index(get_model(config, data), data, buckets)
        if tb is None:
            raise ValueError(
                "config.train.length_buckets needs left-padded data and a model whose output does not "
                f"depend on padding (e.g. DiffuRec with mask_mode='key' and no positions, or with "
                f"train.collapse_padding); got {config.model.name} on {data.pad_side}-padded {data.name!r}"
            )
        bucket_N, widths = tb
        steps_per_epoch = int(sum(math.ceil(np.sum(bucket_N == b) / bs) for b in range(len(widths))))
    model, tx, get_chunk = _compiled_parts(config, data, steps_per_epoch)
    chunk_fn = get_chunk(None)
    seed = int(config.seed)
    k_init, k_train, k_eval = jax.random.split(jax.random.key(seed), 3)
    k_valid, k_test = jax.random.fold_in(k_eval, 0), jax.random.fold_in(k_eval, 1)
    state = init_state(model, tx, k_init)
    n_params = count_params(state.params)
    log.info("model %s: %d parameters", config.model.name, n_params)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t_cfg.max_to_keep)
    best_ckpt = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
    writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"))
    meta: dict[str, Any] = {
        "epoch": 0, "best_epoch": 0, "best_score": -math.inf, "best_valid_all": None,
        "best": None, "train_time_s": 0.0, "eval_time_s": 0.0,
    }
    restored = ckpt.restore_latest(jax.eval_shape(lambda: state))
    if restored is not None:
        _, state, meta = restored
        log.info("resumed from epoch %d (step %d)", meta["epoch"], int(state.step))
    writer.truncate_after(meta["epoch"])

    train_arrays = split_arrays(data.train)
    valid_arrays, test_arrays = split_arrays(data.valid), split_arrays(data.test)
    S = max(1, min(int(t_cfg.get("scan_steps", 100)), steps_per_epoch))
    select = e_cfg.select_metric
    digits = e_cfg.get("select_digits", 4)
    test_at_end = bool(e_cfg.get("test_at_end", False))

    def run_eval(params, model_state, which: str):
        arrays, n, key = {
            "valid": (valid_arrays, len(data.valid), k_valid),
            "test": (test_arrays, len(data.test), k_test),
        }[which]
        lengths = {"valid": data.valid.lengths, "test": data.test.lengths}[which]
        return eval_split(model, params, model_state, arrays, n, e_cfg, key, data.pad_id,
                          lengths=lengths, buckets=e_buckets, max_len=data.max_len)

    bar = _progress(t_cfg.num_epochs * steps_per_epoch, meta["epoch"] * steps_per_epoch)
    epoch = meta["epoch"]
    try:
        while epoch < t_cfg.num_epochs:
            epoch += 1
            if epoch - meta["best_epoch"] > t_cfg.patience_epochs and meta["best_epoch"] > 0:
                log.info("early stop before epoch %d (best epoch %d)", epoch, meta["best_epoch"])
                epoch -= 1
                break
            t0 = time.perf_counter()

            def on_chunk(losses, k):
                if len(losses) > 1:  # fetch one call late: keep the device busy
                    bar.set_postfix(epoch=epoch, loss=f"{float(losses[-2][-1]):.4g}", refresh=False)
                bar.update(k)

            if buckets:
                losses, n_ex = [], 0
                for b, ib, mb in bucketed_epoch_batches(bucket_N, len(widths), bs, seed, epoch):
                    w = None if widths[b] == data.max_len else widths[b]
                    state, ls = get_chunk(w)(state, train_arrays, ib[None], mb[None], np.ones(1, bool), k_train)
                    losses.append(ls)
                    n_ex += int(mb.sum())
                    on_chunk(losses, 1)
            else:
                idx, mask = epoch_batches(N, bs, seed, epoch, sampling)
                n_ex = int(mask.sum())
                state, losses = run_epoch_chunks(chunk_fn, state, train_arrays, idx, mask, k_train, S, on_chunk)
            losses = np.concatenate(jax.device_get(losses))
            dt = time.perf_counter() - t0
            meta["train_time_s"] += dt
            if not np.all(np.isfinite(losses)):
                bad = int(np.argmin(np.isfinite(losses)))
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch}, batch {bad}; last good checkpoint: epoch "
                    f"{meta['epoch']} in {ckpt.directory}"
                )
            rec = {
                "epoch": epoch, "step": int(state.step), "train/loss": float(losses.mean()),
                "train/epoch_s": dt, "train/examples_per_s": n_ex / dt,
            }
            bar.set_postfix(epoch=epoch, loss=f"{rec['train/loss']:.4g}", ex_s=f"{n_ex / dt:.0f}")
            writer.write(rec)
            over = _over_budget(t_cfg, meta)
            if epoch % t_cfg.eval_every_epochs == 0 or epoch == t_cfg.num_epochs or over:
                t0 = time.perf_counter()
                res_v = run_eval(state.params, state.model_state, "valid")
                tv = time.perf_counter() - t0
                res_t, tt = None, 0.0
                if not test_at_end:
                    t1 = time.perf_counter()
                    res_t = run_eval(state.params, state.model_state, "test")
                    tt = time.perf_counter() - t1
                meta["eval_time_s"] += tv + tt
                valid = _headline(res_v, protocol)
                score = round(valid[select], digits)
                if e_cfg.get("select_rule", "metric") == "any":
                    prev = meta["best_valid_all"]
                    improved = prev is None or any(valid[k] > prev[k] for k in valid)
                    if improved:
                        meta["best_valid_all"] = {
                            k: max(valid[k], prev[k]) if prev else valid[k] for k in valid
                        }
                else:
                    improved = score > meta["best_score"]
                if improved:
                    meta.update(best_epoch=epoch, best_score=score, best={"valid": res_v, "test": res_t})
                    best_ckpt.save(epoch, state.params, {"epoch": epoch})
                rec = {"epoch": epoch, "eval/valid_s": tv, "eval/test_s": tt}
                rec.update({f"valid/{k}": v for k, v in valid.items()})
                if res_t is not None:
                    rec.update({f"test/{k}": v for k, v in _headline(res_t, protocol).items()})
                writer.write(rec)
                log.info(
                    "epoch %d: loss %.4f valid %s=%.4f%s%s (eval %.1fs)",
                    epoch, float(losses.mean()),
                    select, valid[select],
                    "" if res_t is None else f" test {select}={_headline(res_t, protocol)[select]:.4f}",
                    " *" if improved else "", tv + tt,
                )
                bar.set_postfix(epoch=epoch, best=f"{meta['best_score']:.4f}@{meta['best_epoch']}")
                meta["epoch"] = epoch
                ckpt.save(epoch, state, meta)
                if over:
                    log.info("time budget of %.0f s spent after epoch %d: stopping",
                             float(t_cfg.time_budget_s), epoch)
                    break
    finally:
        bar.close()
        ckpt.close()
        best_ckpt.wait()

    if meta["best"] is None:
        best_ckpt.close()
        raise RuntimeError("training ended without any evaluation")
    if meta["best"]["test"] is None:  # test once, on the best parameters (DiffuRec's protocol)
        params = state.params
        if meta["best_epoch"] != epoch:
            params, _ = best_ckpt.restore(meta["best_epoch"], jax.eval_shape(lambda: state.params))
        t0 = time.perf_counter()
        meta["best"]["test"] = run_eval(params, state.model_state, "test")
        meta["eval_time_s"] += time.perf_counter() - t0
    best_ckpt.close()
    best = meta["best"]
    results = {
        "model": config.model.name,
        "dataset": data.name,
        "seed": seed,
        "protocol": protocol,
        "test": _headline(best["test"], protocol),
        "valid": _headline(best["valid"], protocol),
        "test_exact": best["test"]["exact"],
        "test_reference": best["test"]["reference"],
        "valid_exact": best["valid"]["exact"],
        "best_epoch": meta["best_epoch"],
        "epochs_run": epoch,
        "params": n_params,
        "train_time_s": meta["train_time_s"],
        "eval_time_s": meta["eval_time_s"],
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def restore_best(config, data: SequenceData, workdir: str, step: int | None = None):
    """``(model, params, model_state, step)`` with the parameters kept in ``workdir/best`` (its
    latest step unless ``step`` is given) for a model built from ``config`` and ``data``."""
    validate_config(config, data)
    model = get_model(config, data)
    _, params, model_state = model.init(jax.random.key(0))
    ck = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
    try:
        step = ck.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'best')}")
        params, _ = ck.restore(step, jax.eval_shape(lambda: params))
    finally:
        ck.close()
    return model, params, model_state, step


def evaluate_checkpoint(config, workdir: str, *, splits=("valid", "test"), step: int | None = None,
                        data: SequenceData | None = None) -> dict:
    """Evaluates the parameters kept in ``workdir/best`` (or ``step`` there) under ``config``.

    ``config`` may differ from the training config in evaluation settings only (e.g.
    ``sampling.mode``, ``eval.protocol``, ``model.deterministic_eval``): a DiffuRec trained with
    one-step validation can be tested with the full reverse process.

    Returns:
      ``{"epoch": ..., split: {"exact": {...}, "reference": {...}, "seconds": ...}}``.
    """
    data = load_seq_data(config.data) if data is None else data
    model, params, model_state, step = restore_best(config, data, workdir, step)
    _, _, k_eval = jax.random.split(jax.random.key(int(config.seed)), 3)
    buckets = eval_length_buckets(config)
    out: dict[str, Any] = {"epoch": step}
    for i, which in enumerate(("valid", "test")):
        if which not in splits:
            continue
        sp = data.split(which)
        t0 = time.perf_counter()
        res = eval_split(model, params, model_state, split_arrays(sp), len(sp), config.eval,
                         jax.random.fold_in(k_eval, i), data.pad_id, lengths=sp.lengths,
                         buckets=buckets, max_len=data.max_len)
        out[which] = {**res, "seconds": time.perf_counter() - t0}
    return out


# ----------------------------------------------------------------------------------------------
# Speed measurement
# ----------------------------------------------------------------------------------------------


# The references' own figures on this workplace's CPU, one thread, from the specs' "Measured
# here" sections (seconds): dreamrec.md section 13, diffurec.md "Measured here".
REFERENCE_SPEED = {
    ("dreamrec", "yc"): {"epoch_s": 114.0, "valid_pass_s": 232.0, "test_pass_s": 257.0},
    ("sasrec", "yc"): {"epoch_s": 164.0, "valid_pass_s": 13.1, "test_pass_s": 12.8},
    ("diffurec", "amazon_beauty"): {"epoch_s": 2090.0, "valid_pass_s": 2590.0, "test_pass_s": 2590.0},
}


def machine_load() -> dict:
    """One-minute load average, CPU count and the busiest other processes (for speed reports)."""
    info = {"loadavg_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
        import subprocess

        ps = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True,
                            text=True, timeout=10).stdout.splitlines()[1:7]
        info["top_processes"] = [" ".join(ln.split()[:2] + [" ".join(ln.split()[2:])[:100]]) for ln in ps]
    except Exception:  # noqa: BLE001 - informative only
        pass
    return info


def measure_speed(config, *, train_steps: int | None = None, eval_rows: int | None = None,
                  data: SequenceData | None = None, seed: int = 0) -> dict:
    """Times the real training steps and evaluation passes of ``config`` (compilation excluded).

    Args:
      config: a sequential config.
      train_steps: optimizer steps to time (default: one full epoch); the epoch time is
        extrapolated from the per-step time when fewer (per width with length buckets).
      eval_rows: validation/test rows to time, a seeded random subset (default: the full split);
        a full pass is extrapolated per row when fewer.

    Returns:
      ``{"step_ms", "epoch_s", "valid_pass_s", "test_pass_s", ...}`` (wall clock) and the same in
      process CPU seconds (``*_cpu_s``, all threads), the numbers of timed steps and rows, the
      reference's figures and our speed-ups where the spec has them (``speedup_*``: reference
      time / ours, by wall clock and per CPU-second), and the machine load.
    """
    load_before = machine_load()
    data = load_seq_data(config.data) if data is None else data
    validate_config(config, data)
    model = get_model(config, data)
    t_cfg, e_cfg = config.train, config.eval
    sampling = t_cfg.get("sampling", "permutation")
    N, bs = len(data.train), min(int(t_cfg.batch_size), len(data.train))
    steps_per_epoch = math.ceil(N / bs) if sampling == "permutation" else max(1, N // bs)
    buckets = tuple(int(b) for b in (t_cfg.get("length_buckets") or ()))
    e_buckets = eval_length_buckets(config)
    k_init, k_train, k_eval = jax.random.split(jax.random.key(int(config.seed)), 3)
    arrays = split_arrays(data.train)
    out = {"model": config.model.name, "dataset": data.name, "jax_backend": jax.default_backend()}
    tb = train_bucket_index(model, data, buckets) if buckets else None
    if tb is not None:
        bucket_N, widths = tb
        per_w = [int(math.ceil(np.sum(bucket_N == b) / bs)) for b in range(len(widths))]
        steps_per_epoch = int(sum(per_w))
        tx = make_seq_optimizer(config.optim, steps_per_epoch)
        state = init_state(model, tx, k_init)
        batches = bucketed_epoch_batches(bucket_N, len(widths), bs, int(config.seed), 1)
        total_s, total_cpu, timed = 0.0, 0.0, 0
        budget = steps_per_epoch if train_steps is None else int(train_steps)
        for b, w in enumerate(widths):
            fn = make_train_chunk(model, tx, None if w == data.max_len else w)
            mine = [(ib, mb) for bb, ib, mb in batches if bb == b]
            if not mine:
                continue
            k = max(1, min(len(mine) - 1, round(budget * per_w[b] / steps_per_epoch)))
            state, ls = fn(state, arrays, mine[0][0][None], mine[0][1][None], np.ones(1, bool), k_train)
            jax.block_until_ready(ls)  # compile
            t0, c0 = time.perf_counter(), time.process_time()
            for ib, mb in mine[1 : 1 + k] or mine[:1]:  # a width with one batch: time it again
                state, ls = fn(state, arrays, ib[None], mb[None], np.ones(1, bool), k_train)
            jax.block_until_ready(ls)
            dt = (time.perf_counter() - t0) / k
            out[f"step_ms_width{w}"] = 1e3 * dt
            total_s += dt * per_w[b]
            total_cpu += (time.process_time() - c0) / k * per_w[b]
            timed += k
        out.update(steps_per_epoch=steps_per_epoch, timed_steps=timed,
                   step_ms=1e3 * total_s / steps_per_epoch, epoch_s=total_s, epoch_cpu_s=total_cpu)
    else:
        tx = make_seq_optimizer(config.optim, steps_per_epoch)
        state = init_state(model, tx, k_init)
        chunk_fn = make_train_chunk(model, tx)
        S = max(1, min(int(t_cfg.get("scan_steps", 100)), steps_per_epoch))
        idx, mask = epoch_batches(N, bs, int(config.seed), 1, sampling)
        state, ls = run_epoch_chunks(chunk_fn, state, arrays, idx[:S], mask[:S], k_train, S)
        jax.block_until_ready(ls)  # compile
        n = steps_per_epoch if train_steps is None else min(int(train_steps), steps_per_epoch)
        n = max(S, (n // S) * S)
        t0, c0 = time.perf_counter(), time.process_time()
        state, ls = run_epoch_chunks(chunk_fn, state, arrays, idx[:n], mask[:n], k_train, S)
        jax.block_until_ready(ls)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        out.update(steps_per_epoch=steps_per_epoch, timed_steps=n, step_ms=1e3 * dt / n,
                   epoch_s=dt / n * steps_per_epoch, epoch_cpu_s=dc / n * steps_per_epoch)
    out["params"] = count_params(state.params)
    rng = np.random.default_rng(seed)
    for which, sp in (("valid", data.valid), ("test", data.test)):
        rows = len(sp) if eval_rows is None else min(int(eval_rows), len(sp))
        pick = np.sort(rng.choice(len(sp), rows, replace=False)) if rows < len(sp) else np.arange(rows)
        sub = SeqSplit(sp.seq[pick], sp.lengths[pick], sp.targets[pick])
        arr = split_arrays(sub)
        kw = dict(lengths=sub.lengths, buckets=e_buckets, max_len=data.max_len)
        # warm-up: one batch of every width the timed pass uses, same shapes, so the timed call
        # compiles nothing
        compile_eval_plan(model, state.params, state.model_state, arr, rows, e_cfg, k_eval,
                          data.pad_id, **kw)
        t0, c0 = time.perf_counter(), time.process_time()
        eval_split(model, state.params, state.model_state, arr, rows, e_cfg, k_eval, data.pad_id, **kw)
        et, ec = time.perf_counter() - t0, time.process_time() - c0
        out[f"{which}_rows_timed"] = rows
        out[f"{which}_pass_s"] = et / rows * len(sp)
        out[f"{which}_pass_cpu_s"] = ec / rows * len(sp)
    ref = REFERENCE_SPEED.get((config.model.name, data.name))
    if ref:
        out["reference_1thread"] = ref
        for k, v in ref.items():
            out[f"speedup_{k.replace('_s', '')}"] = v / out[k]
            # per CPU-second: the reference's 1-thread wall time is its CPU time; ours counts
            # every thread of this process (fair under contention)
            out[f"speedup_{k.replace('_s', '')}_per_cpu_s"] = v / out[k.replace("_s", "_cpu_s")]
    out["load_before"] = load_before
    out["load_after"] = machine_load()
    return out
