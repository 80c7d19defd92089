"""Benchmark suite of diffrec_jax: every model's speed and memory, reverse steps, scaling, top-k.

A script, never a timed unit test. Run from the repository root::

    python experiments/bench_suite.py --quick --out=/tmp/bench_suite_quick     # < 2 min, tiny sizes
    python experiments/bench_suite.py --out=results/bench_suite                  # the full suite
    python experiments/bench_suite.py --parts=steps,topk                         # some parts only

Parts (``--parts``, all by default); each appends its results to ``bench_suite.json`` and
``bench_suite.md`` in ``--out`` as soon as it ends, with PNG plots beside them:

1. ``models``: for every registered interaction model with a ``configs/<name>_ml1m.py``
   (variants such as T-DiffRec included): compile time of the train step (fit time for
   closed-form models), steady-state training throughput (users/s over timed steps after a
   warm-up; a full epoch in the full suite), full-ranking evaluation latency per user, peak memory
   (the process's resident-set high-water mark, reset before each model; GPU peak bytes when a
   GPU is present), parameters, and achieved GFLOP/s from XLA's cost analysis beside a float32
   matmul ceiling measured in the same run. A model whose module is missing or that fails is
   listed with the reason.
2. ``steps``: test Recall@20 / NDCG@20 and evaluation time of a trained DiffRec (loaded from
   ``--diffrec_run``, else trained for a few epochs) against the number ``n`` of reverse steps
   run from the user's row (``t = n-1 .. 0``), with the projected fast path and the generic
   sampler, plus the plain x0 prediction at ``t = 0``. Plot ``steps.png``.
3. ``scaling``: per-user training-step and evaluation cost of a DiffRec-shaped model on random
   sparse data, along an items axis and a users axis from 1k to 1M (log-spaced), with the cost
   exponent fitted by least squares on log-log axes. A size whose estimated memory does not fit
   (``--mem_budget_gb`` or the memory available now, whichever is smaller) is reported and ends
   its axis. Evaluation uses the chunked exact top-k above ``--chunk_size`` items. Plot
   ``scaling.png``.
4. ``topk``: for 1e4 .. 1e6 items, ``jax.lax.top_k`` against the library's exact chunked top-k
   (several chunk sizes), ``jax.lax.approx_max_k`` (recall target 0.95, with its measured recall
   against the exact top-k) and a streamed top-k that never materialises the ``[B, I]`` score
   matrix (scan over item chunks of an output layer). Plot ``topk.png``.

5. ``seeds``: the cost of K seeds in one vmapped program (``config.num_seeds = K``) against K
   separate runs, for DiffRec on ML-1M clean: seconds per training epoch (steady state, after the
   compiling epoch) and per evaluation of all replicas, for K = 1 and K = 3 (``--seeds_k``).

Speed is reported as measured in this run and as ratios of numbers measured in this same run
(achieved / ceiling GFLOP/s, method / ``lax.top_k`` time, generic / projected sampler time);
load averages are recorded at the start and end of every part, because the machine may be shared.
"""

from __future__ import annotations

import datetime
import gc
import glob
import importlib
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import types
from typing import Any, Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from diffrec_jax import metrics as M  # noqa: E402
from diffrec_jax import models, samplers, schedules, train  # noqa: E402
from diffrec_jax.data import load_diffrec_npy, make_synthetic  # noqa: E402

PARTS = ("models", "steps", "scaling", "topk", "seeds")
STEP_COUNTS = (1, 2, 5, 10, 20, 40)
TARGET_CEILING_FRACTION = 0.60  # DiffRec on ML-1M clean: a training epoch at >= 60 % of the ceiling
MB = 1024.0**2
GB = 1024.0**3


# ----------------------------------------------------------------------------------------------
# Environment, timing and memory helpers
# ----------------------------------------------------------------------------------------------


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (NaNs where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


def gpu_devices() -> list:
    """The GPU devices JAX sees (empty on a CPU-only machine)."""
    return [d for d in jax.devices() if d.platform == "gpu"]


def gpu_note() -> str:
    """One line saying whether a GPU took part in this session."""
    gpus = gpu_devices()
    if not gpus:
        return "no GPU in this session: every number below is CPU-only"
    return f"GPU present: {', '.join(str(d) for d in gpus)}"


def environment() -> dict:
    """Machine facts recorded with every result: devices, cores, versions, load average."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "devices": [str(d) for d in jax.devices()],
        "backend": jax.default_backend(),
        "gpu": gpu_note(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "loadavg_start": loadavg(),
    }


def xla_flops(compiled) -> float:
    """FLOPs of one call of an AOT-compiled function, from XLA's cost analysis (NaN if absent)."""
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (some backends do not implement it)
        return float("nan")
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return float("nan")
    return float(ca.get("flops", float("nan")))


def block(tree):
    """Waits for every array of ``tree`` and returns it."""
    return jax.block_until_ready(tree)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Calls ``fn()``, waits for its arrays and returns ``(result, seconds)``."""
    t0 = time.perf_counter()
    out = block(fn())
    return out, time.perf_counter() - t0


def time_repeats(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        block(fn())
    return [timed(fn)[1] for _ in range(max(1, repeats))]


def matmul_ceiling(n: int = 2048, reps: int = 10) -> float:
    """Best float32 GFLOP/s of an ``n x n x n`` jitted matmul, measured now on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    times = time_repeats(lambda: f(a, a), reps)
    return 2.0 * n**3 / min(times) / 1e9


def reset_peak_rss() -> bool:
    """Resets the process's resident-set high-water mark (Linux ``clear_refs``); False if it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Process max RSS (``resource.getrusage``; since the last :func:`reset_peak_rss`)."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru if sys.platform == "darwin" else ru * 1024)


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the first GPU (``memory_stats``), or None on CPU / when unavailable."""
    for d in gpu_devices():
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001
            return None
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"])
    return None


def mem_available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------------------------
# Small analysis functions (unit-tested)
# ----------------------------------------------------------------------------------------------


def fit_power_law(sizes: Sequence[float], costs: Sequence[float]) -> dict:
    """Least-squares fit of ``log cost = exponent * log size + log prefactor``.

    Args:
      sizes: positive sizes (items or users).
      costs: positive costs (seconds), one per size.

    Returns:
      ``{"exponent", "prefactor", "r2", "n_points"}``; NaNs when fewer than two points.
    """
    x = np.log(np.asarray(sizes, np.float64))
    y = np.log(np.asarray(costs, np.float64))
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2 or np.ptp(x) == 0:
        return {"exponent": float("nan"), "prefactor": float("nan"), "r2": float("nan"),
                "n_points": int(x.size)}
    a = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(a, y, rcond=None)
    resid = y - (slope * x + intercept)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else 1.0
    return {"exponent": float(slope), "prefactor": float(np.exp(intercept)), "r2": r2,
            "n_points": int(x.size)}


def topk_recall(approx_idx, exact_idx) -> float:
    """Mean over rows of ``|approx_row ∩ exact_row| / k`` (the recall of an approximate top-k).

    Args:
      approx_idx: ``[B, k]`` item indices from the approximate method.
      exact_idx: ``[B, k]`` item indices of the exact top-k.
    """
    a = np.asarray(approx_idx)
    e = np.asarray(exact_idx)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(f"expected two [B, k] arrays of one shape, got {a.shape} and {e.shape}")
    k = e.shape[1]
    return float(np.mean([np.intersect1d(a[r], e[r]).size / k for r in range(e.shape[0])]))


def truncate_schedule(schedule: schedules.Schedule, n: int) -> schedules.Schedule:
    """The first ``n`` steps of a VP schedule (every field sliced), so a chain runs ``t = n-1..0``."""
    if not 1 <= n <= schedule.num_steps:
        raise ValueError(f"n must be in [1, {schedule.num_steps}], got {n}")
    return schedules.Schedule(*[f[:n] for f in schedule])


def synthetic_rows(n_users: int, n_items: int, *, mean_len: float = 68.0, max_len: int = 256,
                   alpha: float = 2.0, seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """Cheap random sparse interaction rows: ``int32 [U, L]`` item ids, padded with ``n_items``.

    Lengths are ``Poisson(mean_len)`` clipped to ``[1, min(max_len, n_items // 2)]``; items are
    ``floor(n_items * u ** alpha)`` with ``u ~ U(0, 1)``, a power-law popularity (low ids popular).
    Repeats inside a row are possible and harmless (the dense row is a 0/1 scatter). Generated in
    chunks of users, so the temporary memory stays ``O(chunk x L)``.
    """
    rng = np.random.default_rng(seed)
    cap = max(1, min(max_len, n_items // 2))
    lengths = np.clip(rng.poisson(mean_len, n_users), 1, cap).astype(np.int32)
    width = int(lengths.max())
    out = np.empty((n_users, width), np.int32)
    cols = np.arange(width, dtype=np.int32)[None, :]
    for s in range(0, n_users, chunk):
        e = min(n_users, s + chunk)
        u = rng.random((e - s, width), dtype=np.float32)
        items = np.minimum((n_items * u**alpha).astype(np.int64), n_items - 1).astype(np.int32)
        out[s:e] = np.where(cols < lengths[s:e, None], items, n_items)
    return out


def densify(rows_BxL: jnp.ndarray, n_items: int) -> jnp.ndarray:
    """0/1 float32 ``[B, n_items]`` rows from padded item lists (pad id ``n_items`` is dropped)."""
    b = rows_BxL.shape[0]
    r = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], rows_BxL.shape)
    return jnp.zeros((b, n_items), jnp.float32).at[r, rows_BxL].set(1.0, mode="drop")


# ----------------------------------------------------------------------------------------------
# Data and configs
# ----------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str) -> str | None:
    """``data_dir`` if it holds DiffRec files (relative to the cwd or to the repository root)."""
    if not data_dir:
        return None
    for base in (os.getcwd(), ROOT):
        path = os.path.join(base, data_dir)
        if os.path.exists(os.path.join(path, "train_list.npy")):
            return os.path.abspath(path)
    return None


def load_ml1m(data_dir: str) -> tuple[Any, str]:
    """ML-1M clean from ``data_dir``, else synthetic data of its shape; returns ``(data, note)``."""
    path = resolve_data_dir(data_dir)
    if path:
        return load_diffrec_npy(path), f"ml-1m_clean from {path}"
    data = make_synthetic(5949, 2810, mean_items_per_user=68, seed=0, name="synthetic_ml1m_shape")
    return data, f"{data_dir!r} absent: synthetic data of ML-1M clean's shape (5949 x 2810)"


def model_configs(names: Sequence[str] | None = None) -> list[dict]:
    """Every ``configs/*_ml1m.py`` plus one row per registered model without such a config.

    Returns:
      dicts ``{"label", "model", "config" (or None), "reason" (why skipped, or None)}``;
      ``names`` keeps only these labels.
    """
    rows, covered = [], set()
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*_ml1m.py"))):
        stem = os.path.basename(path)[: -len(".py")]
        label = stem[: -len("_ml1m")]
        try:
            cfg = importlib.import_module(f"configs.{stem}").get_config()
            name = cfg.model.name
        except Exception as e:  # noqa: BLE001
            rows.append({"label": label, "model": label, "config": None,
                         "reason": f"configs/{stem}.py fails: {_short(e)}"})
            continue
        if cfg.get("task", "interactions") != "interactions":
            continue
        covered.add(name)
        rows.append({"label": label, "model": name, "config": cfg, "reason": None})
    for name in models.available():
        if name not in covered:
            rows.append({"label": name, "model": name, "config": None,
                         "reason": f"no configs/{name}_ml1m.py"})
    if names:
        rows = [r for r in rows if r["label"] in names]
    return rows


def data_for_config(cfg, data):
    """Applies the config's data transforms (T-DiffRec time weights) to already loaded data."""
    tw = cfg.data.get("time_weights")
    if tw:
        from diffrec_jax.data.temporal import with_time_weights

        return with_time_weights(data, float(tw[0]), float(tw[1]))
    return data


def _short(e: BaseException, limit: int = 160) -> str:
    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


# ----------------------------------------------------------------------------------------------
# Evaluation plumbing shared by the parts
# ----------------------------------------------------------------------------------------------


class ScoreModel:
    """The evaluator's model contract around a plain ``score(params, model_state, x, keys)``."""

    needs_user_ids = False

    def __init__(self, score_fn: Callable):
        self.score = score_fn


def compile_eval(model, ks, params, model_state, dd, eidx, emask, key):
    """AOT-compiles the evaluator's step; returns ``(compiled, compile_s, flops_per_batch)``."""
    step = train.make_eval_step(model, tuple(ks))
    args = (params, model_state, (dd.x_train, dd.truth_valid, dd.truth_test))
    t0 = time.perf_counter()
    compiled = step.lower(*args, eidx[0], emask[0], key).compile()
    return compiled, time.perf_counter() - t0, xla_flops(compiled)


def eval_pass(compiled, params, model_state, dd, eidx, emask, key):
    """One full-ranking pass over the user batches; returns the summed ``(valid, test)`` metrics."""
    ddt = (dd.x_train, dd.truth_valid, dd.truth_test)
    acc = None
    for b in range(eidx.shape[0]):
        out = compiled(params, model_state, ddt, eidx[b], emask[b], key)
        acc = out if acc is None else jax.tree.map(jnp.add, acc, out)
    return jax.device_get(block(acc))


# ----------------------------------------------------------------------------------------------
# Part 1: models
# ----------------------------------------------------------------------------------------------


def bench_model(cfg, data, *, train_steps: int = 0, repeats: int = 3, eval_repeats: int = 2,
                seed: int = 0) -> dict:
    """Speed and memory of one model on ``data`` (see the module docstring, part 1).

    Args:
      cfg: the model's config (its ``model``, ``optim``, ``train.batch_size``, ``eval`` groups).
      data: the dataset (config data transforms already applied).
      train_steps: timed steps per repeat; 0 means one full epoch.
      repeats: timed repeats of the training steps (median reported), after one warm-up.
      eval_repeats: timed full evaluations (median), after one warm-up.
      seed: PRNG seed of init, data order and keys.
    """
    reset_ok = reset_peak_rss()
    rss0 = peak_rss_bytes()
    key = jax.random.key(seed)
    k_init, k_train, k_eval = jax.random.split(key, 3)
    U = data.n_users
    row: dict = {"users": U, "items": data.n_items}
    t0 = time.perf_counter()
    model = models.get_model(cfg, data)
    row["setup_s"] = time.perf_counter() - t0  # e.g. L-DiffRec's k-means
    dd = train.DeviceData.from_data(data)
    if getattr(model, "closed_form", False):
        (params, model_state), fit_s = timed(lambda: model.fit(k_init))
        row.update(kind="closed-form", fit_s=fit_s)
    else:
        tx = model.optimizer(cfg.optim) if hasattr(model, "optimizer") else train.make_optimizer(cfg.optim)
        state = train.init_state(model, tx, k_init)
        step = train.make_train_step(model, tx)
        bs = min(int(cfg.train.batch_size), U)
        idx, mask = train.padded_batches(np.random.default_rng(seed).permutation(U), bs)
        nb = idx.shape[0]
        keys = jax.random.split(k_train, nb)
        t0 = time.perf_counter()
        compiled = step.lower(state, dd.x_train, idx[0], mask[0], keys[0]).compile()
        row["compile_train_s"] = time.perf_counter() - t0
        flops_step = xla_flops(compiled)
        n_steps = nb if train_steps <= 0 else min(train_steps, nb)
        users = int(mask[:n_steps].sum())
        holder = {"state": state}

        def run():
            s, losses = holder["state"], []
            for b in range(n_steps):
                s, loss = compiled(s, dd.x_train, idx[b], mask[b], keys[b])
                losses.append(loss)
            holder["state"] = s
            return s, losses

        times = time_repeats(run, repeats)
        t = float(np.median(times))
        state = holder["state"]
        params, model_state = state.params, state.model_state
        row.update(
            kind="trained", batch_size=bs, steps_per_epoch=nb, timed_steps=n_steps,
            full_epoch=n_steps == nb, train_s=t, train_s_all=times, train_users_per_s=users / t,
            train_gflop_per_step=flops_step / 1e9, train_gflops_per_s=flops_step * n_steps / t / 1e9,
            epoch_s_est=t * nb / n_steps,
        )
    ks = tuple(int(k) for k in cfg.eval.topk)
    eidx, emask = train.padded_batches(np.arange(U), min(int(cfg.eval.batch_size), U))
    compiled_eval, ce_s, eflops = compile_eval(model, ks, params, model_state, dd, eidx, emask, k_eval)
    etimes = time_repeats(
        lambda: eval_pass(compiled_eval, params, model_state, dd, eidx, emask, k_eval), eval_repeats
    )
    et = float(np.median(etimes))
    row.update(
        compile_eval_s=ce_s, eval_s=et, eval_s_all=etimes, eval_ms_per_user=et / U * 1e3,
        eval_gflops_per_s=eflops * eidx.shape[0] / et / 1e9, eval_batch_size=int(eidx.shape[1]),
        params=models.count_params(params),
        rss_before_mb=rss0 / MB, peak_rss_mb=peak_rss_bytes() / MB,
        peak_rss_scope="this model (high-water mark reset before it)" if reset_ok
        else "process maximum so far (could not reset)",
    )
    gpu_peak = device_peak_bytes()
    if gpu_peak is not None:
        row["gpu_peak_mb"] = gpu_peak / MB
    return row


def quick_data() -> tuple[Any, str]:
    """The tiny synthetic dataset of ``--quick`` runs, with its note."""
    return (make_synthetic(600, 400, mean_items_per_user=30, seed=0, name="synthetic_quick"),
            "quick: synthetic 600 users x 400 items")


def part_models(data_dir: str, quick: bool, names: Sequence[str] | None, seed: int) -> dict:
    """Part 1 over every model config; failures become rows with the reason."""
    if quick:
        data, note = quick_data()
        kw = dict(train_steps=2, repeats=1, eval_repeats=1)
    else:
        data, note = load_ml1m(data_dir)
        kw = dict(train_steps=0, repeats=3, eval_repeats=2)
    ceiling_before = matmul_ceiling(1024 if quick else 2048, 5 if quick else 10)
    rows = []
    for spec in model_configs(names):
        row = {"label": spec["label"], "model": spec["model"]}
        if spec["config"] is None:
            row["status"] = f"skipped: {spec['reason']}"
        else:
            try:
                row.update(bench_model(spec["config"], data_for_config(spec["config"], data),
                                       seed=seed, **kw))
                row["status"] = "ok"
            except Exception as e:  # noqa: BLE001  (one failing model must not stop the suite)
                row["status"] = f"failed: {_short(e)}"
        detail = ""
        if row["status"] == "ok":
            detail = (f", fit {row['fit_s']:.2f}s" if "fit_s" in row
                      else f", {row['train_users_per_s']:.0f} users/s")
            detail += f", eval {row['eval_ms_per_user']:.3f} ms/user"
        print(f"[models] {row['label']}: {row['status']}{detail}", flush=True)
        rows.append(row)
        gc.collect()
    ceiling_after = matmul_ceiling(1024 if quick else 2048, 5 if quick else 10)
    ceiling = max(ceiling_before, ceiling_after)
    for row in rows:
        if "train_gflops_per_s" in row:
            row["train_ceiling_fraction"] = row["train_gflops_per_s"] / ceiling
        if "eval_gflops_per_s" in row:
            row["eval_ceiling_fraction"] = row["eval_gflops_per_s"] / ceiling
    target = None
    for row in rows:
        if row["label"] == "diffrec" and "train_ceiling_fraction" in row:
            target = {
                "what": f"DiffRec training epoch at >= {TARGET_CEILING_FRACTION:.0%} of the matmul ceiling",
                "data": note,
                "full_epoch": row.get("full_epoch"),
                "fraction": row["train_ceiling_fraction"],
                "met": bool(row["train_ceiling_fraction"] >= TARGET_CEILING_FRACTION),
            }
    return {"data": note, "matmul_ceiling_gflops_per_s": ceiling,
            "matmul_ceiling_before_after": [ceiling_before, ceiling_after], "rows": rows,
            "target": target}


# ----------------------------------------------------------------------------------------------
# Part 2: accuracy and time against the number of reverse steps
# ----------------------------------------------------------------------------------------------


def _fill_params(template, restored: dict):
    """``template`` (the model's params) with every leaf taken from a restored nested dict."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for path, leaf in leaves:
        node = restored
        for p in path:
            name = str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))))
            if name not in node:
                raise KeyError(f"restored params lack {'/'.join(str(q) for q in path)}")
            node = node[name]
        arr = jnp.asarray(node, leaf.dtype)
        if arr.shape != leaf.shape:
            raise ValueError(f"restored {path}: shape {arr.shape} != model's {leaf.shape}")
        out.append(arr)
    return jax.tree_util.tree_unflatten(treedef, out)


def diffrec_config_from_run(run_dir: str):
    """configs/diffrec_ml1m.py updated with the ``model``/``diffusion``/``sampling`` fields of a
    run's ``config.json`` (when the run directory has one)."""
    from configs import diffrec_ml1m

    cfg = diffrec_ml1m.get_config()
    path = os.path.join(run_dir, "config.json") if run_dir else ""
    if path and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        with cfg.unlocked():
            for group in ("model", "diffusion", "sampling"):
                for k, v in saved.get(group, {}).items():
                    if k in cfg[group]:
                        cfg[group][k] = tuple(v) if isinstance(v, list) else v
    return cfg


def restore_diffrec(run_dir: str, cfg, data, key) -> tuple[Any, Any, Any, str]:
    """A trained DiffRec from ``run_dir/best`` (copied to a temp folder first: the run directory
    is never written). Returns ``(model, params, model_state, note)``; raises if impossible."""
    from diffrec_jax.checkpointing import Checkpointer

    best = os.path.join(run_dir, "best")
    if not os.path.isdir(best):
        raise FileNotFoundError(f"no {best}")
    model = models.get_model(cfg, data)
    _, template, model_state = model.init(key)
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "best")
        shutil.copytree(best, copy)
        ck = Checkpointer(copy, max_to_keep=1)
        try:
            restored, meta = ck.restore_untyped()
        finally:
            ck.close()
    params = _fill_params(template, restored)
    return model, params, model_state, f"restored {best} (epoch {meta.get('epoch')})"


def train_diffrec(cfg, data, epochs: int, key) -> tuple[Any, Any, Any, str]:
    """Fallback: trains DiffRec for ``epochs`` epochs; returns ``(model, params, state, note)``."""
    model = models.get_model(cfg, data)
    tx = train.make_optimizer(cfg.optim)
    state = train.init_state(model, tx, key)
    step = train.make_train_step(model, tx)
    dd = train.DeviceData.from_data(data)
    bs = min(int(cfg.train.batch_size), data.n_users)
    for e in range(epochs):
        idx, mask = train.padded_batches(np.random.default_rng([1, e]).permutation(data.n_users), bs)
        for b in range(idx.shape[0]):
            state, _ = step(state, dd.x_train, idx[b], mask[b], jax.random.fold_in(key, e * 10**6 + b))
    block(state)
    return model, state.params, state.model_state, f"no trained run: trained {epochs} epoch(s) here"


def chain_score_fn(model, n: int, path: str) -> Callable:
    """``score(params, model_state, x, keys)`` running the last ``n`` reverse steps of DiffRec's
    deterministic chain from the user's row (``t = n-1 .. 0``).

    ``path``: ``"projected"`` (:func:`diffrec_jax.models.diffrec.projected_reverse` on the first
    ``n`` steps of the schedule), ``"generic"`` (:func:`diffrec_jax.samplers.ancestral_sample`
    with ``start_step = n-1``, no noise) or ``"x0"`` (the denoiser's x0 prediction at ``t = 0``,
    one call; mathematically the same as ``n = 1``).
    """
    from flax import nnx

    from diffrec_jax.models.diffrec import projected_reverse, projected_reverse_applies

    graphdef, schedule = model.graphdef, model.schedule
    if schedule is None:
        raise ValueError("the steps benchmark needs a diffusion schedule (noise_scale > 0)")
    if path == "projected" and not projected_reverse_applies(model):
        raise ValueError("the projected path needs a deterministic x0 chain without row norm")
    sched_n = truncate_schedule(schedule, n) if path == "projected" else None

    def score(params, model_state, x, keys):
        del model_state, keys
        denoiser = nnx.merge(graphdef, params)
        if path == "projected":
            return projected_reverse(denoiser, sched_n, x)
        if path == "generic":
            return samplers.ancestral_sample(
                lambda xt, t_B, cond=None: denoiser(xt, t_B), schedule, x, None,
                mean_type=model.mean_type, noise=False, start_step=n - 1,
            )
        if path == "x0":
            return denoiser(x, jnp.zeros((x.shape[0],), jnp.int32))
        raise ValueError(f"unknown path {path!r}")

    return score


def eval_steps(model, params, model_state, data, *, ns: Sequence[int] = STEP_COUNTS,
               users: int = 0, generic_ns: Sequence[int] | None = None, ks=(10, 20, 50, 100),
               average: str = "all", repeats: int = 2, seed: int = 0) -> dict:
    """Accuracy and evaluation time against the number of reverse steps (part 2).

    Args:
      model, params, model_state: a DiffRec (``model.init`` already called) and its parameters.
      data: the dataset; ``users > 0`` evaluates only its first ``users`` users.
      ns: step counts ``n``; each runs ``t = n-1 .. 0`` from the user's row.
      generic_ns: the ``n`` also run with the generic sampler (default: all of ``ns``).
      repeats: timed passes of the projected path and of x0 (median) after the pass that gives
        the metrics; the generic sampler, slow, is timed on that single pass (compile apart).

    Returns:
      ``{"rows": [one dict per n], "x0_t0": {...}, "users": U, "primary_path": ...}``. Each row
      has the test and validation metrics of the primary path (projected, or generic where the
      projected identity does not hold), its evaluation time, and, where run, the generic
      sampler's time and its largest metric difference to the primary path.
    """
    from diffrec_jax.models.diffrec import projected_reverse_applies

    primary = "projected" if projected_reverse_applies(model) else "generic"
    U = data.n_users if users <= 0 else min(users, data.n_users)
    dd = train.DeviceData.from_data(data)
    eidx, emask = train.padded_batches(np.arange(U), min(2048, U))
    key = jax.random.key(seed)
    generic_ns = list(ns) if generic_ns is None else list(generic_ns)

    def run(path: str, n: int, timed_repeats: int) -> dict:
        sm = ScoreModel(chain_score_fn(model, n, path))
        compiled, c_s, flops = compile_eval(sm, ks, params, model_state, dd, eidx, emask, key)
        passes = lambda: eval_pass(compiled, params, model_state, dd, eidx, emask, key)  # noqa: E731
        (acc_v, acc_t), t = timed(passes)
        if timed_repeats > 0:  # the first pass (metrics) was a warm-up: time the repeats instead
            t = float(np.median(time_repeats(passes, timed_repeats, warmup=0)))
        return {
            "test": M.finalize(acc_t, U, average), "valid": M.finalize(acc_v, U, average),
            "eval_s": t, "compile_s": c_s, "gflop": flops * eidx.shape[0] / 1e9,
        }

    rows = []
    for n in ns:
        p = run(primary, n, repeats)
        row = {
            "n": int(n), "recall@20": p["test"]["recall@20"], "ndcg@20": p["test"]["ndcg@20"],
            "valid_recall@20": p["valid"]["recall@20"], "eval_s": p["eval_s"],
            "eval_ms_per_user": p["eval_s"] / U * 1e3, "compile_s": p["compile_s"],
            "gflop": p["gflop"],
        }
        if n in generic_ns:
            g = p if primary == "generic" else run("generic", n, 0)
            row.update(
                generic_eval_s=g["eval_s"], generic_ms_per_user=g["eval_s"] / U * 1e3,
                generic_gflop=g["gflop"], generic_over_projected_time=g["eval_s"] / p["eval_s"],
                generic_max_abs_metric_diff=max(
                    abs(g["test"][k] - p["test"][k]) for k in ("recall@20", "ndcg@20")
                ),
            )
        print(f"[steps] n={n}: test recall@20={row['recall@20']:.4f} ndcg@20={row['ndcg@20']:.4f} "
              f"eval {row['eval_s']:.2f}s" + (f" (generic {row['generic_eval_s']:.2f}s)"
                                               if "generic_eval_s" in row else ""), flush=True)
        rows.append(row)
    x0 = run("x0", 1, repeats)
    x0_row = {"recall@20": x0["test"]["recall@20"], "ndcg@20": x0["test"]["ndcg@20"],
              "valid_recall@20": x0["valid"]["recall@20"], "eval_s": x0["eval_s"],
              "eval_ms_per_user": x0["eval_s"] / U * 1e3}
    return {"rows": rows, "x0_t0": x0_row, "users": U, "primary_path": primary}


def part_steps(data_dir: str, run_dir: str, quick: bool, fallback_epochs: int, seed: int) -> dict:
    """Part 2: loads (or trains) DiffRec and evaluates it for every ``n`` in ``STEP_COUNTS``."""
    data, note = load_ml1m(data_dir)
    cfg = diffrec_config_from_run(run_dir)
    key = jax.random.key(seed)
    try:
        model, params, ms, src = restore_diffrec(run_dir, cfg, data, key)
    except Exception as e:  # noqa: BLE001
        model, params, ms, src = train_diffrec(cfg, data, fallback_epochs, key)
        src = f"{src} ({_short(e)})"
    print(f"[steps] {src}", flush=True)
    T = int(cfg.diffusion.steps)
    ns = [n for n in STEP_COUNTS if n <= T]
    res = eval_steps(
        model, params, ms, data, ns=ns, users=256 if quick else 0,
        generic_ns=[ns[0], ns[-1]] if quick else ns, ks=tuple(cfg.eval.topk),
        average=cfg.eval.average, repeats=1 if quick else 2, seed=seed,
    )
    res.update(data=note, params_source=src, diffusion_steps=T)
    return res


# ----------------------------------------------------------------------------------------------
# Part 3: scaling on random sparse data
# ----------------------------------------------------------------------------------------------


def scaling_config(hidden: int, steps: int = 40):
    """The ML-1M DiffRec config with one hidden width ``hidden`` (``dims = (hidden,)``)."""
    from configs import diffrec_ml1m

    cfg = diffrec_ml1m.get_config()
    with cfg.unlocked():
        cfg.model.dims = (int(hidden),)
        cfg.diffusion.steps = int(steps)
    return cfg


def estimate_bytes(n_users: int, n_items: int, hidden: int, batch: int, eval_batch: int,
                   row_width: int = 128) -> int:
    """Rough upper estimate of the memory one scaling point needs (float32 everywhere).

    Parameters ``P ~ 2 I H``: params, two Adam moments, gradients, updates and the new params
    (about 7 P); about 12 ``[B, I]`` training temporaries and 6 ``[B_eval, I]`` evaluation ones;
    the padded rows on host and device (``2 U L``).
    """
    p = 2 * n_items * hidden + n_items
    return int(4 * (7 * p + 12 * batch * n_items + 6 * eval_batch * n_items + 2 * n_users * row_width))


def make_sparse_train_step(model, tx, n_items: int):
    """Jitted ``(state, rows_UxL, idx_B, key) -> (state, loss)``: densifies the batch's rows on
    device (the ``[U, I]`` matrix never exists), then the same update as the library's step."""

    def step(state: train.TrainState, rows, idx_B, key):
        x = densify(rows[idx_B], n_items)
        mask = jnp.ones(idx_B.shape, bool)

        def loss_fn(params):
            return model.loss(params, state.model_state, x, mask, key)

        (loss, (model_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return train.TrainState(state.step + 1, params, opt_state, model_state), loss

    return jax.jit(step, donate_argnums=0)


def make_sparse_eval_step(model, n_items: int, k: int, chunk_size: int):
    """Jitted ``(params, model_state, rows, idx_B, key) -> top-k [B, k]``: score, mask the
    history, and the exact top-k, chunked when ``n_items > chunk_size``."""

    def step(params, model_state, rows, idx_B, key):
        x = densify(rows[idx_B], n_items)
        keys = jax.random.split(key, idx_B.shape[0])
        scores = model.score(params, model_state, x, keys)
        chunk = chunk_size if n_items > chunk_size else None
        return M.topk_indices(M.mask_scores(scores, x), k, chunk_size=chunk)

    return jax.jit(step)


def bench_scaling_point(n_users: int, n_items: int, *, hidden: int, batch: int, eval_batch: int,
                        train_steps: int, eval_batches: int, k: int, chunk_size: int,
                        diffusion_steps: int = 40, seed: int = 0) -> dict:
    """Per-user training and evaluation cost of a DiffRec ``[I -> hidden -> I]`` at one size."""
    from diffrec_jax.models.diffrec import DiffRec

    reset_ok = reset_peak_rss()
    rng = np.random.default_rng(seed)
    rows_np, gen_s = timed(lambda: synthetic_rows(n_users, n_items, seed=seed))
    rows = jnp.asarray(rows_np)
    del rows_np
    cfg = scaling_config(hidden, diffusion_steps)
    model = DiffRec(cfg, types.SimpleNamespace(n_items=n_items, n_users=n_users))
    tx = train.make_optimizer(cfg.optim)
    key = jax.random.key(seed)
    state = block(train.init_state(model, tx, key))
    n_params = models.count_params(state.params)
    b = min(batch, n_users)
    tidx = rng.integers(0, n_users, (train_steps + 1, b)).astype(np.int32)
    keys = jax.random.split(key, train_steps + 1)
    step = make_sparse_train_step(model, tx, n_items)
    t0 = time.perf_counter()
    compiled = step.lower(state, rows, tidx[0], keys[0]).compile()
    compile_train = time.perf_counter() - t0
    tflops = xla_flops(compiled)
    state, _ = block(compiled(state, rows, tidx[0], keys[0]))  # warm-up
    times = []
    for s in range(1, train_steps + 1):
        (state, _), t = timed(lambda: compiled(state, rows, tidx[s], keys[s]))
        times.append(t)
    t_step = float(np.median(times))

    be = min(eval_batch, n_users)
    eidx = rng.integers(0, n_users, (eval_batches + 1, be)).astype(np.int32)
    evs = make_sparse_eval_step(model, n_items, k, chunk_size)
    t0 = time.perf_counter()
    ecompiled = evs.lower(state.params, state.model_state, rows, eidx[0], key).compile()
    compile_eval = time.perf_counter() - t0
    eflops = xla_flops(ecompiled)
    block(ecompiled(state.params, state.model_state, rows, eidx[0], key))  # warm-up
    etimes = [timed(lambda: ecompiled(state.params, state.model_state, rows, eidx[i], key))[1]
              for i in range(1, eval_batches + 1)]
    t_eval = float(np.median(etimes))
    out = {
        "users": n_users, "items": n_items, "hidden": hidden, "params": n_params,
        "train_batch": b, "eval_batch": be, "data_gen_s": gen_s,
        "compile_train_s": compile_train, "compile_eval_s": compile_eval,
        "train_step_s": t_step, "train_us_per_user": t_step / b * 1e6,
        "train_gflops_per_s": tflops / t_step / 1e9,
        "eval_batch_s": t_eval, "eval_us_per_user": t_eval / be * 1e6,
        "eval_gflops_per_s": eflops / t_eval / 1e9,
        "epoch_s_est": t_step / b * n_users, "full_eval_s_est": t_eval / be * n_users,
        "chunked_topk": n_items > chunk_size,
        "peak_rss_mb": peak_rss_bytes() / MB if reset_ok else float("nan"),
    }
    del state, rows, compiled, ecompiled
    gc.collect()
    return out


def run_axis(sizes: Sequence[int], make_point: Callable[[int], tuple[int, int]], label: str, *,
             budget_bytes: int, point_kw: dict) -> dict:
    """Runs one scaling axis until a size does not fit; fits the exponents of per-user costs."""
    points, stopped = [], None
    for size in sizes:
        n_users, n_items = make_point(size)
        need = estimate_bytes(n_users, n_items, point_kw["hidden"], point_kw["batch"],
                              point_kw["eval_batch"])
        avail = mem_available_bytes()
        limit = budget_bytes if avail is None else min(budget_bytes, avail)
        if need > limit:
            stopped = (f"{label}={size}: needs about {need / GB:.1f} GB, more than the "
                       f"{limit / GB:.1f} GB allowed (budget {budget_bytes / GB:.0f} GB, available "
                       f"{'?' if avail is None else f'{avail / GB:.1f}'} GB); axis stopped")
            print(f"[scaling] {stopped}", flush=True)
            break
        try:
            p = bench_scaling_point(n_users, n_items, **point_kw)
        except Exception as e:  # noqa: BLE001  (e.g. out of memory on a shared machine)
            stopped = f"{label}={size}: failed ({_short(e)}); axis stopped"
            print(f"[scaling] {stopped}", flush=True)
            break
        p["est_mb"] = need / MB
        print(f"[scaling] {label}={size}: train {p['train_us_per_user']:.1f} us/user, "
              f"eval {p['eval_us_per_user']:.1f} us/user", flush=True)
        points.append(p)
    xs = [p[label] for p in points]
    fits = {}
    for cost in ("train_us_per_user", "eval_us_per_user"):
        ys = [p[cost] for p in points]
        fits[cost] = {"all": fit_power_law(xs, ys), "largest_3": fit_power_law(xs[-3:], ys[-3:])}
    return {"points": points, "fits": fits, "stopped": stopped}


def log_sizes(lo: float, hi: float, per_decade: int = 2) -> list[int]:
    """Log-spaced integer sizes from ``lo`` to ``hi`` inclusive, ``per_decade`` per decade."""
    n = int(round(math.log10(hi / lo) * per_decade)) + 1
    return [int(round(v)) for v in np.logspace(math.log10(lo), math.log10(hi), n)]


def part_scaling(quick: bool, hidden: int, budget_gb: float, chunk_size: int, seed: int) -> dict:
    """Part 3: an items axis (users fixed) and a users axis (items fixed)."""
    if quick:
        item_sizes, user_sizes = [1000, 4000, 16000], [1000, 4000, 16000]
        fixed_users, fixed_items = 2000, 2000
        kw = dict(batch=64, eval_batch=128, train_steps=2, eval_batches=2)
    else:
        item_sizes, user_sizes = log_sizes(1e3, 1e6), log_sizes(1e3, 1e6)
        fixed_users, fixed_items = 10000, 10000
        kw = dict(batch=64, eval_batch=128, train_steps=5, eval_batches=3)
    # quick: small chunks, so that the chunked top-k path runs at its tiny sizes too
    kw.update(hidden=hidden, k=100, chunk_size=min(chunk_size, 4096) if quick else chunk_size, seed=seed)
    budget = int(budget_gb * GB)
    items = run_axis(item_sizes, lambda s: (fixed_users, s), "items", budget_bytes=budget, point_kw=kw)
    users = run_axis(user_sizes, lambda s: (s, fixed_items), "users", budget_bytes=budget, point_kw=kw)
    return {
        "model": f"DiffRec [I -> {hidden} -> I] (dims=({hidden},), emb 10, T=40, projected "
                 f"reverse chain in evaluation), AdamW",
        "hidden": hidden, "fixed_users_on_items_axis": fixed_users,
        "fixed_items_on_users_axis": fixed_items, "settings": kw,
        "data": "synthetic_rows: Poisson(68) items per user (capped at 256 and I/2), power-law popularity",
        "items_axis": items, "users_axis": users,
    }


# ----------------------------------------------------------------------------------------------
# Part 4: top-k over large item sets
# ----------------------------------------------------------------------------------------------


def streamed_topk(h_BxH, w_chunks, b_chunks, k: int):
    """Exact top-k of ``h W + b`` without the ``[B, I]`` scores: a scan over item chunks.

    Args:
      h_BxH: ``[B, H]`` last hidden activations.
      w_chunks: ``[C, H, chunk]`` the output kernel split into ``C`` item chunks (zero-padded).
      b_chunks: ``[C, chunk]`` the bias, padded with ``-inf`` so padding never ranks.
      k: list length (``k <= chunk``).

    Returns:
      ``[B, k]`` int32 item indices, best first.
    """
    bsz, chunk = h_BxH.shape[0], w_chunks.shape[-1]

    def body(carry, inp):
        vals, idx = carry
        w, b, off = inp
        v, i = jax.lax.top_k(h_BxH @ w + b, k)
        allv = jnp.concatenate([vals, v], axis=1)
        alli = jnp.concatenate([idx, i.astype(jnp.int32) + off], axis=1)
        top_v, pos = jax.lax.top_k(allv, k)
        return (top_v, jnp.take_along_axis(alli, pos, axis=1)), None

    init = (jnp.full((bsz, k), -jnp.inf, h_BxH.dtype), jnp.zeros((bsz, k), jnp.int32))
    offs = jnp.arange(w_chunks.shape[0], dtype=jnp.int32) * chunk
    (_, idx), _ = jax.lax.scan(body, init, (w_chunks, b_chunks, offs))
    return idx


def chunk_output_layer(w_HxI, b_I, chunk: int):
    """Splits ``[H, I]`` / ``[I]`` into ``[C, H, chunk]`` / ``[C, chunk]`` (a storage layout choice)."""
    h, n = w_HxI.shape
    c = -(-n // chunk)
    pad = c * chunk - n
    w = jnp.pad(w_HxI, ((0, 0), (0, pad))).reshape(h, c, chunk).transpose(1, 0, 2)
    b = jnp.pad(b_I, (0, pad), constant_values=-jnp.inf).reshape(c, chunk)
    return w, b


def bench_topk_size(n_items: int, *, batch: int, k: int, chunks: Sequence[int], repeats: int,
                    hidden: int = 64, stream_chunk: int = 65536, recall_target: float = 0.95,
                    seed: int = 0) -> dict:
    """Times the top-k methods at one item count; recalls are against ``lax.top_k``."""
    key1, key2, key3 = jax.random.split(jax.random.key(seed), 3)
    scores = block(jax.random.normal(key1, (batch, n_items), jnp.float32))
    row: dict = {"items": n_items, "batch": batch, "k": k}

    def measure(name, fn, arg):
        f = jax.jit(fn)
        t0 = time.perf_counter()
        c = f.lower(arg).compile()
        row[f"{name}_compile_s"] = time.perf_counter() - t0
        out = np.asarray(block(c(arg)))
        row[f"{name}_ms"] = float(np.median(time_repeats(lambda: c(arg), repeats, warmup=0))) * 1e3
        return out

    exact = measure("lax_top_k", lambda s: jax.lax.top_k(s, k)[1], scores)
    for c in chunks:
        if c < n_items:
            got = measure(f"chunked_{c}", lambda s, c=c: M.topk_indices(s, k, chunk_size=c), scores)
            row[f"chunked_{c}_exact"] = bool(np.array_equal(np.sort(got, 1), np.sort(exact, 1)))
    approx_fn = lambda s: jax.lax.approx_max_k(s, k, recall_target=recall_target)[1]  # noqa: E731
    approx = measure("approx_max_k", approx_fn, scores)
    row["approx_is_fallback"] = "is_fallback = true" in jax.jit(approx_fn).lower(scores).as_text()
    row["approx_recall"] = topk_recall(approx, exact)
    row["approx_recall_target"] = recall_target
    del scores
    # Scoring + top-k from a hidden layer: materialised [B, I] scores vs streamed over chunks.
    h = jax.random.normal(key2, (batch, hidden), jnp.float32)
    w = jax.random.normal(key3, (hidden, n_items), jnp.float32) / math.sqrt(hidden)
    b = jnp.zeros((n_items,), jnp.float32)
    sc = min(stream_chunk, n_items)
    wc, bc = block(chunk_output_layer(w, b, sc))
    mat = measure("materialised_score_topk", lambda hh: jax.lax.top_k(hh @ w + b, k)[1], h)
    st = measure("streamed_score_topk", lambda hh: streamed_topk(hh, wc, bc, k), h)
    row["streamed_chunk"] = sc
    row["streamed_exact"] = bool(np.array_equal(np.sort(st, 1), np.sort(mat, 1)))
    row["materialised_scores_mb"] = batch * n_items * 4 / MB
    row["streamed_scores_mb"] = batch * sc * 4 / MB
    for name in list(row):
        if name.endswith("_ms") and name != "lax_top_k_ms" and not name.startswith(("materialised",
                                                                                    "streamed")):
            row[name[:-3] + "_over_lax"] = row[name] / row["lax_top_k_ms"]
    row["streamed_over_materialised"] = row["streamed_score_topk_ms"] / row["materialised_score_topk_ms"]
    return row


def part_topk(quick: bool, seed: int) -> dict:
    """Part 4 over 1e4 .. 1e6 items (1e4 .. 1e5 in quick mode)."""
    sizes = [10**4, 10**5] if quick else [10**4, 10**5, 10**6]
    batch = 32 if quick else 128
    chunks = (8192, 65536) if quick else (8192, 131072)
    rows = []
    for n in sizes:
        r = bench_topk_size(n, batch=batch, k=100, chunks=chunks, repeats=2 if quick else 5, seed=seed)
        print(f"[topk] I={n}: lax {r['lax_top_k_ms']:.1f} ms, approx {r['approx_max_k_ms']:.1f} ms "
              f"(recall {r['approx_recall']:.3f})", flush=True)
        rows.append(r)
        gc.collect()
    return {"rows": rows, "batch": batch, "k": 100, "chunks": list(chunks)}


# ----------------------------------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------------------------------


def part_seeds(data_dir: str, quick: bool, ks: Sequence[int], seed: int) -> dict:
    """Part 5: one vmapped program of K seeds against K separate runs (DiffRec)."""
    from configs import diffrec_ml1m, test as test_config

    if quick:
        data, note = quick_data()
        base = test_config.get_config()
        epochs = 3
    else:
        data, note = load_ml1m(data_dir)
        base = diffrec_ml1m.get_config()
        epochs = 4
    rows = []
    for k in ks:
        cfg = train.override(base, {
            "seed": seed + 1, "num_seeds": int(k), "train.num_epochs": epochs,
            "train.eval_every_epochs": epochs, "train.patience_epochs": 10 * epochs, "train.num_devices": 1,
        })
        with tempfile.TemporaryDirectory() as wd:
            t0 = time.perf_counter()
            train.train_and_evaluate(cfg, wd, data=data)
            wall = time.perf_counter() - t0
            with open(os.path.join(wd, "metrics.jsonl")) as f:
                recs = [json.loads(line) for line in f]
        ep = [r["train/epoch_s"] for r in recs if "train/epoch_s" in r]
        ev = [r["eval/time_s"] for r in recs if "eval/time_s" in r]
        rows.append({"k": int(k), "first_epoch_s": ep[0], "epoch_s": float(np.median(ep[1:])),
                     "eval_s": float(ev[0]), "wall_s": wall})
        print(f"[seeds] K={k}: {rows[-1]['epoch_s']:.3f} s/epoch, eval {rows[-1]['eval_s']:.2f} s", flush=True)
    one = next((r for r in rows if r["k"] == 1), None)
    if one is not None:
        for r in rows:
            r["epoch_ratio_vs_separate"] = r["epoch_s"] / (r["k"] * one["epoch_s"])
            r["eval_ratio_vs_separate"] = r["eval_s"] / (r["k"] * one["eval_s"])
    return {"data": note, "epochs": epochs, "rows": rows}


def _load(d) -> str:
    """``start [..] -> end [..]`` from a part's ``loadavg`` record."""
    if not isinstance(d, dict):
        return str(d)
    return f"Load average {d.get('start')} at its start, {d.get('end')} at its end"


def _f(v, fmt: str = ".2f", na: str = "-") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return na
    return format(v, fmt)


def markdown(res: dict) -> str:
    """The human-readable report of whatever parts ``res`` holds."""
    env = res["environment"]
    lines = [
        "# diffrec_jax benchmark suite",
        "",
        f"- {env['date']}, mode **{'quick (tiny sizes)' if res['quick'] else 'full'}**; "
        f"command: `{res['command']}`",
        f"- devices: {', '.join(env['devices'])} ({env['backend']}); {env['cpu_count']} CPU cores; "
        f"jax {env['jax']}, Python {env['python']}",
        f"- **{env['gpu']}**",
        f"- load average (1/5/15 min) at start: {env['loadavg_start']}; other processes were "
        "running on this machine whenever the 1-minute value exceeds the cores in use. Loads at "
        "the start/end of every part are listed with it.",
        "",
    ]
    if "models" in res:
        m = res["models"]
        lines += [
            f"## 1. Models ({m['data']})",
            "",
            f"{_load(m['loadavg'])}. float32 matmul ceiling measured in this run, "
            f"before/after the models: {_f(m['matmul_ceiling_before_after'][0], '.0f')}/"
            f"{_f(m['matmul_ceiling_before_after'][1], '.0f')} GFLOP/s; ratios use the larger, "
            f"{_f(m['matmul_ceiling_gflops_per_s'], '.0f')}.",
            "",
            "| model | params | compile train (s) / fit (s) | train users/s | train GFLOP/s (% ceiling) "
            "| compile eval (s) | eval ms/user | eval GFLOP/s (% ceiling) | peak RSS (MB) | status |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in m["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {r['label']} | - | - | - | - | - | - | - | - | {r['status']} |")
                continue
            comp = (f"fit {_f(r['fit_s'])}" if r["kind"] == "closed-form"
                    else _f(r.get("compile_train_s")))
            tr = (f"{_f(r['train_gflops_per_s'], '.1f')} ({_f(100 * r['train_ceiling_fraction'], '.0f')} %)"
                  if "train_gflops_per_s" in r else "-")
            ev = f"{_f(r['eval_gflops_per_s'], '.1f')} ({_f(100 * r['eval_ceiling_fraction'], '.0f')} %)"
            lines.append(
                f"| {r['label']} | {r['params']:,} | {comp} | {_f(r.get('train_users_per_s'), '.0f')} "
                f"| {tr} | {_f(r['compile_eval_s'])} | {_f(r['eval_ms_per_user'], '.3f')} | {ev} "
                f"| {_f(r['peak_rss_mb'], '.0f')} | ok |"
            )
        t = m.get("target")
        if t:
            how = "a full epoch" if t["full_epoch"] else "a few steps, not a full epoch"
            lines += ["", f"**Target** ({t['what']}; measured on {t['data']}, {how}): "
                      f"{100 * t['fraction']:.0f} % of the ceiling, **{'met' if t['met'] else 'not met'}**"
                      + (" (quick mode: not the target's data set)" if res["quick"] else "") + "."]
        lines += ["", "Training throughput: users per second over the timed steps (median of repeats, "
                  "after a warm-up); evaluation: full ranking of every user (valid + test share one "
                  "score pass) divided by the users. Peak RSS is the process's high-water mark reset "
                  "before each model (it includes the dataset, the runtime and whatever earlier models "
                  "left in JAX's caches).", ""]
    if "steps" in res:
        s = res["steps"]
        lines += [
            f"## 2. Accuracy against reverse steps ({s['data']}; {s['users']} users)",
            "",
            f"Parameters: {s['params_source']}. {_load(s['loadavg'])}. n steps run "
            "`t = n-1 .. 0` from the user's row; *projected* is the library's fast path on the "
            "truncated schedule, *generic* is `samplers.ancestral_sample(start_step=n-1, noise=False)`.",
            "",
            f"| n | test R@20 | test N@20 | eval s ({s.get('primary_path', 'projected')}) | ms/user "
            f"| eval s (generic) | generic / {s.get('primary_path', 'projected')} | max metric diff |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in s["rows"]:
            lines.append(
                f"| {r['n']} | {r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {_f(r['eval_s'])} "
                f"| {_f(r['eval_ms_per_user'], '.3f')} | {_f(r.get('generic_eval_s'))} "
                f"| {_f(r.get('generic_over_projected_time'), '.1f')} "
                f"| {_f(r.get('generic_max_abs_metric_diff'), '.1e')} |"
            )
        x = s["x0_t0"]
        lines += [f"| x0 at t=0 (one denoiser call) | {x['recall@20']:.4f} | {x['ndcg@20']:.4f} "
                  f"| {_f(x['eval_s'])} | {_f(x['eval_ms_per_user'], '.3f')} | - | - | - |", ""]
        full = s["rows"][-1]
        if full["recall@20"] > 0:
            lines += [
                f"The x0 prediction at t=0 reaches {100 * x['recall@20'] / full['recall@20']:.1f} % of "
                f"the Recall@20 and {100 * x['ndcg@20'] / max(full['ndcg@20'], 1e-12):.1f} % of the "
                f"NDCG@20 of n = {full['n']} steps, in {x['eval_s'] / full['eval_s']:.2f}x its "
                f"evaluation time ({s.get('primary_path', 'projected')} path; same run).", ""]
        lines += ["![steps](steps.png)", ""]
    if "scaling" in res:
        sc = res["scaling"]
        st = sc["settings"]
        lines += [
            "## 3. Cost growth on synthetic data",
            "",
            f"Model: {sc['model']}. Data: {sc['data']}. Training batch {st['batch']} users, "
            f"evaluation batch {st['eval_batch']} users, top-{st['k']} with the exact chunked top-k "
            f"above {st['chunk_size']} items. The items axis keeps {sc['fixed_users_on_items_axis']} "
            f"users; the users axis keeps {sc['fixed_items_on_users_axis']} items. Per-user costs are "
            "medians over random user batches; epoch and full-evaluation times are those costs x U. "
            f"{_load(sc['loadavg'])}.",
            "",
        ]
        for axis in ("items", "users"):
            a = sc[f"{axis}_axis"]
            lines += [
                f"### {axis} axis",
                "",
                "| users | items | params | train us/user | train GFLOP/s | eval us/user | eval GFLOP/s "
                "| compile train/eval (s) | peak RSS (MB) |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for p in a["points"]:
                lines.append(
                    f"| {p['users']:,} | {p['items']:,} | {p['params']:,} "
                    f"| {_f(p['train_us_per_user'], '.1f')} "
                    f"| {_f(p['train_gflops_per_s'], '.1f')} | {_f(p['eval_us_per_user'], '.1f')} "
                    f"| {_f(p['eval_gflops_per_s'], '.1f')} | {_f(p['compile_train_s'], '.1f')}/"
                    f"{_f(p['compile_eval_s'], '.1f')} | {_f(p['peak_rss_mb'], '.0f')} |"
                )
            lines.append("")
            for cost, fit in a["fits"].items():
                lines.append(
                    f"- {cost} ~ {axis}^a: a = {_f(fit['all']['exponent'], '.2f')} over all "
                    f"{fit['all']['n_points']} points (R² {_f(fit['all']['r2'], '.3f')}), "
                    f"a = {_f(fit['largest_3']['exponent'], '.2f')} over the largest 3"
                )
            if a["points"]:
                big = a["points"][-1]
                lines.append(
                    f"- at {big['users']:,} users x {big['items']:,} items: a training epoch would take "
                    f"about {_f(big['epoch_s_est'], '.1f')} s and a full evaluation "
                    f"{_f(big['full_eval_s_est'], '.1f')} s (per-user cost x users)"
                )
            if a["stopped"]:
                lines.append(f"- stopped: {a['stopped']}")
            lines.append("")
        lines += ["![scaling](scaling.png)", ""]
    if "topk" in res:
        tk = res["topk"]
        chunk_cols = [f"chunked_{c}" for c in tk["chunks"]]
        lines += [
            f"## 4. Top-k over large item sets (batch {tk['batch']} users, k = {tk['k']})",
            "",
            f"{_load(tk['loadavg'])}. Times in ms (median); ratios are to `lax.top_k` in this run. "
            "Approximate recall is measured against the exact top-k. *materialised*: `top_k(h W + b)`; "
            "*streamed*: a scan over item chunks of `W` that never holds the `[B, I]` scores.",
            "",
            "| items | lax.top_k | " + " | ".join(f"chunked ({c}) / ratio" for c in tk["chunks"])
            + " | approx_max_k / ratio | approx recall | materialised score+top-k | streamed (chunk) "
            "| scores MB materialised / streamed |",
            "| --- | --- | " + " | ".join("---" for _ in chunk_cols) + " | --- | --- | --- | --- | --- |",
        ]
        for r in tk["rows"]:
            cells = []
            for c in chunk_cols:
                if f"{c}_ms" in r:
                    cells.append(f"{_f(r[c + '_ms'], '.1f')} / {_f(r[c + '_over_lax'], '.1f')}x"
                                 + ("" if r[c + "_exact"] else " (NOT exact)"))
                else:
                    cells.append("- (chunk >= items)")
            lines.append(
                f"| {r['items']:,} | {_f(r['lax_top_k_ms'], '.1f')} | " + " | ".join(cells)
                + f" | {_f(r['approx_max_k_ms'], '.1f')} / {_f(r['approx_max_k_over_lax'], '.1f')}x "
                f"| {r['approx_recall']:.3f} | {_f(r['materialised_score_topk_ms'], '.1f')} "
                f"| {_f(r['streamed_score_topk_ms'], '.1f')} ({r['streamed_chunk']})"
                + ("" if r["streamed_exact"] else " NOT exact")
                + f" | {_f(r['materialised_scores_mb'], '.0f')} / {_f(r['streamed_scores_mb'], '.0f')} |"
            )
        if any(r.get("approx_is_fallback") for r in tk["rows"]):
            lines += ["", "On this backend `approx_max_k` lowers to XLA's *fallback* (the HLO says "
                      "`is_fallback = true`): an exact top-k, hence recall 1.0. The approximate "
                      "algorithm proper runs on TPU."]
        lines += ["", "![topk](topk.png)", ""]
    if "seeds" in res:
        sd = res["seeds"]
        lines += [
            "## 5. K seeds in one program against K separate runs (DiffRec)",
            "",
            f"{_load(sd['loadavg'])}. Data: {sd['data']}; {sd['epochs']} epochs per run, steady-state epoch = "
            "median after the first (compiling) epoch; evaluation = one full ranking of every replica. "
            "Ratio = vmapped time / (K x time of one seed): below 1 means the vmapped program is cheaper.",
            "",
            "| K | s / epoch | ratio vs K separate | s / evaluation | ratio vs K separate | first epoch (compile) s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for r in sd["rows"]:
            lines.append(f"| {r['k']} | {r['epoch_s']:.3f} | {_f(r.get('epoch_ratio_vs_separate'))} | "
                         f"{r['eval_s']:.2f} | {_f(r.get('eval_ratio_vs_separate'))} | {r['first_epoch_s']:.2f} |")
        lines.append("")
    if res.get("errors"):
        lines += ["## Errors", ""] + [f"- {k}: {v}" for k, v in res["errors"].items()] + [""]
    lines.append(f"Load average at the end: {res.get('loadavg_end', '-')}.")
    return "\n".join(lines) + "\n"


def plots(res: dict, out: str) -> list[str]:
    """Writes ``steps.png``, ``scaling.png`` and ``topk.png`` for the parts present."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if "steps" in res:
        s = res["steps"]
        ns = [r["n"] for r in s["rows"]]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for key, mk in (("recall@20", "o-"), ("ndcg@20", "s-")):
            a1.plot(ns, [r[key] for r in s["rows"]], mk, label=f"test {key}")
            a1.axhline(s["x0_t0"][key], ls="--", lw=0.8, color="gray")
        a1.set(xscale="log", xlabel="reverse steps n (t = n-1..0)", ylabel="metric",
               title="DiffRec accuracy vs reverse steps (dashed: x0 at t=0)")
        a1.legend()
        a2.plot(ns, [r["eval_ms_per_user"] for r in s["rows"]], "o-", label="projected")
        gn = [r for r in s["rows"] if "generic_ms_per_user" in r]
        if gn:
            a2.plot([r["n"] for r in gn], [r["generic_ms_per_user"] for r in gn], "s-", label="generic")
        a2.set(xscale="log", yscale="log", xlabel="reverse steps n", ylabel="evaluation ms / user",
               title="evaluation time vs reverse steps")
        a2.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "steps.png"), dpi=110)
        plt.close(fig)
        written.append("steps.png")
    if "scaling" in res:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, axis in zip(axes, ("items", "users")):
            a = res["scaling"][f"{axis}_axis"]
            xs = np.array([p[axis] for p in a["points"]], float)
            for cost, mk in (("train_us_per_user", "o"), ("eval_us_per_user", "s")):
                ys = np.array([p[cost] for p in a["points"]], float)
                if xs.size == 0:
                    continue
                fit = a["fits"][cost]["all"]
                (line,) = ax.plot(xs, ys, mk, label=f"{cost} (fitted a={_f(fit['exponent'], '.2f')})")
                if math.isfinite(fit["exponent"]):
                    ax.plot(xs, fit["prefactor"] * xs ** fit["exponent"], "--", lw=0.8,
                            color=line.get_color())
            ax.set(xscale="log", yscale="log", xlabel=axis, ylabel="microseconds per user",
                   title=f"cost vs {axis}" + (" (stopped early)" if a["stopped"] else ""))
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "scaling.png"), dpi=110)
        plt.close(fig)
        written.append("scaling.png")
    if "topk" in res:
        tk = res["topk"]
        fig, ax = plt.subplots(figsize=(6, 4))
        names = ["lax_top_k", "approx_max_k", "materialised_score_topk", "streamed_score_topk"]
        names += [f"chunked_{c}" for c in tk["chunks"]]
        for name in names:
            pts = [(r["items"], r[f"{name}_ms"]) for r in tk["rows"] if f"{name}_ms" in r]
            if pts:
                ax.plot(*zip(*pts), "o-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="items", ylabel="ms per batch",
               title=f"top-{tk['k']} of {tk['batch']} rows")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "topk.png"), dpi=110)
        plt.close(fig)
        written.append("topk.png")
    return written


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.bool_,)):
        return bool(o)
    return str(o)


def write_outputs(res: dict, out: str) -> None:
    """Writes ``bench_suite.json``, ``bench_suite.md`` and the plots into ``out``."""
    os.makedirs(out, exist_ok=True)
    res["plots"] = plots(res, out)
    with open(os.path.join(out, "bench_suite.json"), "w") as f:
        json.dump(res, f, indent=2, default=_json_default)
    with open(os.path.join(out, "bench_suite.md"), "w") as f:
        f.write(markdown(res))


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def define_flags():
    """Defines the absl flags (only when run as a script, so importing this module defines none)."""
    from absl import flags

    flags.DEFINE_string("out", "results/bench_suite", "Output folder (JSON, markdown, PNG).")
    flags.DEFINE_bool("quick", False, "Tiny sizes: the whole suite in about 2 minutes.")
    flags.DEFINE_string("data_dir", "../shared/data/diffrec/ml-1m_clean",
                        "DiffRec-format ML-1M clean folder (synthetic data of its shape if absent).")
    flags.DEFINE_list("parts", list(PARTS), f"Parts to run, among {','.join(PARTS)}.")
    flags.DEFINE_string("diffrec_run", "/work/runs/repro_diffrec_ml1m/seed_1",
                        "Run folder of a trained DiffRec (its best/ checkpoint is read, never written).")
    flags.DEFINE_integer("fallback_epochs", 10, "Epochs to train DiffRec when --diffrec_run has none.")
    flags.DEFINE_list("models", [], "Subset of model labels for part 1 (default: every config).")
    flags.DEFINE_integer("scaling_hidden", 64, "Hidden width of the scaling model [I -> H -> I].")
    flags.DEFINE_float("mem_budget_gb", 24.0, "Memory a scaling point may use (also capped by "
                       "MemAvailable at that moment).")
    flags.DEFINE_integer("chunk_size", 131072, "Items per chunk of the exact top-k in scaling.")
    flags.DEFINE_integer("seed", 0, "Seed of every random draw.")
    flags.DEFINE_list("seeds_k", ["1", "3"], "Part 5: numbers of vmapped seeds to time (1 first).")
    return flags.FLAGS


def run_suite(*, out: str, quick: bool, parts: Sequence[str], data_dir: str, diffrec_run: str,
              fallback_epochs: int, model_names: Sequence[str], scaling_hidden: int,
              mem_budget_gb: float, chunk_size: int, seed: int, command: str = "",
              seeds_k: Sequence[int] = (1, 3)) -> dict:
    """Runs the requested parts, writing the outputs after each; returns the results."""
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"--parts: unknown part(s) {bad}; choose among {list(PARTS)}")
    res: dict = {"quick": quick, "command": command, "environment": environment(), "errors": {}}
    print(f"[env] {res['environment']['devices']}, {res['environment']['cpu_count']} cores, "
          f"load {res['environment']['loadavg_start']}; {gpu_note()}", flush=True)
    for part in PARTS:
        if part not in parts:
            continue
        start_load, t0 = loadavg(), time.perf_counter()
        try:
            if part == "models":
                out_part = part_models(data_dir, quick, model_names, seed)
            elif part == "steps":
                out_part = part_steps(data_dir, diffrec_run, quick,
                                      1 if quick else fallback_epochs, seed)
            elif part == "scaling":
                out_part = part_scaling(quick, scaling_hidden, mem_budget_gb, chunk_size, seed)
            elif part == "topk":
                out_part = part_topk(quick, seed)
            else:
                out_part = part_seeds(data_dir, quick, seeds_k, seed)
            out_part["loadavg"] = {"start": start_load, "end": loadavg()}
            out_part["wall_s"] = time.perf_counter() - t0
            res[part] = out_part
        except Exception as e:  # noqa: BLE001  (report and go on with the other parts)
            res["errors"][part] = _short(e, 400)
            print(f"[{part}] FAILED: {_short(e, 400)}", flush=True)
        print(f"[{part}] done in {time.perf_counter() - t0:.1f}s", flush=True)
        res["loadavg_end"] = loadavg()
        write_outputs(res, out)
    return res


def main(argv):
    """absl entry point."""
    del argv
    from absl import flags

    f = flags.FLAGS
    res = run_suite(
        out=f.out, quick=f.quick, parts=f.parts, data_dir=f.data_dir, diffrec_run=f.diffrec_run,
        fallback_epochs=f.fallback_epochs, model_names=f.models, scaling_hidden=f.scaling_hidden,
        mem_budget_gb=f.mem_budget_gb, chunk_size=f.chunk_size, seed=f.seed,
        command=" ".join(sys.argv), seeds_k=[int(k) for k in f.seeds_k],
    )
    print(markdown(res))
    print(f"wrote {os.path.join(f.out, 'bench_suite.json')} and bench_suite.md")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
