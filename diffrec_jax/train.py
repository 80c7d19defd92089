"""Training and evaluation loop for interaction models: ``train_and_evaluate(config, workdir)``.

* Data order is a pure function of ``(seed, epoch)`` and PRNG keys of ``(seed, step)``, so a run
  resumed from an Orbax checkpoint continues exactly as an uninterrupted one.
* The train step is one jitted pure function ``(state, X, idx_B, mask_B) -> (state, loss)`` with the
  state buffers donated. The last partial batch is padded and masked, so one shape compiles.
* Evaluation ranks all items for every user on device; scores are computed once and shared by
  validation (train items masked) and test (train and valid items masked).
* Progress: a tqdm bar with loss and throughput; metrics appended to ``workdir/metrics.jsonl``;
  the best epoch's metrics in ``workdir/results.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import logging

from diffrec_jax import metrics as M
from diffrec_jax import models
from diffrec_jax.checkpointing import Checkpointer
from diffrec_jax.data import InteractionData, load_diffrec_npy, load_movielens, make_synthetic
from diffrec_jax.data.temporal import with_time_weights


log = logging.getLogger("diffrec_jax")


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree, checkpointed as a whole."""

    step: jnp.ndarray  # int32 scalar, optimizer steps taken
    params: Any
    opt_state: Any
    model_state: Any  # e.g. DiffRec's loss history


# ----------------------------------------------------------------------------------------------
# Data, optimizer, config checks
# ----------------------------------------------------------------------------------------------


def load_data(dcfg) -> InteractionData:
    """Loads the dataset a ``config.data`` group describes.

    ``source``: ``synthetic`` (generated, seeded), ``diffrec_npy`` (``dir`` with DiffRec's
    ``train_list.npy``/``valid_list.npy``/``test_list.npy``) or ``movielens`` (``dir`` or ``path`` of
    ``u.data``/``ratings.dat``, temporal split).
    """
    source = dcfg.source
    if source == "synthetic":
        data = make_synthetic(**dict(dcfg.synthetic))
    elif source == "diffrec_npy":
        data = load_diffrec_npy(dcfg.dir)
    elif source == "movielens":
        data = load_movielens(
            dcfg.get("path") or dcfg.dir, min_rating=dcfg.get("min_rating"), split=tuple(dcfg.split)
        )
    else:
        raise ValueError(
            f"config.data.source: unknown source {source!r}; choose synthetic, diffrec_npy or movielens"
        )
    tw = dcfg.get("time_weights")
    if tw:
        if len(tw) != 2:
            raise ValueError(f"config.data.time_weights must be (w_min, w_max), got {tw}")
        data = with_time_weights(data, float(tw[0]), float(tw[1]))
    return data


def make_optimizer(ocfg) -> optax.GradientTransformation:
    """AdamW (torch semantics: decoupled weight decay) with optional global-norm clipping."""
    if ocfg.lr <= 0:
        raise ValueError(f"config.optim.lr must be > 0, got {ocfg.lr}")
    name = ocfg.get("name", "adamw")
    if name == "adamw":
        tx = optax.adamw(ocfg.lr, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps, weight_decay=ocfg.weight_decay)
    elif name == "adam":
        tx = optax.adam(ocfg.lr, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps)
    elif name == "sgd":
        tx = optax.sgd(ocfg.lr)
    else:
        raise ValueError(f"config.optim.name: unknown optimizer {name!r}; choose adamw, adam or sgd")
    if ocfg.get("grad_clip", 0.0):
        tx = optax.chain(optax.clip_by_global_norm(ocfg.grad_clip), tx)
    return tx


def validate_config(config, data: InteractionData) -> None:
    """Refuses settings that make no sense before any JAX work, naming the field."""
    t, e = config.train, config.eval
    if t.batch_size < 1:
        raise ValueError(f"config.train.batch_size must be >= 1, got {t.batch_size}")
    if t.num_epochs < 1:
        raise ValueError(f"config.train.num_epochs must be >= 1, got {t.num_epochs}")
    if t.eval_every_epochs < 1:
        raise ValueError(f"config.train.eval_every_epochs must be >= 1, got {t.eval_every_epochs}")
    if not e.topk or min(e.topk) < 1:
        raise ValueError(f"config.eval.topk must be a non-empty list of K >= 1, got {e.topk}")
    if max(e.topk) > data.n_items:
        raise ValueError(
            f"config.eval.topk: K={max(e.topk)} is larger than the {data.n_items} items of "
            f"{data.name!r}"
        )
    if e.select_metric.split("@")[0] not in M.METRICS or "@" not in e.select_metric:
        raise ValueError(f"config.eval.select_metric must look like 'recall@20', got {e.select_metric!r}")
    if int(e.select_metric.split("@")[1]) not in e.topk:
        raise ValueError(
            f"config.eval.select_metric {e.select_metric!r} needs its K in config.eval.topk {e.topk}"
        )
    if e.batch_size < 1:
        raise ValueError(f"config.eval.batch_size must be >= 1, got {e.batch_size}")
    models.validate_config(config)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DeviceData:
    """Dense per-user matrices on device (``[U, I]`` float32)."""

    x_train: jnp.ndarray  # model input: train rows (binary or time-weighted)
    truth_valid: jnp.ndarray
    truth_test: jnp.ndarray

    @classmethod
    def from_data(cls, data: InteractionData) -> "DeviceData":
        return cls(
            jnp.asarray(data.train.to_dense()),
            jnp.asarray(data.valid.binary().to_dense()),
            jnp.asarray(data.test.binary().to_dense()),
        )


def padded_batches(order: np.ndarray, batch_size: int):
    """Splits ``order`` into ``[batch_size]`` index batches; the last is padded (mask False)."""
    n = len(order)
    nb = max(1, math.ceil(n / batch_size))
    idx = np.zeros(nb * batch_size, np.int32)
    idx[:n] = order
    mask = np.zeros(nb * batch_size, bool)
    mask[:n] = True
    return idx.reshape(nb, batch_size), mask.reshape(nb, batch_size)


def make_eval_step(model, ks):
    """Jitted ``(params, model_state, dd, idx_B, mask_B, key) -> (valid_sums, test_sums)``."""
    kmax = max(ks)

    @jax.jit
    def eval_step(params, model_state, dd: tuple, idx_B, mask_B, key):
        x_train, truth_valid, truth_test = dd
        x = x_train[idx_B]
        keys = jax.vmap(lambda u: jax.random.fold_in(key, u))(idx_B)  # per-user randomness
        if getattr(model, "needs_user_ids", False):
            scores = model.score(params, model_state, x, keys, user_ids_B=idx_B)
        else:
            scores = model.score(params, model_state, x, keys)
        seen = x > 0
        tv = truth_valid[idx_B]
        tt = truth_test[idx_B]
        m = mask_B.astype(jnp.float32)
        top_v = M.topk_indices(M.mask_scores(scores, seen), kmax)
        sums_v = M.metric_sums(M.hits_from_topk(top_v, tv), jnp.sum(tv > 0, 1) * m, ks)
        top_t = M.topk_indices(M.mask_scores(scores, seen | (tv > 0)), kmax)
        sums_t = M.metric_sums(M.hits_from_topk(top_t, tt), jnp.sum(tt > 0, 1) * m, ks)
        return sums_v, sums_t

    return eval_step


def evaluate(model, state: TrainState, dd: DeviceData, n_users: int, ecfg, key) -> dict:
    """Full-ranking validation and test metrics; ``{"valid": {...}, "test": {...}}``."""
    ks = tuple(int(k) for k in ecfg.topk)
    eval_step = _cached_eval_step(model, ks)
    idx, mask = padded_batches(np.arange(n_users), min(ecfg.batch_size, n_users))
    acc_v = acc_t = None
    for b in range(idx.shape[0]):
        sv, st = eval_step(
            state.params,
            state.model_state,
            (dd.x_train, dd.truth_valid, dd.truth_test),
            idx[b],
            mask[b],
            key,
        )
        acc_v = sv if acc_v is None else jax.tree.map(jnp.add, acc_v, sv)
        acc_t = st if acc_t is None else jax.tree.map(jnp.add, acc_t, st)
    acc_v, acc_t = jax.device_get((acc_v, acc_t))
    return {
        "valid": M.finalize(acc_v, n_users, ecfg.average),
        "test": M.finalize(acc_t, n_users, ecfg.average),
    }


_EVAL_CACHE: dict = {}


def _cached_eval_step(model, ks):
    k = (id(model), ks)
    if k not in _EVAL_CACHE:
        _EVAL_CACHE.clear()
        _EVAL_CACHE[k] = make_eval_step(model, ks)
    return _EVAL_CACHE[k]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def make_train_step(model, tx):
    """Jitted pure train step; the state's buffers are donated."""

    def step_fn(state: TrainState, x_train, idx_B, mask_B, key):
        x = x_train[idx_B]

        extra = {"user_ids_B": idx_B} if getattr(model, "needs_user_ids", False) else {}

        def loss_fn(params):
            return model.loss(params, state.model_state, x, mask_B, key, **extra)

        (loss, (model_state, _aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, model_state), loss

    return jax.jit(step_fn, donate_argnums=0)


def init_state(model, tx, key) -> TrainState:
    _, params, model_state = model.init(key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state)


class MetricWriter:
    """Appends JSON lines to ``metrics.jsonl`` (plot with any JSON-lines reader)."""

    def __init__(self, path: str):
        self.path = path

    def truncate_after(self, epoch: int) -> None:
        """Drops records of epochs after ``epoch`` (written before an interruption)."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [ln for ln in f if ln.strip() and json.loads(ln).get("epoch", 0) <= epoch]
        with open(self.path, "w") as f:
            f.writelines(keep)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _progress(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        file=sys.stderr,
    )


def _fit_closed_form(model, config, data: InteractionData, workdir: str) -> dict:
    """Fits a model without gradient training, evaluates it once and writes results.json."""
    seed = int(config.seed)
    k_fit, _, k_eval = jax.random.split(jax.random.key(seed), 3)
    t0 = time.perf_counter()
    params, model_state = model.fit(k_fit)
    jax.block_until_ready(params)
    fit_s = time.perf_counter() - t0
    state = TrainState(jnp.zeros((), jnp.int32), params, None, model_state)
    dd = DeviceData.from_data(data)
    t0 = time.perf_counter()
    res = evaluate(model, state, dd, data.n_users, config.eval, k_eval)
    eval_s = time.perf_counter() - t0
    writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"))
    rec = {"epoch": 1, "eval/time_s": eval_s, "train/fit_s": fit_s}
    rec.update({f"valid/{k}": v for k, v in res["valid"].items()})
    rec.update({f"test/{k}": v for k, v in res["test"].items()})
    writer.truncate_after(0)
    writer.write(rec)
    results = {
        "model": config.model.name,
        "dataset": data.name,
        "seed": seed,
        "test": res["test"],
        "valid": res["valid"],
        "best_epoch": 1,
        "epochs_run": 1,
        "params": models.count_params(params),
        "train_time_s": fit_s,
        "eval_time_s": eval_s,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    log.info("%s fitted in %.1fs: test %s", config.model.name, fit_s, res["test"])
    return results


def train_and_evaluate(config, workdir: str, *, data: InteractionData | None = None) -> dict:
    """Trains ``config.model.name`` with early stopping and returns the results dictionary.

    Args:
      config: a ``ml_collections.ConfigDict`` as in ``configs/default.py``.
      workdir: run directory (created). It receives ``config.json``, ``metrics.jsonl``,
        ``checkpoints/``, ``best/`` and ``results.json``. An existing checkpoint is resumed.
      data: an already loaded dataset (otherwise ``config.data`` is loaded).

    Returns:
      ``{"test": {"recall@20": ...}, "valid": {...}, "best_epoch": ..., ...}`` (also written to
      ``workdir/results.json``).
    """
    os.makedirs(workdir, exist_ok=True)
    data = load_data(config.data) if data is None else data
    validate_config(config, data)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    log.info("data: %s", data)

    t_cfg, e_cfg = config.train, config.eval
    model = models.get_model(config, data)
    if getattr(model, "closed_form", False):
        return _fit_closed_form(model, config, data, workdir)
    tx = model.optimizer(config.optim) if hasattr(model, "optimizer") else make_optimizer(config.optim)
    seed = int(config.seed)
    root = jax.random.key(seed)
    k_init, k_train, k_eval = jax.random.split(root, 3)
    state = init_state(model, tx, k_init)
    n_params = models.count_params(state.params)
    log.info("model %s: %d parameters", config.model.name, n_params)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t_cfg.max_to_keep)
    best_ckpt = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
    writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"))
    meta = {
        "epoch": 0,
        "best_epoch": 0,
        "best_score": -math.inf,
        "best": None,
        "train_time_s": 0.0,
        "eval_time_s": 0.0,
    }
    restored = ckpt.restore_latest(jax.eval_shape(lambda: state))  # skips corrupt steps, warns
    if restored is not None:
        _, state, meta = restored
        log.info("resumed from epoch %d (step %d)", meta["epoch"], int(state.step))
    writer.truncate_after(meta["epoch"])

    dd = DeviceData.from_data(data)
    train_step = make_train_step(model, tx)
    U, bs = data.n_users, min(t_cfg.batch_size, data.n_users)
    steps_per_epoch = math.ceil(U / bs)
    digits = e_cfg.get("select_digits", 4)
    select = e_cfg.select_metric

    bar = _progress(t_cfg.num_epochs * steps_per_epoch, meta["epoch"] * steps_per_epoch)
    epoch = meta["epoch"]
    try:
        while epoch < t_cfg.num_epochs:
            epoch += 1
            # The reference's rule, checked at the start of each epoch.
            if epoch - meta["best_epoch"] >= t_cfg.patience_epochs:
                log.info("early stop before epoch %d (best epoch %d)", epoch, meta["best_epoch"])
                epoch -= 1
                break
            order = np.random.default_rng([seed, epoch]).permutation(U)
            idx, mask = padded_batches(order, bs)
            t0 = time.perf_counter()
            losses = []
            for b in range(idx.shape[0]):
                key = jax.random.fold_in(k_train, state.step)
                state, loss = train_step(state, dd.x_train, idx[b], mask[b], key)
                losses.append(loss)
                if b > 0:  # fetch one step late: keep the device busy
                    bar.set_postfix(epoch=epoch, loss=f"{float(losses[-2]):.4g}", refresh=False)
                bar.update(1)
            losses = np.asarray(jax.device_get(losses))
            dt = time.perf_counter() - t0
            meta["train_time_s"] += dt
            if not np.all(np.isfinite(losses)):
                bad = int(np.argmin(np.isfinite(losses)))
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch}, batch {bad} (step "
                    f"{int(state.step) - len(losses) + bad}); last good checkpoint: epoch "
                    f"{meta['epoch']} in {ckpt.directory}"
                )
            rec = {
                "epoch": epoch,
                "step": int(state.step),
                "train/loss": float(losses.mean()),
                "train/loss_sum": float(losses.sum()),
                "train/epoch_s": dt,
                "train/users_per_s": U / dt,
            }
            bar.set_postfix(epoch=epoch, loss=f"{rec['train/loss']:.4g}", users_s=f"{U / dt:.0f}")
            writer.write(rec)
            if epoch % t_cfg.eval_every_epochs == 0 or epoch == t_cfg.num_epochs:
                t0 = time.perf_counter()
                res = evaluate(model, state, dd, U, e_cfg, k_eval)
                et = time.perf_counter() - t0
                meta["eval_time_s"] += et
                score = round(res["valid"][select], digits)
                improved = score > meta["best_score"]
                if improved:
                    meta.update(best_epoch=epoch, best_score=score, best=res)
                    best_ckpt.save(epoch, state.params, {"epoch": epoch, **res})
                rec = {"epoch": epoch, "eval/time_s": et}
                rec.update({f"valid/{k}": v for k, v in res["valid"].items()})
                rec.update({f"test/{k}": v for k, v in res["test"].items()})
                writer.write(rec)
                log.info(
                    "epoch %d: valid %s=%.4f test recall@20=%.4f ndcg@20=%.4f%s (%.1fs)",
                    epoch, select, res["valid"][select], res["test"].get("recall@20", float("nan")),
                    res["test"].get("ndcg@20", float("nan")), " *" if improved else "", et,
                )
                bar.set_postfix(epoch=epoch, best=f"{meta['best_score']:.4f}@{meta['best_epoch']}")
                meta["epoch"] = epoch
                ckpt.save(epoch, state, meta)
    finally:
        bar.close()
        ckpt.close()
        best_ckpt.close()

    if meta["best"] is None:  # no evaluation happened (cannot with the checks above)
        raise RuntimeError("training ended without any evaluation")
    results = {
        "model": config.model.name,
        "dataset": data.name,
        "seed": seed,
        "test": meta["best"]["test"],
        "valid": meta["best"]["valid"],
        "best_epoch": meta["best_epoch"],
        "epochs_run": epoch,
        "params": n_params,
        "train_time_s": meta["train_time_s"],
        "eval_time_s": meta["eval_time_s"],
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def run(config, workdir: str) -> dict:
    """Dispatches on ``config.task``: ``interactions`` (this module) or ``sequential``
    (:mod:`diffrec_jax.seq_train`, next-item models over histories)."""
    task = config.get("task", "interactions")
    if task == "interactions":
        return train_and_evaluate(config, workdir)
    if task == "sequential":
        from diffrec_jax import seq_train

        return seq_train.train_and_evaluate(config, workdir)
    raise ValueError(f"config.task must be 'interactions' or 'sequential', got {task!r}")
