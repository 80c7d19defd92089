"""The one training loop: ``run(task, config, workdir)``.

The loop owns what every task shares; a task (``training/interactions.py``, ``sequences.py``,
``rerank.py``) supplies only its data, steps and evaluation. The loop owns:

* ``workdir/config.json``; resume from the latest Orbax checkpoint in ``workdir/checkpoints``
  (written after every evaluation, with the loop's bookkeeping, so a resumed run continues
  exactly as an uninterrupted one: tasks make data order a function of ``(seed, epoch)`` and
  keys of ``(seed, step)``);
* the one early-stopping rule: before epoch ``e``, a replica stops once it has been evaluated
  and ``e - best_epoch >= train.patience_epochs``; the time budget ``train.time_budget_s``
  (the epoch that crosses it is evaluated and checkpointed, then training stops);
* model selection on validation (:class:`Selection`), the best parameters in ``workdir/best``
  (``best/seed_<s>`` per replica when several seeds train together);
* the non-finite loss check, ``metrics.jsonl`` (one record per epoch and per evaluation), the
  progress bar with loss and throughput, and an atomic ``results.json``.

A task is any object with these members (see :class:`Task`); tasks that train several seeds at
once (``config.num_seeds``) return one value per replica, each with its own best epoch and early
stopping, so each replica's numbers equal a separate run with its seed.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable, Protocol

import jax
import numpy as np

from diffrec_jax.checkpointing import Checkpointer
from diffrec_jax.training.io import MetricWriter, progress, save_config, write_json

log = logging.getLogger("diffrec_jax")


class Task(Protocol):
    """What the loop asks of a task."""

    seeds: list[int]  # the replicas trained together (one for most tasks)
    steps_per_epoch: int
    closed_form: bool  # fit once (``fit``) instead of epochs

    def init_state(self) -> Any:
        """The initial train state (a pytree; leading replica axis when several seeds)."""

    def train_epoch(self, state, epoch: int, on_steps: Callable[[int, Any], None]) -> tuple[Any, np.ndarray, int]:
        """One epoch: ``(state, losses [steps, replicas], examples seen)``; calls
        ``on_steps(n, recent_loss)`` as steps complete (for the bar; ``recent_loss`` may be None)."""

    def evaluate(self, state, *, test: bool) -> list[dict]:
        """Per replica ``{"valid": {metric: value}, "test": {...} | None, ...}``; extra keys of the
        record (e.g. other averaging protocols) go into ``results.json`` as they are."""

    def best_payload(self, state, k: int) -> Any:
        """The pytree kept in ``best/`` for replica ``k`` (what inference restores)."""

    def test_best(self, best_dir: Checkpointer, best_epoch: int, state, k: int) -> dict:
        """Test metrics of replica ``k``'s best parameters when ``evaluate`` skipped test."""

    def fit(self) -> tuple[Any, dict, dict]:
        """Closed-form tasks: ``(payload for best/, record as evaluate's, extra results)``."""

    def summary(self, state) -> dict:
        """Results fields that describe the run (model, dataset, parameters, ...)."""

    # optional: host_state() -> dict and set_host_state(dict): host-side state (e.g. a numpy
    # generator) checkpointed with the loop's bookkeeping; epoch_info: extra fields of the
    # epoch's metrics record.


class Selection:
    """Model selection on validation: ``eval.select_metric`` (higher is better, unless its name
    ends with ``loss``), compared after rounding to ``eval.select_digits`` (None: exact), or
    ``eval.select_rule = "any"``: an evaluation improves when any validation metric beats its best
    so far (DiffuRec's reference)."""

    def __init__(self, ecfg):
        self.metric = ecfg.select_metric
        digits = ecfg.get("select_digits", 4)
        self.digits = None if digits is None else int(digits)
        self.rule = ecfg.get("select_rule", "metric")
        self.sign = -1.0 if self.metric.endswith("loss") else 1.0
        if self.rule not in ("metric", "any"):
            raise ValueError(f"config.eval.select_rule must be 'metric' or 'any', got {self.rule!r}")

    def score(self, valid: dict) -> float:
        v = self.sign * float(valid[self.metric])
        return v if self.digits is None else round(v, self.digits)

    def update(self, rep: dict, valid: dict) -> bool:
        """Whether ``valid`` improves on replica record ``rep`` (updated in place when so)."""
        score = self.score(valid)
        if self.rule == "any":
            prev = rep.get("best_valid_all")
            improved = prev is None or any(valid[k] > prev[k] for k in valid)
            if improved:
                rep["best_valid_all"] = {k: max(valid[k], prev[k]) if prev else valid[k] for k in valid}
        else:
            improved = score > rep["best_score"]
        if improved:
            rep.update(best_score=score)
        return improved


def stopped(rep: dict, epoch: int, patience: int) -> bool:
    """The one early-stopping rule, checked before ``epoch``: the replica has been evaluated and
    ``epoch - best_epoch >= patience``."""
    return rep["best"] is not None and epoch - rep["best_epoch"] >= patience


def check_train_fields(t) -> None:
    """The ``config.train`` fields the loop reads (batch, epochs, evaluation, patience, budget)."""
    for field in ("batch_size", "num_epochs", "eval_every_epochs", "patience_epochs"):
        if int(t.get(field, 1)) < 1:
            raise ValueError(f"config.train.{field} must be >= 1, got {t[field]}")
    if float(t.get("time_budget_s", 0) or 0) < 0:
        raise ValueError(f"config.train.time_budget_s must be >= 0 (0: no budget), got {t.time_budget_s}")


def over_budget(t_cfg, meta) -> bool:
    """True once training + evaluation time (resumed runs included) reaches ``train.time_budget_s``
    (0 or absent: no budget)."""
    budget = float(t_cfg.get("time_budget_s", 0) or 0)
    return budget > 0 and meta["train_time_s"] + meta["eval_time_s"] >= budget


def mean_std(dicts: list[dict]) -> tuple[dict, dict]:
    """Per-key mean and sample std (ddof 1; 0 for one dict) over metric dicts with the same keys."""
    keys = dicts[0].keys()
    arr = {k: np.array([d[k] for d in dicts], np.float64) for k in keys}
    std = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in arr.items()}
    return {k: float(v.mean()) for k, v in arr.items()}, std


def _eval_record(epoch: int, seconds: float, res: dict, seed: int | None) -> dict:
    rec = {"epoch": epoch, "eval/time_s": seconds}
    if seed is not None:
        rec["seed"] = seed
    rec.update({f"valid/{m}": v for m, v in res["valid"].items()})
    rec.update({f"test/{m}": v for m, v in (res.get("test") or {}).items()})
    return rec


def _results(config, reps: list[dict], seeds: list[int], common: dict) -> dict:
    """``results.json``: one replica's best record, or means ± std over replicas."""
    if len(seeds) == 1:
        r = reps[0]
        return {"seed": seeds[0], **r["best"], "best_epoch": r["best_epoch"], **common}
    test_m, test_s = mean_std([r["best"]["test"] for r in reps])
    valid_m, valid_s = mean_std([r["best"]["valid"] for r in reps])
    return {
        "seeds": seeds, "test": test_m, "test_std": test_s, "valid": valid_m, "valid_std": valid_s,
        "best_epoch": [r["best_epoch"] for r in reps],
        "per_seed": [{"seed": s, **r["best"], "best_epoch": r["best_epoch"]} for s, r in zip(seeds, reps)],
        **common,
    }


def fit_once(task: Task, config, workdir: str) -> dict:
    """A closed-form task: fit, evaluate once, keep the fit in ``best/``, write results.json."""
    save_config(config, workdir)
    t0 = time.perf_counter()
    payload, res, extra = task.fit()
    writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"))
    writer.truncate_after(0)
    history = extra.pop("history", [])  # iterative fits log their epochs
    for h in history:
        writer.write(h)
    epoch = int(extra.pop("epochs_run", 1))
    writer.write(_eval_record(epoch, extra.get("eval_time_s", 0.0), res, None)
                 | {"train/fit_s": extra.get("train_time_s", 0.0)})
    best = Checkpointer(os.path.join(workdir, "best"), max_to_keep=1)
    try:
        best.save(epoch, payload, {"epoch": epoch, **extra.pop("best_meta", {}), **res})
    finally:
        best.close()
    rep = {"best": res, "best_epoch": int(extra.pop("best_epoch", epoch))}
    results = _results(config, [rep], task.seeds, {**task.summary(payload), "epochs_run": epoch, **extra})
    write_json(os.path.join(workdir, "results.json"), results)
    log.info("%s fitted in %.1fs: test %s", config.model.name, time.perf_counter() - t0, res["test"])
    return results


def run(task: Task, config, workdir: str) -> dict:
    """Trains ``task`` with early stopping and returns (and writes) ``results.json``'s dictionary.

    Args:
      task: the task's pieces (:class:`Task`), built from ``config`` and its data.
      config: the run's ``ml_collections.ConfigDict`` (``train``: ``num_epochs``,
        ``eval_every_epochs``, ``patience_epochs``, ``max_to_keep``, ``time_budget_s``; ``eval``:
        the :class:`Selection` fields).
      workdir: run directory (created): ``config.json``, ``metrics.jsonl``, ``checkpoints/``,
        ``best/`` and ``results.json``. An existing checkpoint is resumed.

    Returns:
      ``{"test": {...}, "valid": {...}, "best_epoch": ..., "epochs_run": ..., "train_time_s": ...,
      ...}``; with several replicas ``test``/``valid`` are means, ``test_std``/``valid_std`` the
      standard deviations and ``per_seed`` each replica's result.
    """
    if task.closed_form:
        return fit_once(task, config, workdir)
    t_cfg = config.train
    check_train_fields(t_cfg)
    select = Selection(config.eval)
    test_each_eval = not bool(config.eval.get("test_at_end", False))
    save_config(config, workdir)
    seeds, K = task.seeds, len(task.seeds)
    state = task.init_state()

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t_cfg.max_to_keep)
    best_dirs = ["best"] if K == 1 else [os.path.join("best", f"seed_{s}") for s in seeds]
    best_ckpts = [Checkpointer(os.path.join(workdir, d), max_to_keep=1) for d in best_dirs]
    writer = MetricWriter(os.path.join(workdir, "metrics.jsonl"))
    meta: dict[str, Any] = {
        "epoch": 0,
        "seeds": seeds,
        "replicas": [{"best_epoch": 0, "best_score": -math.inf, "best": None} for _ in seeds],
        "train_time_s": 0.0,
        "eval_time_s": 0.0,
    }
    restored = ckpt.restore_latest(jax.eval_shape(lambda: state))  # skips corrupt steps, warns
    if restored is not None:
        _, state, meta = restored
        if hasattr(task, "set_host_state"):
            task.set_host_state(meta.get("host", {}))
        log.info("resumed from epoch %d", meta["epoch"])
    writer.truncate_after(meta["epoch"])
    reps = meta["replicas"]
    spe = task.steps_per_epoch
    bar = progress(t_cfg.num_epochs * spe, meta["epoch"] * spe)
    epoch = meta["epoch"]
    try:
        while epoch < t_cfg.num_epochs:
            epoch += 1
            active = [not stopped(r, epoch, int(t_cfg.patience_epochs)) for r in reps]
            if not any(active):
                log.info("early stop before epoch %d (best epochs %s)", epoch, [r["best_epoch"] for r in reps])
                epoch -= 1
                break

            def on_steps(n, loss, epoch=epoch):
                if loss is not None:
                    bar.set_postfix(epoch=epoch, loss=f"{float(np.mean(loss)):.4g}", refresh=False)
                bar.update(n)

            t0 = time.perf_counter()
            state, losses, n_ex = task.train_epoch(state, epoch, on_steps)
            losses = np.asarray(losses, np.float64).reshape(len(losses), K)
            dt = time.perf_counter() - t0
            meta["train_time_s"] += dt
            bad = ~np.isfinite(losses) & np.asarray(active)[None, :]
            if bad.any():
                b, k = map(int, np.argwhere(bad)[0])
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch}, batch {b}, seed {seeds[k]} (step {(epoch - 1) * spe + b}); "
                    f"last good checkpoint: epoch {meta['epoch']} in {ckpt.directory}")
            rec = {"epoch": epoch, "step": epoch * spe, "train/loss": float(losses.mean()),
                   "train/loss_sum": float(losses.sum(0).mean()), "train/epoch_s": dt,
                   "train/examples_per_s": n_ex / dt}
            if K > 1:
                rec["train/loss_per_seed"] = [float(v) for v in losses.mean(0)]
            rec.update(getattr(task, "epoch_info", {}))
            bar.set_postfix(epoch=epoch, loss=f"{rec['train/loss']:.4g}", ex_s=f"{n_ex / dt:.0f}")
            writer.write(rec)
            over = over_budget(t_cfg, meta)
            if epoch % t_cfg.eval_every_epochs == 0 or epoch == t_cfg.num_epochs or over:
                t0 = time.perf_counter()
                res_k = task.evaluate(state, test=test_each_eval)
                et = time.perf_counter() - t0
                meta["eval_time_s"] += et
                for k, (res, r) in enumerate(zip(res_k, reps)):
                    if not active[k]:
                        continue
                    improved = select.update(r, res["valid"])
                    if improved:
                        r.update(best_epoch=epoch, best=res)
                        best_ckpts[k].save(epoch, task.best_payload(state, k), {"epoch": epoch, **res})
                    writer.write(_eval_record(epoch, et, res, seeds[k] if K > 1 else None))
                    test = res.get("test") or {}
                    log.info("epoch %d%s: valid %s=%.4f%s%s (%.1fs)", epoch,
                             f" seed {seeds[k]}" if K > 1 else "", select.metric, res["valid"][select.metric],
                             f" test {select.metric}={test[select.metric]:.4f}" if select.metric in test else "",
                             " *" if improved else "", et)
                bar.set_postfix(epoch=epoch, best=" ".join(
                    f"{abs(r['best_score']):.4f}@{r['best_epoch']}" for r in reps))
                meta["epoch"] = epoch
                if hasattr(task, "host_state"):
                    meta["host"] = task.host_state()
                ckpt.save(epoch, state, meta)
                if over:
                    log.info("time budget of %.0f s spent after epoch %d: stopping", float(t_cfg.time_budget_s), epoch)
                    break
        if any(r["best"] is None for r in reps):  # cannot happen: the last epoch always evaluates
            raise RuntimeError("training ended without any evaluation")
        for k, r in enumerate(reps):
            if r["best"].get("test") is None:  # test once, on the best parameters (DiffuRec's protocol)
                best_ckpts[k].wait()
                t0 = time.perf_counter()
                r["best"] = {**r["best"], **task.test_best(best_ckpts[k], r["best_epoch"], state, k)}
                meta["eval_time_s"] += time.perf_counter() - t0
    finally:
        bar.close()
        ckpt.close()
        for c in best_ckpts:
            c.close()
    common = {**task.summary(state), "epochs_run": epoch, "train_time_s": meta["train_time_s"],
              "eval_time_s": meta["eval_time_s"]}
    results = _results(config, reps, seeds, common)
    write_json(os.path.join(workdir, "results.json"), results)
    return results
