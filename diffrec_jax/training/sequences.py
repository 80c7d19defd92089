"""The sequential task (``config.task = "sequential"``): next-item models over histories.

* Training runs ``train.scan_steps`` optimizer steps per jitted call (one ``lax.scan`` over index
  batches, the train state donated); the examples live on device and are gathered inside the scan.
  ``train.sampling``: ``"permutation"`` (a shuffled pass, last partial batch padded and masked:
  DiffuRec) or ``"independent"`` (``floor(N / B)`` steps, each drawing ``B`` distinct rows
  independently of the other steps: DreamRec's reference). ``train.length_buckets`` trains
  batches of similar history length cut to that width (models whose output does not depend on
  padding, or DiffuRec's collapsed padding).
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
* Selection, early stopping, checkpoints and results are the loop's
  (:mod:`diffrec_jax.training.loop`); ``eval.test_at_end`` evaluates test once on the best
  parameters (DiffuRec's protocol) instead of at every evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffrec_jax import metrics
from diffrec_jax import models
from diffrec_jax.checkpointing import Checkpointer
from diffrec_jax.data.sequences import SequenceData, SeqSplit
from diffrec_jax.batching import (bucketed_epoch_batches, epoch_batches, length_buckets,
                                           padded_batches, steps_per_epoch)
from diffrec_jax.training.optim import make_optimizer
from diffrec_jax.training.steps import init_state, make_update

log = logging.getLogger("diffrec_jax")

SEQ_METRICS = ("hr", "ndcg")


def validate_config(config, data: SequenceData) -> None:
    """Refuses settings that make no sense before any JAX work, naming the field."""
    t, e = config.train, config.eval
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
    if e.get("protocol", "exact") not in ("exact", "reference"):
        raise ValueError(f"config.eval.protocol must be 'exact' or 'reference', got {e.protocol!r}")
    if e.batch_size < 1:
        raise ValueError(f"config.eval.batch_size must be >= 1, got {e.batch_size}")
    models.get_class(config.model.name, task="sequential")


def split_arrays(sp: SeqSplit) -> dict:
    """A split on device: ``{"seq": [N, L], "len": [N], "target": [N]}`` int32."""
    return {
        "seq": jnp.asarray(sp.seq),
        "len": jnp.asarray(sp.lengths),
        "target": jnp.asarray(sp.targets),
    }


def gather(arrays: dict, idx_B: jnp.ndarray, width: int | None = None) -> dict:
    """Rows ``idx_B`` of every array; with ``width``, only the last ``width`` history columns
    (left-padded histories of at most ``width`` items lose nothing but padding)."""
    out = {k: v[idx_B] for k, v in arrays.items()}
    if width is not None:
        out["seq"] = out["seq"][:, -width:]
    return out


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


def make_train_chunk(model, tx, width: int | None = None):
    """Jitted ``(state, arrays, idx_SxB, mask_SxB, valid_S, k_train) -> (state, loss_S)``: a scan of ``S`` steps.

    Step ``s`` uses ``key = fold_in(k_train, state.step)``; steps with ``valid_S[s]`` False leave the
    state untouched (``lax.cond``), so an epoch's last, shorter chunk reuses the same compiled
    program. The state is donated. ``width`` keeps only the last ``width`` history columns
    (length bucketing, see :func:`bucketed_epoch_batches`).
    """

    def loss_fn(params, model_state, arrays, idx_B, mask_B, key):
        return model.loss(params, model_state, gather(arrays, idx_B, width), mask_B, key)

    update = make_update(loss_fn, tx)

    def step(state, arrays, k_train, idx_B, mask_B):
        state, loss, _ = update(state, arrays, idx_B, mask_B, jax.random.fold_in(k_train, state.step))
        return state, loss

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
        model = models.get_model(config, data)
        tx = make_optimizer(config.optim, steps_per_epoch)
        chunks: dict = {}

        def get_chunk(width=None):
            if width not in chunks:
                chunks[width] = make_train_chunk(model, tx, width)
            return chunks[width]

        _PARTS_CACHE[key] = (model, tx, get_chunk)
    return _PARTS_CACHE[key]


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
        batch = gather(arrays, idx_B, width)
        keys_B = jax.vmap(lambda n: jax.random.fold_in(key, n))(idx_B)
        scores = model.score(params, model_state, batch, keys_B)
        if not score_padding:
            scores = scores.at[:, pad_id].set(-jnp.inf)
        rank = target_rank(scores, batch["target"])
        hits = (jnp.arange(kmax)[None, :] == rank[:, None]).astype(jnp.float32)
        per_row = jax.vmap(lambda h: metrics.metric_sums(h[None], jnp.ones((1,)), ks))(hits)
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


def headline(res: dict, protocol: str) -> dict:
    return res["reference"] if protocol == "reference" else res["exact"]


class SequenceTask:
    """The loop's pieces for a next-item model (see :mod:`diffrec_jax.training.loop`)."""

    closed_form = False

    def __init__(self, config, data: SequenceData):
        validate_config(config, data)
        self.config, self.data = config, data
        t = config.train
        self.protocol = config.eval.get("protocol", "exact")
        self.sampling = t.get("sampling", "permutation")
        N = len(data.train)
        self.batch_size = min(int(t.batch_size), N)
        self.steps_per_epoch = steps_per_epoch(N, self.batch_size, self.sampling)
        self.buckets = tuple(int(b) for b in (t.get("length_buckets") or ()))
        self.e_buckets = eval_length_buckets(config)
        if self.buckets:
            tb = train_bucket_index(models.get_model(config, data), data, self.buckets)
            if tb is None:
                raise ValueError(
                    "config.train.length_buckets needs left-padded data and a model whose output does not "
                    f"depend on padding (e.g. DiffuRec with mask_mode='key' and no positions, or with "
                    f"train.collapse_padding); got {config.model.name} on {data.pad_side}-padded {data.name!r}")
            self.bucket_N, self.widths = tb
            self.steps_per_epoch = int(sum(-(-int(np.sum(self.bucket_N == b)) // self.batch_size)
                                           for b in range(len(self.widths))))
        self.model, self.tx, self.get_chunk = _compiled_parts(config, data, self.steps_per_epoch)
        self.seeds = [int(config.seed)]
        self.k_init, self.k_train, k_eval = jax.random.split(jax.random.key(self.seeds[0]), 3)
        self.k_split = {"valid": jax.random.fold_in(k_eval, 0), "test": jax.random.fold_in(k_eval, 1)}
        self.arrays = {s: split_arrays(data.split(s)) for s in ("train", "valid", "test")}
        self.scan_steps = max(1, min(int(t.get("scan_steps", 100)), self.steps_per_epoch))

    def init_state(self):
        state = init_state(self.model, self.tx, self.k_init)
        log.info("model %s: %d parameters", self.config.model.name, models.count_params(state.params))
        return state

    def train_epoch(self, state, epoch, on_steps):
        seed, bs, train = self.seeds[0], self.batch_size, self.arrays["train"]

        def on_chunk(losses, k):  # fetch one call late: keep the device busy
            on_steps(k, jax.device_get(losses[-2][-1]) if len(losses) > 1 else None)

        if self.buckets:
            losses, n_ex = [], 0
            for b, ib, mb in bucketed_epoch_batches(self.bucket_N, len(self.widths), bs, seed, epoch):
                w = None if self.widths[b] == self.data.max_len else self.widths[b]
                state, ls = self.get_chunk(w)(state, train, ib[None], mb[None], np.ones(1, bool), self.k_train)
                losses.append(ls)
                n_ex += int(mb.sum())
                on_chunk(losses, 1)
        else:
            idx, mask = epoch_batches(len(self.data.train), bs, seed, epoch, self.sampling)
            n_ex = int(mask.sum())
            state, losses = run_epoch_chunks(self.get_chunk(None), state, train, idx, mask, self.k_train,
                                             self.scan_steps, on_chunk)
        return state, np.concatenate(jax.device_get(losses)), n_ex

    def eval_split(self, params, model_state, which: str) -> dict:
        sp = self.data.split(which)
        return eval_split(self.model, params, model_state, self.arrays[which], len(sp), self.config.eval,
                          self.k_split[which], self.data.pad_id, lengths=sp.lengths, buckets=self.e_buckets,
                          max_len=self.data.max_len)

    def _record(self, which: str, res: dict) -> dict:
        rec = {which: headline(res, self.protocol), f"{which}_exact": res["exact"]}
        if which == "test":
            rec["test_reference"] = res["reference"]
        return rec

    def evaluate(self, state, *, test: bool = True):
        rec = self._record("valid", self.eval_split(state.params, state.model_state, "valid"))
        rec["test"] = None
        if test:
            rec.update(self._record("test", self.eval_split(state.params, state.model_state, "test")))
        return [rec]

    def best_payload(self, state, k):
        return state.params

    def test_best(self, best_ckpt, best_epoch, state, k):
        params, _ = best_ckpt.restore(best_epoch, jax.eval_shape(lambda: state.params))
        return self._record("test", self.eval_split(params, state.model_state, "test"))

    def summary(self, state):
        return {"model": self.config.model.name, "dataset": self.data.name, "protocol": self.protocol,
                "params": models.count_params(state.params)}


def restore_best(config, data: SequenceData, workdir: str, step: int | None = None):
    """``(model, params, model_state, step)`` with the parameters kept in ``workdir/best`` (its
    latest step unless ``step`` is given) for a model built from ``config`` and ``data``."""
    validate_config(config, data)
    model = models.get_model(config, data)
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
    if data is None:
        from diffrec_jax.data import load

        data = load(config.data)
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
