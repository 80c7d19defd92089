"""Run reports: a run directory rendered to ``report.md`` with PNG plots; comparison tables.

A run directory is what :func:`diffrec_jax.train.run` writes: ``config.json``, ``metrics.jsonl``
(one JSON object per line: a train record per epoch with ``train/loss``, an evaluation record
with ``valid/<metric>@K`` and ``test/<metric>@K``, and with ``num_seeds > 1`` one evaluation
record per seed carrying ``"seed"``) and ``results.json`` (the best validation epoch's metrics;
with several seeds their mean, ``*_std`` and ``per_seed``).

* :func:`render_report` writes ``report.md``, ``learning_curve.png`` (train loss per epoch;
  validation and test metric per evaluation, one line per seed) and ``metrics_by_k.png``
  (test metrics at every cut-off K, error bars = std over seeds) next to each other.
* :func:`compare_runs` finds every run below a folder (e.g. ``experiments/reproduce.py``'s
  ``seed_*`` runs or a sweep) and writes ``comparison.csv``, ``comparison.md`` (one row per run,
  then mean ± std over runs whose configs differ only in the seed) and ``comparison.png``.
* :func:`write_tensorboard` converts ``metrics.jsonl`` to TensorBoard event files when
  ``tensorboardX`` or ``tensorboard`` is installed (and does nothing otherwise).

Plots use matplotlib's object API (``matplotlib.figure.Figure``, no ``pyplot``), so rendering
never changes the backend of the caller (a notebook keeps its inline plots) and needs no display.
matplotlib is the ``plot`` extra.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

__all__ = [
    "Run",
    "compare_runs",
    "find_runs",
    "load_run",
    "metric_table",
    "plot_learning_curve",
    "plot_metrics_by_k",
    "render",
    "render_report",
    "write_tensorboard",
]

log = logging.getLogger("diffrec_jax")
PathLike = str | os.PathLike
_METRIC = re.compile(r"^([a-z_]+)@(\d+)$")
_SKIP_DIRS = {"checkpoints", "best"}


class Run(NamedTuple):
    """What a run directory holds.

    Attributes:
        path: the run directory.
        config: ``config.json`` as a dict (``{}`` if absent).
        records: the ``metrics.jsonl`` lines, in order (``[]`` if absent).
        results: ``results.json`` (None while the run has not finished).
    """

    path: Path
    config: dict
    records: list[dict]
    results: dict | None

    @property
    def name(self) -> str:
        """``<model> on <dataset>`` (or the folder name)."""
        r = self.results or {}
        model = r.get("model") or self.config.get("model", {}).get("name")
        return f"{model} on {r['dataset']}" if model and r.get("dataset") else self.path.name

    @property
    def seeds(self) -> list[int]:
        """Seeds of the run (several with ``num_seeds > 1``)."""
        r = self.results or {}
        if "seeds" in r:
            return list(r["seeds"])
        if "seed" in r:
            return [r["seed"]]
        return [self.config["seed"]] if "seed" in self.config else []

    @property
    def select_metric(self) -> str | None:
        """The validation metric used for model selection (``config.eval.select_metric``)."""
        return self.config.get("eval", {}).get("select_metric")


def load_run(run_dir: PathLike) -> Run:
    """Reads a run directory.

    Args:
        run_dir: folder with ``metrics.jsonl`` and/or ``results.json`` (and ``config.json``).

    Returns:
        The :class:`Run`.

    Raises:
        FileNotFoundError: the folder holds neither ``metrics.jsonl`` nor ``results.json``.
        ValueError: a malformed JSON file or line (naming the file and line).
    """
    path = Path(run_dir)
    files = {n: path / n for n in ("config.json", "metrics.jsonl", "results.json")}
    if not files["metrics.jsonl"].is_file() and not files["results.json"].is_file():
        raise FileNotFoundError(f"{path}: not a run directory (no metrics.jsonl or results.json)")
    config = _read_json(files["config.json"]) if files["config.json"].is_file() else {}
    results = _read_json(files["results.json"]) if files["results.json"].is_file() else None
    records = []
    if files["metrics.jsonl"].is_file():
        with open(files["metrics.jsonl"]) as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{files['metrics.jsonl']}: line {i}: not JSON ({e})") from e
    return Run(path, config, records, results)


def _read_json(p: Path) -> dict:
    try:
        with open(p) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not JSON ({e})") from e


# --------------------------------------------------------------------------- #
# Tables
# --------------------------------------------------------------------------- #


def _split_metric(name: str) -> tuple[str, int] | None:
    m = _METRIC.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def metric_table(
    metrics: dict[str, float], std: dict[str, float] | None = None, *, digits: int = 4
) -> str:
    """Markdown table of ``{"recall@20": v, ...}``: one row per metric, one column per K.

    Args:
        metrics: metric name ``<name>@<K>`` -> value.
        std: optional standard deviations (shown as ``mean ± std``).
        digits: decimals.

    Returns:
        The markdown table (rows and columns sorted), or ``""`` without ``name@K`` keys.
    """
    parsed = {k: _split_metric(k) for k in metrics}
    names = sorted({p[0] for p in parsed.values() if p})
    ks = sorted({p[1] for p in parsed.values() if p})
    if not names:
        return ""
    lines = ["| metric | " + " | ".join(f"@{k}" for k in ks) + " |",
             "| --- |" + " ---: |" * len(ks)]
    for n in names:
        cells = []
        for k in ks:
            key = f"{n}@{k}"
            if key not in metrics:
                cells.append("")
            elif std and key in std:
                cells.append(f"{metrics[key]:.{digits}f} ± {std[key]:.{digits}f}")
            else:
                cells.append(f"{metrics[key]:.{digits}f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt_s(x: Any) -> str:
    return f"{x:.1f} s" if isinstance(x, (int, float)) else "-"


def _summary_rows(run: Run) -> list[tuple[str, str]]:
    r = run.results or {}
    cfg = run.config
    rows = [
        ("model", str(r.get("model") or cfg.get("model", {}).get("name", "-"))),
        ("dataset", str(r.get("dataset") or cfg.get("data", {}).get("source", "-"))),
        ("seed(s)", ", ".join(str(s) for s in run.seeds) or "-"),
        ("best epoch", str(r.get("best_epoch", "-"))),
        ("epochs run", str(r.get("epochs_run", _last_epoch(run.records)))),
        ("selected on", f"valid/{run.select_metric}" if run.select_metric else "-"),
        ("parameters", f"{r['params']:,}" if isinstance(r.get("params"), int) else "-"),
        ("train time", _fmt_s(r.get("train_time_s"))),
        ("eval time", _fmt_s(r.get("eval_time_s"))),
    ]
    if "num_devices" in r:
        rows.append(("devices", str(r["num_devices"])))
    if "protocol" in r:
        rows.append(("eval protocol", str(r["protocol"])))
    return rows


def _last_epoch(records: list[dict]) -> Any:
    epochs = [rec["epoch"] for rec in records if "epoch" in rec]
    return max(epochs) if epochs else "-"


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #


def _figure(figsize: tuple[float, float], ncols: int = 1):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(
            f'plots need matplotlib: pip install "diffrec_jax[plot]" ({e})'
        ) from e
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


def _curve_metrics(run: Run, metrics: Sequence[str] | None) -> list[str]:
    if metrics:
        return list(metrics)
    evals = [rec for rec in run.records if any(k.startswith("valid/") for k in rec)]
    available = {k for rec in evals for k in rec}
    sel = run.select_metric
    if sel is None or f"valid/{sel}" not in available:
        cands = sorted(k[len("valid/"):] for k in available if k.startswith("valid/"))
        sel = cands[0] if cands else None
    if sel is None:
        return []
    out = [f"valid/{sel}", f"test/{sel}"]
    parsed = _split_metric(sel)
    if parsed and parsed[0] != "ndcg" and f"test/ndcg@{parsed[1]}" in available:
        out.append(f"test/ndcg@{parsed[1]}")
    return [m for m in out if m in available]


def plot_learning_curve(
    run: Run | PathLike, path: PathLike, *, metrics: Sequence[str] | None = None
) -> Path | None:
    """Learning curve: train loss per epoch (left), evaluation metrics per evaluation (right).

    With several seeds in one run, each seed gets a thin line and the mean a thick one.

    Args:
        run: a :class:`Run` or its directory.
        path: output PNG.
        metrics: ``metrics.jsonl`` keys to plot on the right (default: ``valid/<select
            metric>``, ``test/<select metric>`` and the test NDCG at the same K).

    Returns:
        ``path``, or None when there is no curve to draw (no train loss and fewer than two
        evaluations, e.g. a closed-form model).
    """
    run = run if isinstance(run, Run) else load_run(run)
    train = [rec for rec in run.records if "train/loss" in rec]
    names = _curve_metrics(run, metrics)
    evals = [rec for rec in run.records if any(m in rec for m in names)]
    if not train and len({rec.get("epoch") for rec in evals}) < 2:
        return None  # e.g. a closed-form model: one evaluation, nothing to draw a curve of
    panels = int(bool(train)) + int(bool(evals))
    fig, axes = _figure((5.2 * panels, 3.6), panels)
    ax_i = 0
    if train:
        ax = axes[ax_i]
        ax_i += 1
        ep = [rec["epoch"] for rec in train]
        per_seed = [rec.get("train/loss_per_seed") for rec in train]
        if all(p is not None for p in per_seed) and per_seed:
            for j, s in enumerate(run.seeds):
                ax.plot(ep, [p[j] for p in per_seed], lw=0.8, alpha=0.6, label=f"seed {s}")
            ax.plot(ep, [rec["train/loss"] for rec in train], lw=2, color="k", label="mean")
            ax.legend(fontsize=8)
        else:
            ax.plot(ep, [rec["train/loss"] for rec in train], marker="." if len(ep) < 60 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss")
        ax.set_title("training loss")
        ax.grid(alpha=0.3)
    if evals:
        ax = axes[ax_i]
        seeds = sorted({rec["seed"] for rec in evals if "seed" in rec})
        colors = {}
        for m in names:
            if seeds:
                for j, s in enumerate(seeds):
                    pts = [(rec["epoch"], rec[m]) for rec in evals if rec.get("seed") == s and m in rec]
                    line = ax.plot(*zip(*pts), lw=0.8, alpha=0.5, color=colors.get(m),
                                   label=None)[0]
                    colors.setdefault(m, line.get_color())
                by_epoch: dict[int, list[float]] = {}
                for rec in evals:
                    if m in rec:
                        by_epoch.setdefault(rec["epoch"], []).append(rec[m])
                xs = sorted(by_epoch)
                ax.plot(xs, [sum(by_epoch[x]) / len(by_epoch[x]) for x in xs], lw=2, marker="o",
                        ms=3, color=colors[m], label=f"{m} (mean of {len(seeds)})")
            else:
                pts = [(rec["epoch"], rec[m]) for rec in evals if m in rec]
                ax.plot(*zip(*pts), marker="o", ms=3, label=m)
        best = (run.results or {}).get("best_epoch")
        for b in best if isinstance(best, list) else ([best] if best else []):
            ax.axvline(b, color="grey", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.set_title("evaluation" + (" (dotted: best epoch)" if best else ""))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(run.name, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_metrics_by_k(
    run: Run | PathLike, path: PathLike, *, split: str = "test"
) -> Path | None:
    """Grouped bar chart of the best epoch's metrics at every cut-off K.

    One group per metric (recall, ndcg, ...), one bar per K; error bars are the std over seeds
    when the run has several.

    Args:
        run: a :class:`Run` or its directory.
        path: output PNG.
        split: ``"test"`` or ``"valid"``.

    Returns:
        ``path``, or None without ``results.json`` metrics.
    """
    run = run if isinstance(run, Run) else load_run(run)
    r = run.results or {}
    vals, std = r.get(split) or {}, r.get(f"{split}_std") or {}
    parsed = {k: _split_metric(k) for k in vals}
    names = sorted({p[0] for p in parsed.values() if p})
    ks = sorted({p[1] for p in parsed.values() if p})
    if not names:
        return None
    fig, (ax,) = _figure((max(5.0, 1.1 * len(names) * max(1, len(ks)) * 0.45 + 2), 3.6))
    width = 0.8 / len(ks)
    for j, k in enumerate(ks):
        xs = [i + (j - (len(ks) - 1) / 2) * width for i in range(len(names))]
        ys = [vals.get(f"{n}@{k}", math.nan) for n in names]
        err = [std.get(f"{n}@{k}", 0.0) for n in names] if std else None
        ax.bar(xs, ys, width, yerr=err, capsize=2 if err else 0, label=f"@{k}")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(f"{split} (best epoch)")
    n_seeds = len(run.seeds)
    ax.set_title(f"{run.name}: {split} metrics by K"
                 + (f" (mean ± std, {n_seeds} seeds)" if std else ""), fontsize=10)
    ax.legend(fontsize=8, ncols=min(len(ks), 4))
    ax.grid(axis="y", alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------- #
# Single-run report
# --------------------------------------------------------------------------- #


def render_report(
    run_dir: PathLike, out_dir: PathLike | None = None, *, plots: bool = True
) -> Path:
    """Renders one run directory to ``report.md`` (and its PNG plots).

    Args:
        run_dir: the run directory.
        out_dir: where to write (default: ``run_dir``).
        plots: also draw ``learning_curve.png`` and ``metrics_by_k.png`` (needs matplotlib).

    Returns:
        Path of ``report.md``.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path
    out.mkdir(parents=True, exist_ok=True)
    r = run.results
    md = [f"# Run report: {run.name}", "", f"Run directory: `{run.path}`", ""]
    md += ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in _summary_rows(run)] + [""]
    if r is None:
        md += ["**No `results.json`: the run has not finished** (curves below are partial).", ""]
    else:
        n = len(run.seeds)
        for split in ("test", "valid"):
            tab = metric_table(r.get(split) or {}, r.get(f"{split}_std"))
            if tab:
                what = "mean ± std over seeds" if r.get(f"{split}_std") else "best validation epoch"
                md += [f"## {split.capitalize()} metrics ({what})", "", tab, ""]
        if r.get("per_seed"):
            sel = run.select_metric
            keys = [k for k in (sel, "recall@20", "ndcg@20", "hr@20") if k and k in r["test"]]
            keys = list(dict.fromkeys(keys))
            md += [f"## Per seed ({n} seeds trained together)", "",
                   "| seed | best epoch | " + " | ".join(f"test {k}" for k in keys) + " |",
                   "| --- | --- |" + " ---: |" * len(keys)]
            for p in r["per_seed"]:
                md.append(f"| {p['seed']} | {p.get('best_epoch', '-')} | "
                          + " | ".join(f"{p['test'][k]:.4f}" for k in keys) + " |")
            md.append("")
        extra = [k for k in ("test_exact", "test_reference") if k in r]
        if extra and r.get("protocol"):
            md += [f"Headline numbers use the `{r['protocol']}` protocol; both averages:", ""]
            for k in extra:
                tab = metric_table(r[k])
                md += [f"`{k}`:", "", tab, ""]
    if plots:
        lc = plot_learning_curve(run, out / "learning_curve.png")
        mk = plot_metrics_by_k(run, out / "metrics_by_k.png")
        if lc or mk:
            md += ["## Plots", ""]
        if lc:
            md += ["![learning curve](learning_curve.png)", ""]
        if mk:
            md += ["![metrics by K](metrics_by_k.png)", ""]
    if run.config:
        md += ["<details><summary>config.json</summary>", "", "```json",
               json.dumps(run.config, indent=2), "```", "", "</details>", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path


# --------------------------------------------------------------------------- #
# Comparisons
# --------------------------------------------------------------------------- #


def find_runs(root: PathLike) -> list[Path]:
    """Run directories (folders holding ``results.json``) at or below ``root``, sorted.

    ``checkpoints/`` and ``best/`` folders are not searched.
    """
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        if "results.json" in filenames:
            found.append(Path(dirpath))
    return sorted(found, key=lambda p: _natural_key(str(p)))


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _config_key(cfg: dict) -> str:
    """The config without its seeds: runs with equal keys differ only in the seed."""
    c = dict(cfg)
    c.pop("seed", None)
    return json.dumps(c, sort_keys=True)


def _default_columns(runs: Sequence[Run]) -> list[str]:
    common = None
    for run in runs:
        keys = set((run.results or {}).get("test", {}))
        common = keys if common is None else common & keys
    common = common or set()
    pref = [f"{m}@{k}" for k in (10, 20) for m in ("recall", "ndcg", "hr")]
    sel = {run.select_metric for run in runs if run.select_metric}
    cols = [c for c in pref if c in common] + sorted(c for c in sel if c in common)
    return list(dict.fromkeys(cols)) or sorted(common)[:6]


def compare_runs(
    runs: PathLike | Iterable[PathLike],
    out_dir: PathLike | None = None,
    *,
    metrics: Sequence[str] | None = None,
    split: str = "test",
    plots: bool = True,
) -> dict[str, Path]:
    """Comparison table of several runs: ``comparison.csv``, ``comparison.md``, ``comparison.png``.

    One row per run (``<split>`` metrics of its best epoch, mean ± std for a multi-seed run),
    then one row per group of runs whose ``config.json`` differ only in ``seed`` (mean ± std
    over the group, e.g. ``experiments/reproduce.py``'s ``seed_*`` runs). A ``summary.md`` found
    in the folder (the reproduce script's table beside the paper's numbers) is included.

    Args:
        runs: a folder searched with :func:`find_runs`, or run directories.
        out_dir: where to write (default: the folder, or the current directory for a list).
        metrics: columns (default: Recall/NDCG/HR at 10 and 20 present in every run, plus the
            selection metric).
        split: ``"test"`` or ``"valid"``.
        plots: draw ``comparison.png`` (needs matplotlib).

    Returns:
        ``{"csv": ..., "md": ..., "png": ...}`` paths (``png`` only when drawn).

    Raises:
        FileNotFoundError: no finished run found.
    """
    root = None
    if isinstance(runs, (str, os.PathLike)):
        root = Path(runs)
        dirs = find_runs(root)
    else:
        dirs = [Path(d) for d in runs]
    loaded = [load_run(d) for d in dirs]
    loaded = [r for r in loaded if r.results is not None]
    if not loaded:
        raise FileNotFoundError(f"{runs}: no finished run (no results.json) found")
    out = Path(out_dir) if out_dir is not None else (root if root is not None else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    cols = list(metrics) if metrics else _default_columns(loaded)

    def label(run: Run) -> str:
        if root is not None:
            rel = run.path.relative_to(root).as_posix()
            return rel if rel != "." else run.path.name
        return run.path.name

    rows = []  # (label, model, dataset, seeds, best_epoch, {metric: (mean, std)})
    for run in loaded:
        r = run.results
        vals, std = r.get(split, {}), r.get(f"{split}_std", {})
        rows.append((label(run), r.get("model", "-"), r.get("dataset", "-"),
                     " ".join(str(s) for s in run.seeds), r.get("best_epoch", "-"),
                     {m: (vals.get(m), std.get(m)) for m in cols}))
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(loaded):
        groups.setdefault(_config_key(run.config), []).append(i)
    group_rows = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        stats = {}
        for m in cols:
            xs = [rows[i][5][m][0] for i in idx if rows[i][5][m][0] is not None]
            mean = sum(xs) / len(xs) if xs else None
            sd = (math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
                  if len(xs) > 1 else None)
            stats[m] = (mean, sd)
        seeds = " ".join(rows[i][3] for i in idx)
        group_rows.append((" + ".join(rows[i][0] for i in idx), rows[idx[0]][1],
                           rows[idx[0]][2], seeds, "-", stats))

    csv_path = out / "comparison.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "kind", "model", "dataset", "seeds", "best_epoch"]
                   + [c for m in cols for c in (f"{split}/{m}", f"{split}/{m}_std")])
        for kind, rs in (("run", rows), ("seed_mean", group_rows)):
            for lab, model, ds, seeds, be, st in rs:
                be_s = json.dumps(be) if isinstance(be, list) else be
                w.writerow([lab, kind, model, ds, seeds, be_s]
                           + [("" if v is None else f"{v:.6g}") for m in cols for v in st[m]])

    def cell(v: tuple) -> str:
        mean, sd = v
        if mean is None:
            return "-"
        return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")

    head = ("| run | model | dataset | seeds | best epoch | "
            + " | ".join(f"{split} {m}" for m in cols) + " |")
    sep = "| --- | --- | --- | --- | --- |" + " ---: |" * len(cols)
    md = [f"# Comparison of {len(rows)} run(s)", "", head, sep]
    for lab, model, ds, seeds, be, st in rows:
        md.append(f"| {lab} | {model} | {ds} | {seeds} | {be} | "
                  + " | ".join(cell(st[m]) for m in cols) + " |")
    if group_rows:
        md += ["", "Runs whose configs differ only in the seed, mean ± std over the runs:", "",
               head, sep]
        for lab, model, ds, seeds, be, st in group_rows:
            md.append(f"| {lab} | {model} | {ds} | {seeds} | {be} | "
                      + " | ".join(cell(st[m]) for m in cols) + " |")
    if root is not None and (root / "summary.md").is_file():
        md += ["", "## summary.md (the reproduce script's table)", "",
               (root / "summary.md").read_text().strip()]
    result = {"csv": csv_path}
    if plots and cols:
        png = _plot_comparison(rows, group_rows, cols, out / "comparison.png", split)
        md += ["", "![comparison](comparison.png)"]
        result["png"] = png
    md_path = out / "comparison.md"
    md_path.write_text("\n".join(md) + "\n")
    result["md"] = md_path
    return result


def _plot_comparison(rows, group_rows, cols, path: Path, split: str) -> Path:
    bars = list(rows) + list(group_rows)
    fig, (ax,) = _figure((max(5.0, 0.5 * len(bars) * len(cols) + 2.5), 3.8))
    width = 0.8 / len(bars)
    for j, (lab, *_rest, st) in enumerate(bars):
        xs = [i + (j - (len(bars) - 1) / 2) * width for i in range(len(cols))]
        ys = [st[m][0] if st[m][0] is not None else math.nan for m in cols]
        err = [st[m][1] or 0.0 for m in cols]
        hatch = "//" if j >= len(rows) else None
        ax.bar(xs, ys, width, yerr=err, capsize=2, label=lab if len(lab) < 40 else lab[:37] + "...",
               hatch=hatch)
    ax.set_xticks(range(len(cols)), [f"{split} {m}" for m in cols])
    ax.set_title("comparison (hatched: mean ± std over seeds)" if group_rows else "comparison",
                 fontsize=10)
    ax.legend(fontsize=7, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    return path


def render(
    path: PathLike,
    out_dir: PathLike | None = None,
    *,
    plots: bool = True,
    metrics: Sequence[str] | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Renders whatever ``path`` is: a run directory (report) or a folder of runs (comparison).

    For a folder of runs, each run also gets its own ``report.md``: in the run directory, or in
    ``out_dir/<run path relative to the folder>`` when ``out_dir`` is given.

    Args:
        path: a run directory or a folder with runs below it.
        out_dir: where to write (default: next to the data).
        plots: draw the PNG plots (needs matplotlib).
        metrics, split: columns and split of the comparison table (see :func:`compare_runs`).

    Returns:
        ``{"report": ...}`` for a run; ``{"csv", "md", "png", "reports": [...]}`` for a folder.
    """
    path = Path(path)
    if (path / "results.json").is_file() or (path / "metrics.jsonl").is_file():
        return {"report": render_report(path, out_dir, plots=plots)}
    found = find_runs(path)
    if not found:
        raise FileNotFoundError(f"{path}: no run directory (results.json) at or below it")
    out: dict[str, Any] = dict(
        compare_runs(path, out_dir, metrics=metrics, split=split, plots=plots))
    out["reports"] = [
        render_report(d, None if out_dir is None else Path(out_dir) / d.relative_to(path),
                      plots=plots)
        for d in found
    ]
    return out


# --------------------------------------------------------------------------- #
# TensorBoard
# --------------------------------------------------------------------------- #


def _tb_writer(logdir: Path):
    """A ``(add_scalar(tag, value, step), close())`` pair from tensorboardX or tensorboard."""
    try:
        from tensorboardX import SummaryWriter

        w = SummaryWriter(str(logdir))
        return w.add_scalar, w.close
    except ImportError:
        pass
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        return None
    w = EventFileWriter(str(logdir))

    def add_scalar(tag: str, value: float, step: int) -> None:
        summ = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        w.add_event(Event(summary=summ, step=int(step)))

    return add_scalar, w.close


def write_tensorboard(run_dir: PathLike, logdir: PathLike | None = None) -> Path | None:
    """Converts ``metrics.jsonl`` to TensorBoard scalars (``tensorboard --logdir <logdir>``).

    Every numeric field of every record becomes a scalar tagged with its key (``train/loss``,
    ``valid/recall@20`` ...) at ``step = epoch``; per-seed evaluation records are tagged
    ``seed_<s>/<key>``. Uses ``tensorboardX`` if installed, else ``tensorboard``'s own event
    writer (no TensorFlow needed); with neither it logs a note and returns None.

    Args:
        run_dir: the run directory.
        logdir: where to write the event file (default: ``run_dir/tensorboard``).

    Returns:
        ``logdir``, or None when no TensorBoard writer is installed.
    """
    run = load_run(run_dir)
    logdir = Path(logdir) if logdir is not None else run.path / "tensorboard"
    made = _tb_writer(logdir) if _tb_available() else None
    if made is None:
        log.warning("write_tensorboard: neither tensorboardX nor tensorboard is installed; skipped")
        return None
    add_scalar, close = made
    try:
        for rec in run.records:
            step = int(rec.get("epoch", 0))
            prefix = f"seed_{rec['seed']}/" if "seed" in rec else ""
            for k, v in rec.items():
                if k in ("epoch", "seed", "step") or isinstance(v, bool):
                    continue
                if isinstance(v, (int, float)) and math.isfinite(v):
                    add_scalar(prefix + k, float(v), step)
                elif isinstance(v, list) and k == "train/loss_per_seed":
                    for s, x in zip(run.seeds, v):
                        add_scalar(f"seed_{s}/train/loss", float(x), step)
    finally:
        close()
    return logdir


def _tb_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboardX", "tensorboard"))
