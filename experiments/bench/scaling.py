"""Part 3, ``scaling``: per-user training and evaluation cost of a DiffRec-shaped model on
random sparse data, along an items axis and a users axis (1k .. 1M), with fitted exponents.

The rows are generated as padded item lists and densified per batch on device, so the ``[U, I]``
matrix never exists; a size whose estimated memory does not fit ends its axis.
"""

from __future__ import annotations

import gc
import math
import time
import types
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffrec_jax import metrics
from diffrec_jax import models

from .common import (
    GB,
    MB,
    TrainState,
    block,
    init_state,
    make_optimizer,
    mem_available_bytes,
    peak_rss_bytes,
    reset_peak_rss,
    short_error,
    timed,
    xla_flops,
)


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

    def step(state: TrainState, rows, idx_B, key):
        x = densify(rows[idx_B], n_items)
        mask = jnp.ones(idx_B.shape, bool)

        def loss_fn(params):
            return model.loss(params, state.model_state, x, mask, key)

        (loss, (model_state, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, model_state), loss

    return jax.jit(step, donate_argnums=0)


def make_sparse_eval_step(model, n_items: int, k: int, chunk_size: int):
    """Jitted ``(params, model_state, rows, idx_B, key) -> top-k [B, k]``: score, mask the
    history, and the exact top-k, chunked when ``n_items > chunk_size``."""

    def step(params, model_state, rows, idx_B, key):
        x = densify(rows[idx_B], n_items)
        keys = jax.random.split(key, idx_B.shape[0])
        scores = model.score(params, model_state, x, keys)
        chunk = chunk_size if n_items > chunk_size else None
        return metrics.topk_indices(metrics.mask_scores(scores, x), k, chunk_size=chunk)

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
    tx = make_optimizer(cfg.optim)
    key = jax.random.key(seed)
    state = block(init_state(model, tx, key))
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
            stopped = f"{label}={size}: failed ({short_error(e)}); axis stopped"
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
