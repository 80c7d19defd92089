"""The interactions task (``config.task = "interactions"``): models over user rows ``[U, I]``.

* The train step is one jitted pure function ``(state, X, idx_B, mask_B, key) -> (state, loss)``
  (:func:`diffrec_jax.training.steps.make_update`) with the state donated; with
  ``config.num_seeds = K`` parameters, optimizer states, data orders and keys carry a leading
  axis and the step is ``vmap``-ed; ``config.train.num_devices`` shards every batch over a
  ``("data",)`` mesh (several processes: see :mod:`diffrec_jax.training.mesh`).
* Evaluation ranks all items for every user on device; scores are computed once and shared by
  validation (train items masked) and test (train and valid items masked).
* Closed-form models (``closed_form = True``: EASE, ItemKNN, RP3beta, BSPM) are fitted once.
* A model may own its epoch (DiffKG alternates a knowledge-graph diffusion pass and a recommender
  pass): it supplies ``steps_per_epoch``, ``init_train_state(key) -> (params, opt_state,
  model_state)``, ``train_epoch(params, opt_state, model_state, epoch, on_steps) -> (params,
  opt_state, model_state, losses)``, ``best_payload(params, model_state)`` and optionally
  ``host_state()`` / ``set_host_state(d)`` (host-side generators, checkpointed for exact resume),
  ``epoch_info`` (extra fields of the epoch's ``metrics.jsonl`` record); it is evaluated like
  every other model.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffrec_jax import metrics
from diffrec_jax.data import InteractionData
from diffrec_jax.models import count_params
from diffrec_jax.batching import epoch_batches, padded_batches
from diffrec_jax.training.mesh import make_mesh, shardings, to_global
from diffrec_jax.training.optim import make_optimizer
from diffrec_jax.training.steps import TrainState, init_state, make_update

log = logging.getLogger("diffrec_jax")


def validate_config(config, data: InteractionData) -> None:
    """Refuses evaluation settings that make no sense before any JAX work, naming the field."""
    e = config.eval
    if not e.topk or min(e.topk) < 1:
        raise ValueError(f"config.eval.topk must be a non-empty list of K >= 1, got {e.topk}")
    if max(e.topk) > data.n_items:
        raise ValueError(f"config.eval.topk: K={max(e.topk)} is larger than the {data.n_items} items of {data.name!r}")
    if e.select_metric.split("@")[0] not in metrics.METRICS or "@" not in e.select_metric:
        raise ValueError(f"config.eval.select_metric must look like 'recall@20', got {e.select_metric!r}")
    if int(e.select_metric.split("@")[1]) not in e.topk:
        raise ValueError(f"config.eval.select_metric {e.select_metric!r} needs its K in config.eval.topk {e.topk}")
    if e.batch_size < 1:
        raise ValueError(f"config.eval.batch_size must be >= 1, got {e.batch_size}")
    if e.average not in ("all", "nonempty"):
        raise ValueError(f"config.eval.average must be 'all' or 'nonempty', got {e.average!r}")


def replica_seeds(config) -> list[int]:
    """Seeds of the replicas trained together: ``seed, seed+1, ..., seed+num_seeds-1``."""
    k = int(config.get("num_seeds", 1))
    if k < 1:
        raise ValueError(f"config.num_seeds must be >= 1, got {k}")
    return [int(config.seed) + i for i in range(k)]


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
    def from_data(cls, data: InteractionData, sharding=None) -> "DeviceData":
        """Densifies train (with its values), valid and test (binary) to ``[U, I]`` device arrays
        (global arrays of ``sharding`` when several processes share the mesh)."""
        return cls(
            to_global(jnp.asarray(data.train.to_dense()), sharding),
            to_global(jnp.asarray(data.valid.binary().to_dense()), sharding),
            to_global(jnp.asarray(data.test.binary().to_dense()), sharding),
        )


def make_eval_step(model, ks, *, replicas: bool = False, mesh=None):
    """Jitted ``(params, model_state, dd, idx_B, mask_B, key) -> (valid_sums, test_sums)``.

    With ``replicas``, ``params``/``model_state``/``key`` carry a leading axis ``K`` (seeds) and the
    sums come back with it. With a ``mesh`` the user batch is sharded over its ``data`` axis.
    """
    kmax = max(ks)

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
        top_v = metrics.topk_indices(metrics.mask_scores(scores, seen), kmax)
        sums_v = metrics.metric_sums(metrics.hits_from_topk(top_v, tv), jnp.sum(tv > 0, 1) * m, ks)
        top_t = metrics.topk_indices(metrics.mask_scores(scores, seen | (tv > 0)), kmax)
        sums_t = metrics.metric_sums(metrics.hits_from_topk(top_t, tt), jnp.sum(tt > 0, 1) * m, ks)
        return sums_v, sums_t

    fn = jax.vmap(eval_step, in_axes=(0, 0, None, None, None, 0)) if replicas else eval_step
    rep, batch = shardings(mesh, False)
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, in_shardings=(rep, rep, rep, batch, batch, rep), out_shardings=rep)


_EVAL_CACHE: dict = {}


def _cached_eval_step(model, ks, replicas=False, mesh=None):
    k = (id(model), ks, replicas, id(mesh))
    if k not in _EVAL_CACHE:
        _EVAL_CACHE.clear()
        _EVAL_CACHE[k] = make_eval_step(model, ks, replicas=replicas, mesh=mesh)
    return _EVAL_CACHE[k]


def evaluate(model, state: TrainState, dd: DeviceData, n_users: int, ecfg, key, *,
             replicas: int | None = None, mesh=None):
    """Full-ranking validation and test metrics.

    Returns ``{"valid": {...}, "test": {...}}``, or a list of those (one per seed) when
    ``replicas`` is the size of the leading seed axis of ``state`` and ``key``.
    """
    ks = tuple(int(k) for k in ecfg.topk)
    eval_step = _cached_eval_step(model, ks, replicas is not None, mesh)
    n_dev = 1 if mesh is None else mesh.devices.size
    idx, mask = padded_batches(np.arange(n_users), min(ecfg.batch_size, n_users), n_dev)
    rep, batch = shardings(mesh, False)
    key = to_global(key, rep)
    serial = mesh is not None and jax.process_count() > 1  # see the note above mesh.to_global
    acc = None
    for b in range(idx.shape[0]):
        out = eval_step(state.params, state.model_state, (dd.x_train, dd.truth_valid, dd.truth_test),
                        to_global(idx[b], batch), to_global(mask[b], batch), key)
        if serial:  # wait for this step's collectives; sum on the host (same float32 adds)
            out = jax.device_get(out)
        acc = out if acc is None else jax.tree.map(np.add if serial else jnp.add, acc, out)
    acc_v, acc_t = jax.device_get(acc)

    def fin(k=None):
        pick = (lambda d: d) if k is None else (lambda d: {n: v[k] for n, v in d.items()})
        return {"valid": metrics.finalize(pick(acc_v), n_users, ecfg.average),
                "test": metrics.finalize(pick(acc_t), n_users, ecfg.average)}

    return fin() if replicas is None else [fin(k) for k in range(replicas)]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def make_train_step(model, tx, *, replicas: bool = False, mesh=None):
    """Jitted pure train step ``(state, x_train, idx_B, mask_B, key) -> (state, loss)``.

    The state's buffers are donated. With ``replicas`` every argument but ``x_train`` carries a
    leading seed axis ``K``. With a ``mesh`` the batch is sharded over the ``data`` axis and the
    state is replicated; XLA inserts the gradient all-reduce.
    """
    needs_ids = getattr(model, "needs_user_ids", False)

    def loss_fn(params, model_state, x_train, idx_B, mask_B, key):
        extra = {"user_ids_B": idx_B} if needs_ids else {}
        return model.loss(params, model_state, x_train[idx_B], mask_B, key, **extra)

    update = make_update(loss_fn, tx)

    def step_fn(state: TrainState, x_train, idx_B, mask_B, key):
        state, loss, _ = update(state, x_train, idx_B, mask_B, key)
        return state, loss

    fn = jax.vmap(step_fn, in_axes=(0, None, 0, 0, 0)) if replicas else step_fn
    if mesh is None:
        return jax.jit(fn, donate_argnums=0)
    rep, batch = shardings(mesh, replicas)
    return jax.jit(fn, donate_argnums=0, in_shardings=(rep, rep, batch, batch, rep), out_shardings=(rep, rep))


class InteractionTask:
    """The loop's pieces for a model over user rows (see :mod:`diffrec_jax.training.loop`)."""

    def __init__(self, config, data: InteractionData, model):
        validate_config(config, data)
        self.config, self.data, self.model = config, data, model
        self.seeds = replica_seeds(config)
        self.closed_form = bool(getattr(model, "closed_form", False))
        K = len(self.seeds)
        keys = jnp.stack([jax.random.split(jax.random.key(s), 3) for s in self.seeds])  # [K, 3]
        self.k_init, self.k_train, self.k_eval = keys[:, 0], keys[:, 1], keys[:, 2]
        U = data.n_users
        self.batch_size = min(int(config.train.batch_size), U)
        self.steps_per_epoch = -(-U // self.batch_size)
        self.own_epoch = hasattr(model, "train_epoch")
        if self.closed_form:
            return
        if self.own_epoch:
            if K > 1:
                raise ValueError(f"config.num_seeds: {config.model.name} trains one seed per run")
            self.steps_per_epoch = model.steps_per_epoch
            self.mesh, self.n_dev = None, 1
            self.dd = DeviceData.from_data(data)
            return
        self.tx = model.optimizer(config.optim) if hasattr(model, "optimizer") else make_optimizer(config.optim)
        self.mesh = make_mesh(config.train.get("num_devices", 0))
        self.n_dev = self.mesh.devices.size
        self.rep, self.batch_sh = shardings(self.mesh, True)
        self.dd = DeviceData.from_data(data, self.rep)
        self.step = make_train_step(model, self.tx, replicas=True, mesh=self.mesh)
        fold_local = jax.jit(jax.vmap(jax.random.fold_in))
        if jax.process_count() == 1:
            self.fold = fold_local
        else:  # keys from the host copy of the step counter, then assembled like the batches
            self.fold = lambda k, step: to_global(fold_local(k, np.asarray(step)), self.rep)

    def init_state(self):
        if self.own_epoch:
            return TrainState(jnp.zeros((), jnp.int32), *self.model.init_train_state(self.k_init[0]))
        state = jax.jit(jax.vmap(lambda k: init_state(self.model, self.tx, k)))(self.k_init)
        log.info("model %s: %d parameters, %d seed(s), %d device(s)", self.config.model.name,
                 count_params(state.params) // len(self.seeds), len(self.seeds), self.n_dev)
        return jax.tree.map(lambda a: to_global(a, self.rep), state)  # identity on one process

    def train_epoch(self, state, epoch, on_steps):
        U = self.data.n_users
        if self.own_epoch:
            *parts, losses = self.model.train_epoch(state.params, state.opt_state, state.model_state, epoch, on_steps)
            self.epoch_info = getattr(self.model, "epoch_info", {})
            return TrainState(state.step + len(losses), *parts), np.asarray(jax.device_get(losses))[:, None], U
        batches = [epoch_batches(U, self.batch_size, s, epoch, "permutation", self.n_dev) for s in self.seeds]
        idx = np.stack([b[0] for b in batches], axis=1)  # [nb, K, Bp]
        mask = np.stack([b[1] for b in batches], axis=1)
        losses = []
        for b in range(idx.shape[0]):
            state, loss = self.step(state, self.dd.x_train, to_global(idx[b], self.batch_sh),
                                    to_global(mask[b], self.batch_sh), self.fold(self.k_train, state.step))
            losses.append(loss)
            # fetch one step late: keep the device busy (host mean: no new program)
            on_steps(1, jax.device_get(losses[-2]) if b > 0 else None)
        return state, np.asarray(jax.device_get(losses)), U * len(self.seeds)

    def evaluate(self, state, *, test: bool = True):
        if self.own_epoch:
            return [evaluate(self.model, state, self.dd, self.data.n_users, self.config.eval, self.k_eval[0])]
        return evaluate(self.model, state, self.dd, self.data.n_users, self.config.eval, self.k_eval,
                        replicas=len(self.seeds), mesh=self.mesh)

    def best_payload(self, state, k):
        if self.own_epoch:
            return self.model.best_payload(state.params, state.model_state)
        return jax.tree.map(lambda x: x[k], state.params)

    def test_best(self, best_ckpt, best_epoch, state, k):  # test is computed at every evaluation
        raise NotImplementedError

    def host_state(self) -> dict:
        return self.model.host_state() if hasattr(self.model, "host_state") else {}

    def set_host_state(self, host: dict) -> None:
        if host:
            self.model.set_host_state(host)

    def fit(self):
        """EASE, ItemKNN, ...: fit once, evaluate once; the fit and the data's counts go to best/."""
        k_fit, _, k_eval = jax.random.split(jax.random.key(self.seeds[0]), 3)
        t0 = time.perf_counter()
        params, model_state = self.model.fit(k_fit)
        jax.block_until_ready(params)
        fit_s = time.perf_counter() - t0
        state = TrainState(jnp.zeros((), jnp.int32), params, None, model_state)
        t0 = time.perf_counter()
        res = evaluate(self.model, state, DeviceData.from_data(self.data), self.data.n_users, self.config.eval, k_eval)
        eval_s = time.perf_counter() - t0
        extra = {"train_time_s": fit_s, "eval_time_s": eval_s,
                 "best_meta": {"n_users": self.data.n_users, "n_items": self.data.n_items}}
        return {"params": params, "model_state": model_state}, res, extra

    def summary(self, state):
        params = state["params"] if isinstance(state, dict) else state.params
        out = {"model": self.config.model.name, "dataset": self.data.name,
               "params": count_params(params) // (1 if self.closed_form or self.own_epoch else len(self.seeds))}
        if not self.closed_form and not self.own_epoch:
            out["num_devices"] = self.n_dev
        return out
