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


def repeated_overrides(argv, flag: str = "config") -> list[str]:
    """The ``--<flag>.<path>`` overrides that a command line gives more than once.

    ml_collections' ``config_flags`` does not keep the last of repeated overrides of a tuple
    field, it concatenates them (``--config.model.in_dims='(280,)' --config.model.in_dims='(600,
    200)'`` gives ``(280, 600, 200)``), so launchers refuse repeats before absl parses the flags.
    """
    seen, dup = set(), []
    prefix = f"--{flag}."
    for a in argv:
        if a.startswith(prefix):
            key = a[len(prefix):].split("=", 1)[0]
            if key in seen and key not in dup:
                dup.append(key)
            seen.add(key)
    return dup


def refuse_repeated_overrides(argv, flag: str = "config") -> None:
    """Exits with a message naming the repeated overrides (see :func:`repeated_overrides`)."""
    dup = repeated_overrides(argv, flag)
    if dup:
        raise SystemExit(f"error: {', '.join(f'--{flag}.{k}' for k in dup)} given more than once; give each "
                         "override once (ml_collections would concatenate repeated tuple values)")


def override(config, overrides: dict, *, allow_new: bool = False):
    """A copy of ``config`` with ``{"group.field": value, ...}`` set (the source is not changed).

    Raises:
      KeyError: a field that ``config`` lacks, unless ``allow_new``.
    """
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for path, value in overrides.items():
            node = config
            *parents, leaf = path.split(".")
            for p in parents:
                node = node[p]
            if not allow_new and leaf not in node:
                raise KeyError(f"config has no field {path!r}")
            node[leaf] = value
    return config


def load_data(dcfg) -> InteractionData:
    """Loads the dataset a ``config.data`` group describes.

    ``source``: ``synthetic`` (generated, seeded), ``diffrec_npy`` (``dir`` with DiffRec's
    ``train_list.npy``/``valid_list.npy``/``test_list.npy``) or ``movielens`` (``dir`` or ``path`` of
    ``u.data``/``ratings.dat``, temporal split) or ``lastfm_kgcn`` (``dir`` of the KGCN Last.FM
    files, seeded per-user random ``split`` with ``split_seed``).
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
    elif source == "lastfm_kgcn":  # DiffKG / LightGCN on KGCN Last.FM (the model reads the KG itself)
        from diffrec_jax.data.kg import load_lastfm_kgcn

        data, _ = load_lastfm_kgcn(dcfg.dir, split=tuple(dcfg.get("split", (0.7, 0.1, 0.2))),
                                   seed=int(dcfg.get("split_seed", 0)))
    else:
        raise ValueError(
            f"config.data.source: unknown source {source!r}; choose synthetic, diffrec_npy, movielens "
            "or lastfm_kgcn"
        )
    tw = dcfg.get("time_weights")
    if tw:
        if len(tw) != 2 or not 0 < float(tw[0]) <= float(tw[1]):
            raise ValueError(
                f"config.data.time_weights must be (w_min, w_max) with 0 < w_min <= w_max, got {tw}"
            )
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


def check_train_fields(t) -> None:
    """The ``config.train`` checks every trainer shares (batch, epochs, evaluation, budget)."""
    if t.batch_size < 1:
        raise ValueError(f"config.train.batch_size must be >= 1, got {t.batch_size}")
    if t.num_epochs < 1:
        raise ValueError(f"config.train.num_epochs must be >= 1, got {t.num_epochs}")
    if t.eval_every_epochs < 1:
        raise ValueError(f"config.train.eval_every_epochs must be >= 1, got {t.eval_every_epochs}")
    if float(t.get("time_budget_s", 0) or 0) < 0:
        raise ValueError(f"config.train.time_budget_s must be >= 0 (0: no budget), got {t.time_budget_s}")


def validate_config(config, data: InteractionData) -> None:
    """Refuses settings that make no sense before any JAX work, naming the field."""
    t, e = config.train, config.eval
    check_train_fields(t)
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
    if e.average not in ("all", "nonempty"):
        raise ValueError(f"config.eval.average must be 'all' or 'nonempty', got {e.average!r}")
    if t.patience_epochs < 1:
        raise ValueError(f"config.train.patience_epochs must be >= 1, got {t.patience_epochs}")
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
    def from_data(cls, data: InteractionData, sharding=None) -> "DeviceData":
        """Densifies train (with its values), valid and test (binary) to ``[U, I]`` device arrays
        (global arrays of ``sharding`` when several processes share the mesh, see :func:`to_global`)."""
        return cls(
            to_global(jnp.asarray(data.train.to_dense()), sharding),
            to_global(jnp.asarray(data.valid.binary().to_dense()), sharding),
            to_global(jnp.asarray(data.test.binary().to_dense()), sharding),
        )


def padded_batches(order: np.ndarray, batch_size: int, multiple_of: int = 1):
    """Splits ``order`` into batches of ``batch_size`` real rows, each padded (mask False) to a
    multiple of ``multiple_of`` (the device count); returns ``idx, mask`` of shape ``[nb, Bp]``.

    The rows in each batch do not depend on ``multiple_of``, so 1 and N devices see the same data.
    """
    n = len(order)
    nb = max(1, math.ceil(n / batch_size))
    bp = math.ceil(batch_size / multiple_of) * multiple_of
    idx = np.zeros((nb, bp), np.int32)
    mask = np.zeros((nb, bp), bool)
    for b in range(nb):
        chunk = order[b * batch_size : (b + 1) * batch_size]
        idx[b, : len(chunk)] = chunk
        mask[b, : len(chunk)] = True
    return idx, mask


def make_mesh(num_devices: int = 0):
    """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (0: all of them)."""
    devices = jax.devices()
    n = len(devices) if num_devices in (0, None) else int(num_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(
            f"config.train.num_devices={num_devices} but {len(devices)} devices are visible"
        )
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(
            f"config.train.num_devices={num_devices}: with {jax.process_count()} processes the mesh "
            f"must span all {len(devices)} devices of every process (use 0)"
        )
    return jax.sharding.Mesh(np.asarray(devices[:n]), ("data",))


def _shardings(mesh, replicas: bool):
    """(replicated, batch-sharded) NamedShardings; batches are ``[B]`` or ``[K, B]``."""
    if mesh is None:
        return None, None
    P = jax.sharding.PartitionSpec
    rep = jax.sharding.NamedSharding(mesh, P())
    batch = jax.sharding.NamedSharding(mesh, P(None, "data") if replicas else P("data"))
    return rep, batch


# Multi-process rule (several processes, CPU collectives): never launch a multi-device program
# while one with collectives is still running. XLA:CPU runs each process's share of a collective
# on its client thread pool, sized max(cores, local devices) ("enough threads for one collective"),
# and the same pool runs the launch tasks of every newly dispatched multi-device program, which
# can block there. On a 2-core host with 2 devices per process, a launch task queued behind a
# running eval step took the thread the other local device's half of that step's all-gather
# needed, and both processes waited in gloo forever (the "first Orbax save" deadlock: the first
# evaluation just before it). So the distributed paths wait for each collective step before
# dispatching the next program (the train loop already does: ``fold`` reads ``state.step``).
def to_global(x, sharding):
    """``x`` as an array of ``sharding`` when several processes (hosts) share the mesh.

    With one process this is the identity (jit places host arrays itself). With several, every
    process holds the same host value (data order and keys are functions of the seed), and the
    global array is assembled from each process's addressable shards
    (``jax.make_array_from_callback``); PRNG key arrays keep their key type.
    """
    if sharding is None or jax.process_count() == 1:
        return x
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(to_global(jax.random.key_data(x), sharding), impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


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
        top_v = M.topk_indices(M.mask_scores(scores, seen), kmax)
        sums_v = M.metric_sums(M.hits_from_topk(top_v, tv), jnp.sum(tv > 0, 1) * m, ks)
        top_t = M.topk_indices(M.mask_scores(scores, seen | (tv > 0)), kmax)
        sums_t = M.metric_sums(M.hits_from_topk(top_t, tt), jnp.sum(tt > 0, 1) * m, ks)
        return sums_v, sums_t

    fn = jax.vmap(eval_step, in_axes=(0, 0, None, None, None, 0)) if replicas else eval_step
    rep, batch = _shardings(mesh, False)
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, in_shardings=(rep, rep, rep, batch, batch, rep), out_shardings=rep)


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
    rep, batch = _shardings(mesh, False)
    key = to_global(key, rep)
    serial = mesh is not None and jax.process_count() > 1  # see the note above to_global
    acc = None
    for b in range(idx.shape[0]):
        out = eval_step(
            state.params,
            state.model_state,
            (dd.x_train, dd.truth_valid, dd.truth_test),
            to_global(idx[b], batch),
            to_global(mask[b], batch),
            key,
        )
        if serial:  # wait for this step's collectives; sum on the host (same float32 adds)
            out = jax.device_get(out)
        acc = out if acc is None else jax.tree.map(np.add if serial else jnp.add, acc, out)
    acc_v, acc_t = jax.device_get(acc)

    def fin(k=None):
        pick = (lambda d: d) if k is None else (lambda d: {n: v[k] for n, v in d.items()})
        return {
            "valid": M.finalize(pick(acc_v), n_users, ecfg.average),
            "test": M.finalize(pick(acc_t), n_users, ecfg.average),
        }

    return fin() if replicas is None else [fin(k) for k in range(replicas)]


_EVAL_CACHE: dict = {}


def _cached_eval_step(model, ks, replicas=False, mesh=None):
    k = (id(model), ks, replicas, id(mesh))
    if k not in _EVAL_CACHE:
        _EVAL_CACHE.clear()
        _EVAL_CACHE[k] = make_eval_step(model, ks, replicas=replicas, mesh=mesh)
    return _EVAL_CACHE[k]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def make_train_step(model, tx, *, replicas: bool = False, mesh=None):
    """Jitted pure train step ``(state, x_train, idx_B, mask_B, key) -> (state, loss)``.

    The state's buffers are donated. With ``replicas`` every argument but ``x_train`` carries a
    leading seed axis ``K`` (``vmap`` over parameters, optimizer state, batches and keys). With a
    ``mesh`` the batch is sharded over the ``data`` axis and the state is replicated; XLA inserts
    the gradient all-reduce.
    """

    def step_fn(state: TrainState, x_train, idx_B, mask_B, key):
        x = x_train[idx_B]
        extra = {"user_ids_B": idx_B} if getattr(model, "needs_user_ids", False) else {}

        def loss_fn(params):
            return model.loss(params, state.model_state, x, mask_B, key, **extra)

        (loss, (model_state, _aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, model_state), loss

    fn = jax.vmap(step_fn, in_axes=(0, None, 0, 0, 0)) if replicas else step_fn
    if mesh is None:
        return jax.jit(fn, donate_argnums=0)
    rep, batch = _shardings(mesh, replicas)
    return jax.jit(
        fn,
        donate_argnums=0,
        in_shardings=(rep, rep, batch, batch, rep),
        out_shardings=(rep, rep),
    )


def init_state(model, tx, key) -> TrainState:
    """A fresh :class:`TrainState`: ``model.init(key)`` parameters, ``tx.init``, step 0."""
    _, params, model_state = model.init(key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), model_state)


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricWriter:
    """Appends JSON lines to ``metrics.jsonl`` (plot with any JSON-lines reader).

    With several processes (hosts) only process 0 writes; the others' calls do nothing.
    """

    def __init__(self, path: str):
        self.path = path
        self.enabled = jax.process_index() == 0

    def truncate_after(self, epoch: int) -> None:
        """Drops records of epochs after ``epoch`` (written before an interruption).

        A line cut short by a kill is dropped too; the file is replaced atomically.
        """
        if not self.enabled or not os.path.exists(self.path):
            return
        keep = []
        with open(self.path) as f:
            for ln in f:
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError:
                    continue  # a partial line from an interrupted write
                if isinstance(rec, dict) and rec.get("epoch", 0) <= epoch:
                    keep.append(json.dumps(rec) + "\n")
        write_atomic(self.path, "".join(keep))

    def write(self, record: dict) -> None:
        """Appends one JSON record (one line)."""
        if not self.enabled:
            return
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
    writer.truncate_after(0)
    history = list(getattr(model, "history", None) or [])  # iterative "fits" (DiffKG) log epochs
    for h in history:
        writer.write({k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in h.items()})
    last = int(history[-1].get("epoch", len(history))) if history else 1
    rec = {"epoch": last, "eval/time_s": eval_s, "train/fit_s": fit_s}
    rec.update({f"valid/{k}": v for k, v in res["valid"].items()})
    rec.update({f"test/{k}": v for k, v in res["test"].items()})
    writer.write(rec)
    results = {
        "model": config.model.name,
        "dataset": data.name,
        "seed": seed,
        "test": res["test"],
        "valid": res["valid"],
        "best_epoch": int(getattr(model, "best_epoch", 1) or 1),
        "epochs_run": last,
        "params": models.count_params(params),
        "train_time_s": fit_s,
        "eval_time_s": eval_s,
    }
    # the fit itself, so diffrec_jax.inference can load the run without fitting again
    best = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
    try:
        best.save(1, {"params": params, "model_state": model_state},
                  {"epoch": last, "n_users": data.n_users, "n_items": data.n_items, **res})
    finally:
        best.close()
    write_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    log.info("%s fitted in %.1fs: test %s", config.model.name, fit_s, res["test"])
    return results


def replica_seeds(config) -> list[int]:
    """Seeds of the replicas trained together: ``seed, seed+1, ..., seed+num_seeds-1``."""
    k = int(config.get("num_seeds", 1))
    if k < 1:
        raise ValueError(f"config.num_seeds must be >= 1, got {k}")
    return [int(config.seed) + i for i in range(k)]


def mean_std(dicts: list[dict]) -> tuple[dict, dict]:
    """Per-key mean and sample std (ddof 1; 0 for one dict) over metric dicts with the same keys."""
    keys = dicts[0].keys()
    arr = {k: np.array([d[k] for d in dicts], np.float64) for k in keys}
    std = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in arr.items()}
    return {k: float(v.mean()) for k, v in arr.items()}, std


def _over_budget(t_cfg, meta) -> bool:
    """True once training + evaluation time (resumed runs included) reaches ``train.time_budget_s``.

    The epoch that crosses the budget is evaluated and checkpointed, then training stops as if
    early-stopped: the kept best epoch is tested as usual (0 or absent: no budget).
    """
    budget = float(t_cfg.get("time_budget_s", 0) or 0)
    return budget > 0 and meta["train_time_s"] + meta["eval_time_s"] >= budget


def train_and_evaluate(config, workdir: str, *, data: InteractionData | None = None) -> dict:
    """Trains ``config.model.name`` with early stopping and returns the results dictionary.

    ``config.num_seeds = K`` trains K independent replicas (seeds ``seed..seed+K-1``) in one
    program: parameters, optimizer states, data orders and keys carry a leading axis and the step
    is ``vmap``-ed. Each replica keeps its own best epoch and early stopping, so its numbers equal a
    separate run with its seed. ``config.train.num_devices`` (0: all) shards every batch over a
    ``("data",)`` mesh.

    Args:
      config: a ``ml_collections.ConfigDict`` as in ``configs/default.py``.
      workdir: run directory (created). It receives ``config.json``, ``metrics.jsonl``,
        ``checkpoints/``, ``best/`` and ``results.json``. An existing checkpoint is resumed.
      data: an already loaded dataset (otherwise ``config.data`` is loaded).

    Returns:
      ``{"test": {"recall@20": ...}, "valid": {...}, "best_epoch": ..., ...}`` (also written to
      ``workdir/results.json``). With K > 1, ``test``/``valid`` are means over seeds,
      ``test_std``/``valid_std`` the standard deviations and ``per_seed`` each replica's result.
    """
    os.makedirs(workdir, exist_ok=True)
    data = load_data(config.data) if data is None else data
    validate_config(config, data)
    seeds = replica_seeds(config)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    log.info("data: %s", data)

    t_cfg, e_cfg = config.train, config.eval
    model = models.get_model(config, data)
    if getattr(model, "closed_form", False):
        return _fit_closed_form(model, config, data, workdir)
    tx = model.optimizer(config.optim) if hasattr(model, "optimizer") else make_optimizer(config.optim)
    K = len(seeds)
    mesh = make_mesh(t_cfg.get("num_devices", 0))
    n_dev = mesh.devices.size
    keys = jnp.stack([jax.random.split(jax.random.key(s), 3) for s in seeds])  # [K, 3]
    k_init, k_train, k_eval = keys[:, 0], keys[:, 1], keys[:, 2]
    state = jax.jit(jax.vmap(lambda k: init_state(model, tx, k)))(k_init)
    n_params = models.count_params(state.params) // K
    log.info("model %s: %d parameters, %d seed(s), %d device(s)", config.model.name, n_params, K, n_dev)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t_cfg.max_to_keep)
    best_dirs = ["best"] if K == 1 else [os.path.join("best", f"seed_{s}") for s in seeds]
    best_ckpts = [Checkpointer(os.path.join(workdir, d), max_to_keep=1) for d in best_dirs]
    writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"))
    meta = {
        "epoch": 0,
        "seeds": seeds,
        "replicas": [{"best_epoch": 0, "best_score": -math.inf, "best": None} for _ in seeds],
        "train_time_s": 0.0,
        "eval_time_s": 0.0,
    }
    restored = ckpt.restore_latest(jax.eval_shape(lambda: state))  # skips corrupt steps, warns
    if restored is not None:
        _, state, meta = restored
        log.info("resumed from epoch %d", meta["epoch"])
    writer.truncate_after(meta["epoch"])
    reps = meta["replicas"]

    rep, batch_sh = _shardings(mesh, True)
    state = jax.tree.map(lambda a: to_global(a, rep), state)  # identity on one process
    dd = DeviceData.from_data(data, rep)
    train_step = make_train_step(model, tx, replicas=True, mesh=mesh)
    fold_local = jax.jit(jax.vmap(jax.random.fold_in))
    if jax.process_count() == 1:
        fold = fold_local
    else:  # keys from the host copy of the step counter, then assembled like the batches
        def fold(k, step):
            return to_global(fold_local(k, np.asarray(step)), rep)
    U, bs = data.n_users, min(t_cfg.batch_size, data.n_users)
    steps_per_epoch = math.ceil(U / bs)
    digits = e_cfg.get("select_digits", 4)
    select = e_cfg.select_metric

    bar = _progress(t_cfg.num_epochs * steps_per_epoch, meta["epoch"] * steps_per_epoch)
    epoch = meta["epoch"]
    try:
        while epoch < t_cfg.num_epochs:
            epoch += 1
            # The reference's rule, checked at the start of each epoch, per replica.
            active = [epoch - r["best_epoch"] < t_cfg.patience_epochs for r in reps]
            if not any(active):
                log.info("early stop before epoch %d (best epochs %s)", epoch,
                         [r["best_epoch"] for r in reps])
                epoch -= 1
                break
            batches = [padded_batches(np.random.default_rng([s, epoch]).permutation(U), bs, n_dev)
                       for s in seeds]
            idx = np.stack([b[0] for b in batches], axis=1)  # [nb, K, Bp]
            mask = np.stack([b[1] for b in batches], axis=1)
            t0 = time.perf_counter()
            losses = []
            for b in range(idx.shape[0]):
                state, loss = train_step(state, dd.x_train, to_global(idx[b], batch_sh),
                                         to_global(mask[b], batch_sh), fold(k_train, state.step))
                losses.append(loss)
                if b > 0:  # fetch one step late: keep the device busy (host mean: no new program)
                    bar.set_postfix(epoch=epoch, loss=f"{np.mean(jax.device_get(losses[-2])):.4g}",
                                    refresh=False)
                bar.update(1)
            losses = np.asarray(jax.device_get(losses))  # [nb, K]
            dt = time.perf_counter() - t0
            meta["train_time_s"] += dt
            bad = ~np.isfinite(losses) & np.asarray(active)[None, :]
            if bad.any():
                b, k = map(int, np.argwhere(bad)[0])
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch}, batch {b}, seed {seeds[k]} (step "
                    f"{(epoch - 1) * steps_per_epoch + b}); last good checkpoint: epoch "
                    f"{meta['epoch']} in {ckpt.directory}"
                )
            rec = {
                "epoch": epoch,
                "step": epoch * steps_per_epoch,
                "train/loss": float(losses.mean()),
                "train/loss_sum": float(losses.sum(0).mean()),
                "train/epoch_s": dt,
                "train/users_per_s": U * K / dt,
            }
            if K > 1:
                rec["train/loss_per_seed"] = [float(v) for v in losses.mean(0)]
            bar.set_postfix(epoch=epoch, loss=f"{rec['train/loss']:.4g}", users_s=f"{U * K / dt:.0f}")
            writer.write(rec)
            over = _over_budget(t_cfg, meta)
            if epoch % t_cfg.eval_every_epochs == 0 or epoch == t_cfg.num_epochs or over:
                t0 = time.perf_counter()
                res_k = evaluate(model, state, dd, U, e_cfg, k_eval, replicas=K, mesh=mesh)
                et = time.perf_counter() - t0
                meta["eval_time_s"] += et
                for k, (res, r) in enumerate(zip(res_k, reps)):
                    if not active[k]:
                        continue
                    score = round(res["valid"][select], digits)
                    improved = score > r["best_score"]
                    if improved:
                        r.update(best_epoch=epoch, best_score=score, best=res)
                        params_k = jax.tree.map(lambda x: x[k], state.params)
                        best_ckpts[k].save(epoch, params_k, {"epoch": epoch, **res})
                    rec = {"epoch": epoch, "eval/time_s": et}
                    if K > 1:
                        rec["seed"] = seeds[k]
                    rec.update({f"valid/{m}": v for m, v in res["valid"].items()})
                    rec.update({f"test/{m}": v for m, v in res["test"].items()})
                    writer.write(rec)
                    log.info(
                        "epoch %d%s: valid %s=%.4f test recall@20=%.4f ndcg@20=%.4f%s (%.1fs)",
                        epoch, f" seed {seeds[k]}" if K > 1 else "", select, res["valid"][select],
                        res["test"].get("recall@20", float("nan")),
                        res["test"].get("ndcg@20", float("nan")), " *" if improved else "", et,
                    )
                bar.set_postfix(epoch=epoch, best=" ".join(
                    f"{r['best_score']:.4f}@{r['best_epoch']}" for r in reps))
                meta["epoch"] = epoch
                ckpt.save(epoch, state, meta)
                if over:
                    log.info("time budget of %.0f s spent after epoch %d: stopping",
                             float(t_cfg.time_budget_s), epoch)
                    break
    finally:
        bar.close()
        ckpt.close()
        for c in best_ckpts:
            c.close()

    if any(r["best"] is None for r in reps):  # cannot happen: the last epoch always evaluates
        raise RuntimeError("training ended without any evaluation")
    common = {
        "model": config.model.name,
        "dataset": data.name,
        "epochs_run": epoch,
        "params": n_params,
        "train_time_s": meta["train_time_s"],
        "eval_time_s": meta["eval_time_s"],
        "num_devices": n_dev,
    }
    if K == 1:
        r = reps[0]
        results = {"seed": seeds[0], "test": r["best"]["test"], "valid": r["best"]["valid"],
                   "best_epoch": r["best_epoch"], **common}
    else:
        test_m, test_s = mean_std([r["best"]["test"] for r in reps])
        valid_m, valid_s = mean_std([r["best"]["valid"] for r in reps])
        results = {
            "seeds": seeds,
            "test": test_m,
            "test_std": test_s,
            "valid": valid_m,
            "valid_std": valid_s,
            "best_epoch": [r["best_epoch"] for r in reps],
            "per_seed": [
                {"seed": s, "test": r["best"]["test"], "valid": r["best"]["valid"],
                 "best_epoch": r["best_epoch"]}
                for s, r in zip(seeds, reps)
            ],
            **common,
        }
    write_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
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
    if task == "rerank":
        from diffrec_jax import rerank_train

        return rerank_train.train_and_evaluate(config, workdir)
    raise ValueError(f"config.task must be 'interactions' or 'sequential', got {task!r}")
