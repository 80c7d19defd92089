"""Tests of diffrec_jax.report on hand-written run directories (the trainer's file formats)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from diffrec_jax import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def metrics(scale: float, ks=(10, 20)) -> dict:
    return {f"{m}@{k}": scale * f * k / 20 for m, f in (("recall", 0.2), ("ndcg", 0.1)) for k in ks}


def make_run(d: Path, *, seed=1, lr=1e-3, seeds=None, finished=True, closed_form=False) -> Path:
    """Writes config.json, metrics.jsonl and results.json as diffrec_jax.train does."""
    d.mkdir(parents=True)
    cfg = {"seed": seed, "num_seeds": len(seeds or [seed]), "model": {"name": "diffrec"},
           "optim": {"lr": lr}, "eval": {"select_metric": "recall@20"}}
    (d / "config.json").write_text(json.dumps(cfg))
    recs = []
    if closed_form:
        recs.append({"epoch": 1, "train/fit_s": 0.1, **{f"valid/{k}": v for k, v in metrics(1).items()},
                     **{f"test/{k}": v for k, v in metrics(1).items()}})
    else:
        for ep in range(1, 5):
            rec = {"epoch": ep, "step": 3 * ep, "train/loss": 10.0 / ep}
            if seeds:
                rec["train/loss_per_seed"] = [10.0 / ep + i for i in range(len(seeds))]
            recs.append(rec)
            if ep % 2 == 0:
                for s in seeds or [None]:
                    ev = {"epoch": ep, "eval/time_s": 0.5}
                    if s is not None:
                        ev["seed"] = s
                    ev.update({f"valid/{k}": v for k, v in metrics(ep / 4 + (s or 0) / 10).items()})
                    ev.update({f"test/{k}": v for k, v in metrics(ep / 4).items()})
                    recs.append(ev)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if finished:
        res = {"model": "diffrec", "dataset": "toy", "epochs_run": 4, "params": 1234,
               "train_time_s": 1.0, "eval_time_s": 0.5, "valid": metrics(0.9), "test": metrics(lr * 1000)}
        if seeds:
            res.update(seeds=seeds, best_epoch=[4] * len(seeds), test_std=metrics(0.01),
                       valid_std=metrics(0.01),
                       per_seed=[{"seed": s, "test": metrics(1), "valid": metrics(1), "best_epoch": 4}
                                 for s in seeds])
        else:
            res.update(seed=seed, best_epoch=4)
        (d / "results.json").write_text(json.dumps(res))
    return d


def test_single_run_report(tmp_path):
    run = make_run(tmp_path / "run")
    md = report.render_report(run).read_text()
    assert "# Run report: diffrec on toy" in md
    assert "| recall | 0.1000 | 0.2000 |" in md  # test metrics, rows by metric, columns by K
    assert "![learning curve](learning_curve.png)" in md and "valid/recall@20" in md
    for png in ("learning_curve.png", "metrics_by_k.png"):
        assert (run / png).read_bytes()[:8] == PNG


def test_multi_seed_and_closed_form_reports(tmp_path):
    multi = make_run(tmp_path / "multi", seeds=[1, 2, 3])
    out = tmp_path / "out"
    md = report.render_report(multi, out).read_text()
    assert "mean ± std over seeds" in md and "0.2000 ± 0.0020" in md
    assert "## Per seed (3 seeds trained together)" in md and "| 3 | 4 |" in md
    assert (out / "learning_curve.png").is_file() and not (multi / "report.md").exists()
    closed = make_run(tmp_path / "ease", closed_form=True)
    md = report.render_report(closed).read_text()
    assert "learning_curve.png" not in md and (closed / "metrics_by_k.png").is_file()


def test_unfinished_and_malformed_runs(tmp_path):
    run = make_run(tmp_path / "running", finished=False)
    md = report.render_report(run).read_text()
    assert "has not finished" in md and (run / "learning_curve.png").is_file()
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        report.load_run(tmp_path)
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2: not JSON"):
        report.load_run(run)


def test_compare_runs_groups_seeds(tmp_path):
    root = tmp_path / "sweep"
    for s in (1, 2, 3):
        make_run(root / f"seed_{s}", seed=s)
    make_run(root / "lr_high" / "seed_1", lr=2e-3)  # other config: its own row, no group
    (root / "summary.md").write_text("| metric | ours | paper |\n")
    out = report.render(root)
    assert len(out["reports"]) == 4 and out["png"].read_bytes()[:8] == PNG
    md = out["md"].read_text()
    assert "Comparison of 4 run(s)" in md and "| seed_1 + seed_2 + seed_3 |" in md
    assert "lr_high/seed_1 + " not in md and "| metric | ours | paper |" in md
    rows = list(csv.DictReader(open(out["csv"])))
    assert [r["kind"] for r in rows] == ["run"] * 4 + ["seed_mean"]
    assert rows[0]["run"] == "lr_high/seed_1" and float(rows[0]["test/recall@20"]) == pytest.approx(0.4)
    assert float(rows[-1]["test/recall@20"]) == pytest.approx(0.2)
    assert float(rows[-1]["test/recall@20_std"]) == pytest.approx(0.0, abs=1e-12)


def test_tensorboard_is_optional(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", seeds=[1, 2])
    monkeypatch.setattr(report, "_tb_available", lambda: False)
    assert report.write_tensorboard(run) is None and not (run / "tensorboard").exists()
    monkeypatch.undo()
    if not report._tb_available():
        pytest.skip("neither tensorboardX nor tensorboard installed")
    logdir = report.write_tensorboard(run)
    assert any(p.name.startswith("events") for p in logdir.iterdir())


def test_cli(tmp_path):
    make_run(tmp_path / "runs" / "a")
    make_run(tmp_path / "runs" / "b", lr=2e-3)
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "report.py"), f"--path={tmp_path / 'runs'}",
         f"--out_dir={tmp_path / 'rep'}", "--metrics=recall@20"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "rep" / "comparison.md").is_file()
    assert (tmp_path / "rep" / "b" / "report.md").is_file()
    assert "test recall@20" in (tmp_path / "rep" / "comparison.md").read_text()
