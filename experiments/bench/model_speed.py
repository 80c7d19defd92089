"""Part 1, ``models``: every model's compile time, training throughput, evaluation latency, memory.

See the package docstring (:mod:`bench`) for what is measured. DiffRec also gets its reverse
chain's FLOPs counted by hand (XLA's cost analysis counts a ``lax.scan`` body once) and its
epoch and evaluation set against the PyTorch reference's figures (:data:`DIFFREC_REFERENCE`).
"""

from __future__ import annotations

import gc
import glob
import importlib
import os
import time
from typing import Sequence

import jax
import numpy as np

from diffrec_jax import models

from . import ROOT
from .common import (
    DIFFREC_REFERENCE,
    MB,
    DeviceData,
    compile_eval,
    device_peak_bytes,
    eval_pass,
    init_state,
    load_ml1m,
    make_optimizer,
    make_train_step,
    matmul_ceiling,
    padded_batches,
    peak_rss_bytes,
    quick_data,
    reset_peak_rss,
    short_error,
    time_repeats,
    timed,
    xla_flops,
)

TARGET_CEILING_FRACTION = 0.60  # DiffRec on ML-1M clean: a training epoch at >= 60 % of the ceiling


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
                         "reason": f"configs/{stem}.py fails: {short_error(e)}"})
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


def diffrec_chain_flops(cfg, n_items: int, batch: int, projected: bool) -> float:
    """FLOPs of one evaluation batch of DiffRec's reverse chain (2 per multiply-add).

    Generic chain (``projected=False``): T full forward passes. Projected chain
    (:func:`diffrec_jax.models.diffrec.projected_reverse`): per step the hidden layers plus the
    ``H_last x H_1`` product, and one ``I``-wide projection at each end.
    """
    dims = list(cfg.model.dims)
    out_dims = dims + [n_items]
    in_dims = out_dims[::-1]
    e = cfg.model.emb_size
    layers = [(in_dims[0] + e, in_dims[1])] + list(zip(in_dims[1:-1], in_dims[2:]))
    layers += list(zip(out_dims[:-1], out_dims[1:]))
    T = cfg.diffusion.steps
    if not projected:
        per_user = T * (sum(i * o for i, o in layers) + e * e)
    else:
        h1, h_last = in_dims[1], out_dims[-2]
        middle = sum(i * o for i, o in layers[1:-1])
        per_user = T * (middle + h_last * h1 + e * e + e * h1) + n_items * h1 + h_last * n_items
    return 2.0 * per_user * batch


def bench_model(cfg, data, *, train_steps: int = 0, repeats: int = 3, eval_repeats: int = 2,
                seed: int = 0) -> dict:
    """Speed and memory of one model on ``data`` (see the package docstring, part 1).

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
    dd = DeviceData.from_data(data)
    if getattr(model, "closed_form", False):
        (params, model_state), fit_s = timed(lambda: model.fit(k_init))
        row.update(kind="closed-form", fit_s=fit_s)
    else:
        tx = model.optimizer(cfg.optim) if hasattr(model, "optimizer") else make_optimizer(cfg.optim)
        state = init_state(model, tx, k_init)
        step = make_train_step(model, tx)
        bs = min(int(cfg.train.batch_size), U)
        idx, mask = padded_batches(np.random.default_rng(seed).permutation(U), bs)
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
    eidx, emask = padded_batches(np.arange(U), min(int(cfg.eval.batch_size), U))
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
    if cfg.model.name == "diffrec":  # XLA counts the reverse chain's scan body once: count by hand
        from diffrec_jax.models.diffrec import projected_reverse_applies

        projected = bool(cfg.sampling.get("fast", True)) and projected_reverse_applies(model)
        chain = diffrec_chain_flops(cfg, data.n_items, int(eidx.shape[1]), projected) * eidx.shape[0]
        row.update(eval_chain_path="projected" if projected else "generic",
                   eval_chain_tflop=chain / 1e12, eval_chain_gflops_per_s=chain / et / 1e9)
    gpu_peak = device_peak_bytes()
    if gpu_peak is not None:
        row["gpu_peak_mb"] = gpu_peak / MB
    return row


def against_reference(row: dict, note: str) -> dict:
    """DiffRec's epoch and evaluation times of ``row`` against :data:`DIFFREC_REFERENCE`."""
    ref = DIFFREC_REFERENCE
    return {
        "data": note, "real_data": note.startswith("ml-1m_clean"), "full_epoch": row["full_epoch"],
        "epoch_s": row["epoch_s_est"], "eval_s": row["eval_s"], "reference": ref,
        "epoch_speedup_vs_2threads": ref["epoch_s_2threads"] / row["epoch_s_est"],
        "epoch_speedup_vs_1thread": ref["epoch_s_1thread"] / row["epoch_s_est"],
        "eval_speedup": [r / row["eval_s"] for r in ref["eval_s"]],
    }


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
                row["status"] = f"failed: {short_error(e)}"
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
        for what in ("train", "eval", "eval_chain"):
            if f"{what}_gflops_per_s" in row:
                row[f"{what}_ceiling_fraction"] = row[f"{what}_gflops_per_s"] / ceiling
    target = reference = None
    for row in rows:
        if row["label"] == "diffrec" and "train_ceiling_fraction" in row:
            target = {
                "what": f"DiffRec training epoch at >= {TARGET_CEILING_FRACTION:.0%} of the matmul ceiling",
                "data": note,
                "full_epoch": row.get("full_epoch"),
                "fraction": row["train_ceiling_fraction"],
                "met": bool(row["train_ceiling_fraction"] >= TARGET_CEILING_FRACTION),
            }
            reference = against_reference(row, note)
    return {"data": note, "matmul_ceiling_gflops_per_s": ceiling,
            "matmul_ceiling_before_after": [ceiling_before, ceiling_after], "rows": rows,
            "target": target, "reference": reference}
