"""Part 2, ``steps``: a trained DiffRec's accuracy and evaluation time against the reverse steps.

``n`` reverse steps run ``t = n-1 .. 0`` from the user's row, through the projected fast path
(:func:`diffrec_jax.models.diffrec.projected_reverse` on the truncated schedule) and the generic
sampler, plus the plain x0 prediction at ``t = 0``. The DiffRec is read from a run's ``best``
checkpoint (never written), else trained here for a few epochs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffrec_jax import metrics
from diffrec_jax import models, samplers, schedules

from .common import (
    DeviceData,
    ScoreModel,
    block,
    compile_eval,
    eval_pass,
    init_state,
    load_ml1m,
    make_optimizer,
    make_train_step,
    padded_batches,
    short_error,
    time_repeats,
    timed,
)

STEP_COUNTS = (1, 2, 5, 10, 20, 40)


def truncate_schedule(schedule: schedules.Schedule, n: int) -> schedules.Schedule:
    """The first ``n`` steps of a VP schedule (every field sliced), so a chain runs ``t = n-1..0``."""
    if not 1 <= n <= schedule.num_steps:
        raise ValueError(f"n must be in [1, {schedule.num_steps}], got {n}")
    return schedules.Schedule(*[f[:n] for f in schedule])


def fill_params(template, restored: dict):
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
    params = fill_params(template, restored)
    return model, params, model_state, f"restored {best} (epoch {meta.get('epoch')})"


def train_diffrec(cfg, data, epochs: int, key) -> tuple[Any, Any, Any, str]:
    """Fallback: trains DiffRec for ``epochs`` epochs; returns ``(model, params, state, note)``."""
    model = models.get_model(cfg, data)
    tx = make_optimizer(cfg.optim)
    state = init_state(model, tx, key)
    step = make_train_step(model, tx)
    dd = DeviceData.from_data(data)
    bs = min(int(cfg.train.batch_size), data.n_users)
    for e in range(epochs):
        idx, mask = padded_batches(np.random.default_rng([1, e]).permutation(data.n_users), bs)
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
    dd = DeviceData.from_data(data)
    eidx, emask = padded_batches(np.arange(U), min(2048, U))
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
            "test": metrics.finalize(acc_t, U, average), "valid": metrics.finalize(acc_v, U, average),
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
        src = f"{src} ({short_error(e)})"
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
