"""End-to-end training on a tiny synthetic config: results, resume, determinism, config checks."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import test as test_config  # noqa: E402
from diffrec_jax.checkpointing import Checkpointer  # noqa: E402
from diffrec_jax import training  # noqa: E402
from diffrec_jax.training.io import MetricWriter  # noqa: E402
from diffrec_jax import cli  # noqa: E402


def _cfg(**overrides):
    c = test_config.get_config()
    for path, value in overrides.items():
        node = c
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_end_to_end_writes_results_and_metrics(tmp_path):
    res = training.train_and_evaluate(_cfg(), str(tmp_path))
    assert set(res["test"]) >= {"recall@10", "ndcg@10", "precision@5", "mrr@20", "hr@20"}
    assert 0.0 < res["test"]["recall@20"] <= 1.0
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["test"] == res["test"]
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in lines if "valid/recall@10" in r] == [2, 4, 6]
    assert all(np.isfinite(r["train/loss"]) for r in lines if "train/loss" in r)
    assert (tmp_path / "config.json").exists()


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path):
    full = training.train_and_evaluate(_cfg(), str(tmp_path / "full"))
    # "interrupted" after epoch 4, then resumed with the full budget in the same workdir
    part = tmp_path / "part"
    training.train_and_evaluate(_cfg(**{"train.num_epochs": 4}), str(part))
    resumed = training.train_and_evaluate(_cfg(), str(part))
    assert resumed["test"] == full["test"]
    assert resumed["valid"] == full["valid"]
    assert resumed["best_epoch"] == full["best_epoch"]
    ck_full = Checkpointer(str(tmp_path / "full" / "checkpoints"))
    ck_part = Checkpointer(str(part / "checkpoints"))
    a, meta_a = ck_full.restore_untyped(6)
    b, meta_b = ck_part.restore_untyped(6)
    ck_full.close(), ck_part.close()
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert meta_a["replicas"] == meta_b["replicas"]
    # metrics.jsonl holds each epoch once
    recs = [json.loads(ln) for ln in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if "train/loss" in r] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    a = training.train_and_evaluate(_cfg(**{"train.num_epochs": 2}), str(tmp_path / "a"))
    b = training.train_and_evaluate(_cfg(**{"train.num_epochs": 2}), str(tmp_path / "b"))
    c = training.train_and_evaluate(_cfg(**{"train.num_epochs": 2, "seed": 7}), str(tmp_path / "c"))
    assert a["test"] == b["test"]
    assert a["test"] != c["test"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"diffusion.noise_min": 0.02, "diffusion.noise_max": 0.01}, "config.diffusion.noise_min"),
        ({"diffusion.steps": 0}, "config.diffusion.steps"),
        ({"eval.topk": (10, 500)}, "config.eval.topk"),
        ({"train.batch_size": 0}, "config.train.batch_size"),
        ({"sampling.noise_steps": 99}, "config.sampling.noise_steps"),
        ({"model.name": "nope"}, "config.model.name"),
        ({"eval.select_metric": "recall@50"}, "config.eval.select_metric"),
        ({"optim.lr": 0.0}, "config.optim.lr"),
    ],
)
def test_bad_config_refused_naming_the_field(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        training.train_and_evaluate(_cfg(**overrides), str(tmp_path))


@pytest.mark.slow
def test_launcher_runs_from_the_command_line(tmp_path):
    cmd = [
        sys.executable, str(ROOT / "experiments" / "main.py"), f"--config={ROOT / 'configs' / 'test.py'}",
        f"--workdir={tmp_path}", "--config.train.num_epochs=2", "--config.optim.lr=0.002",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "best epoch" in out.stdout
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["optim"]["lr"] == 0.002
    assert json.loads((tmp_path / "results.json").read_text())["test"]["recall@10"] >= 0.0


@pytest.mark.slow
def test_k_vmapped_seeds_equal_k_separate_runs(tmp_path):
    many = training.train_and_evaluate(_cfg(**{"num_seeds": 3, "train.num_epochs": 4}), str(tmp_path / "k"))
    assert many["seeds"] == [1, 2, 3]
    for s, per in zip([1, 2, 3], many["per_seed"]):
        one = training.train_and_evaluate(_cfg(**{"seed": s, "train.num_epochs": 4}), str(tmp_path / f"s{s}"))
        assert per["best_epoch"] == one["best_epoch"]
        for k, v in one["test"].items():
            assert per["test"][k] == pytest.approx(v, abs=1e-6), k
    r20 = [p["test"]["recall@20"] for p in many["per_seed"]]
    assert many["test"]["recall@20"] == pytest.approx(np.mean(r20))
    assert many["test_std"]["recall@20"] == pytest.approx(np.std(r20, ddof=1))


@pytest.mark.slow
def test_four_devices_equal_one_device(tmp_path):
    assert jax.device_count() >= 4, "tests/conftest.py forces 4 CPU devices"
    one = training.train_and_evaluate(_cfg(**{"train.num_epochs": 2}), str(tmp_path / "one"))
    four = training.train_and_evaluate(
        _cfg(**{"train.num_epochs": 2, "train.num_devices": 4}), str(tmp_path / "four")
    )
    assert four["num_devices"] == 4
    for k, v in one["test"].items():
        assert four["test"][k] == pytest.approx(v, abs=1e-6), k
    l1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    l4 = [json.loads(x) for x in (tmp_path / "four" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(l1, l4):
        if "train/loss" in a:
            assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5)


def test_metrics_writer_survives_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "a": 1}\n{"epoch": 2, "a": 2}\n{"epoch": 3, "a"')
    w = MetricWriter(str(path))
    w.truncate_after(2)
    assert [json.loads(x)["epoch"] for x in path.read_text().splitlines()] == [1, 2]
    w.write({"epoch": 3})
    assert [json.loads(x)["epoch"] for x in path.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_time_budget_stops_after_the_epoch_that_spends_it(tmp_path):
    # a budget of 1 ns is spent by the first epoch: it is evaluated (off the every-2 schedule),
    # checkpointed, and its model tested, exactly like an early stop
    res = training.train_and_evaluate(_cfg(**{"train.time_budget_s": 1e-9}), str(tmp_path))
    assert res["epochs_run"] == 1 and res["best_epoch"] == 1
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "valid/recall@10" in r] == [1]
    assert json.loads((tmp_path / "results.json").read_text())["test"] == res["test"]


def test_repeated_overrides_are_found_and_the_launcher_refuses_them():
    argv = ["--config=configs/test.py", "--config.model.dims=(8,)", "--workdir=/tmp/x",
            "--config.model.dims=(16,)", "--config.seed=2", "--config.seed", "3"]
    assert cli.repeated_overrides(argv) == ["model.dims", "seed"]
    assert cli.repeated_overrides(["--config.a=1", "--config.b=1"]) == []
    with pytest.raises(SystemExit, match="--config.model.dims, --config.seed given more than once"):
        cli.refuse_repeated_overrides(argv)
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "main.py"),
                          f"--config={ROOT / 'configs' / 'test.py'}", "--workdir=/nonexistent/never",
                          "--config.train.num_epochs=1", "--config.train.num_epochs=2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--config.train.num_epochs given more than once" in out.stderr


def test_the_launcher_prints_data_errors_as_one_line(tmp_path):
    (tmp_path / "data").mkdir()
    for cfg in ("diffrec_ml1m.py", "diffurec_beauty.py"):
        out = subprocess.run([sys.executable, str(ROOT / "experiments" / "main.py"),
                              f"--config={ROOT / 'configs' / cfg}", f"--config.data.dir={tmp_path / 'data'}",
                              f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert last.startswith("error: ") and str(tmp_path / "data") in last
