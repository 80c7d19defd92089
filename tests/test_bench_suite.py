"""Smoke tests of the benchmark suite's internal functions at toy sizes (no timing assertions).

The suite is the package ``experiments/bench/`` (one module per part) run by the launcher
``experiments/bench_suite.py``; ``experiments/`` is put on the path here so ``bench`` imports.
Importing them defines no absl flags (the launcher defines them only when it runs as a script),
so they coexist with other tests.
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

from bench import common, model_speed, report, reverse_steps, scaling, seeds, topk  # noqa: E402
from configs import default, diffrec_ml1m  # noqa: E402
from diffrec_jax import models  # noqa: E402
from diffrec_jax.data import make_synthetic  # noqa: E402


@pytest.fixture(scope="module")
def launcher():
    """The launcher module, loaded from experiments/bench_suite.py."""
    spec = importlib.util.spec_from_file_location("bench_suite", ROOT / "experiments" / "bench_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_diffrec(n_users=48, n_items=40, steps=5):
    """A small untrained DiffRec on synthetic data: (model, params, model_state, data)."""
    c = default.get_config()
    c.model.dims = (16,)
    c.diffusion.steps = steps
    data = make_synthetic(n_users, n_items, mean_items_per_user=10, seed=0)
    model = models.get_model(c, data)
    _, params, ms = model.init(jax.random.key(0))
    return model, params, ms, data


def test_fit_power_law_recovers_exponent():
    sizes = np.logspace(3, 6, 7)
    fit = scaling.fit_power_law(sizes, 2.5e-6 * sizes**1.37)
    assert fit["exponent"] == pytest.approx(1.37, abs=1e-9)
    assert fit["prefactor"] == pytest.approx(2.5e-6, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = 1e-3 * sizes**0.5 * np.exp(np.random.default_rng(0).normal(0, 0.02, sizes.size))
    assert scaling.fit_power_law(sizes, noisy)["exponent"] == pytest.approx(0.5, abs=0.05)
    assert np.isnan(scaling.fit_power_law([10.0], [1.0])["exponent"])


def test_topk_recall():
    a = np.array([[1, 2, 3, 4], [9, 8, 7, 6]])
    assert topk.topk_recall(a, a) == 1.0
    assert topk.topk_recall(a[:, ::-1], a) == 1.0  # order does not matter
    assert topk.topk_recall(a + 100, a) == 0.0
    assert topk.topk_recall(np.array([[1, 2, 50, 51]]), np.array([[1, 2, 3, 4]])) == 0.5
    with pytest.raises(ValueError):
        topk.topk_recall(a[:, :2], a)


@pytest.mark.slow
def test_steps_part_one_row_per_n():
    model, params, ms, data = _tiny_diffrec()
    ns = (1, 5)
    res = reverse_steps.eval_steps(model, params, ms, data, ns=ns, generic_ns=(5,), ks=(10, 20), repeats=0)
    assert [r["n"] for r in res["rows"]] == list(ns)
    for r in res["rows"]:
        assert 0.0 <= r["recall@20"] <= 1.0 and r["eval_s"] > 0
    # projected (fast path on the truncated schedule) and generic sampler rank alike
    assert "generic_eval_s" not in res["rows"][0]
    assert res["rows"][1]["generic_max_abs_metric_diff"] < 1e-6
    # one reverse step from the row is the x0 prediction at t = 0
    assert res["x0_t0"]["recall@20"] == pytest.approx(res["rows"][0]["recall@20"], abs=1e-6)


def test_truncated_projected_chain_matches_generic_sampler():
    model, params, ms, data = _tiny_diffrec()
    x = jnp.asarray(data.train.to_dense()[:8])
    fast = reverse_steps.chain_score_fn(model, 3, "projected")(params, ms, x, None)
    slow = reverse_steps.chain_score_fn(model, 3, "generic")(params, ms, x, None)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(slow), rtol=1e-4, atol=1e-5)
    assert reverse_steps.truncate_schedule(model.schedule, 3).num_steps == 3
    with pytest.raises(ValueError):
        reverse_steps.truncate_schedule(model.schedule, 6)


def test_streamed_and_chunked_topk_are_exact():
    k1, k2 = jax.random.split(jax.random.key(1))
    h = jax.random.normal(k1, (5, 8))
    w = jax.random.normal(k2, (8, 1000))
    b = jnp.linspace(0.0, 0.1, 1000)
    exact = np.sort(np.asarray(jax.lax.top_k(h @ w + b, 20)[1]), 1)
    wc, bc = topk.chunk_output_layer(w, b, 128)  # 1000 is not a multiple of 128: padding is exercised
    assert np.array_equal(np.sort(np.asarray(topk.streamed_topk(h, wc, bc, 20)), 1), exact)
    assert topk.topk_recall(topk.streamed_topk(h, wc, bc, 20), exact) == 1.0


def test_synthetic_rows_and_densify():
    rows = scaling.synthetic_rows(300, 50, mean_len=8, seed=0)
    assert rows.dtype == np.int32 and rows.shape[0] == 300
    assert rows.min() >= 0 and rows.max() <= 50  # 50 is the padding id
    assert ((rows < 50).sum(1) >= 1).all()
    x = np.asarray(scaling.densify(jnp.asarray(rows[:4]), 50))
    assert x.shape == (4, 50) and set(np.unique(x)) <= {0.0, 1.0}
    for u in range(4):
        assert set(np.flatnonzero(x[u])) == set(rows[u][rows[u] < 50].tolist())


def test_fill_params_from_restored_dict():
    model, params, _, _ = _tiny_diffrec()
    restored: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        node = restored
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = np.asarray(leaf) + 1.0
    filled = reverse_steps.fill_params(params, restored)
    for a, b in zip(jax.tree.leaves(filled), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b) + 1.0)


def test_markdown_renders_partial_results():
    res = {
        "quick": True, "command": "x", "errors": {"scaling": "boom"}, "loadavg_end": [1, 1, 1],
        "environment": {"date": "d", "devices": ["cpu:0"], "backend": "cpu", "gpu": common.gpu_note(),
                        "cpu_count": 2, "jax": jax.__version__, "python": "3", "loadavg_start": [0, 0, 0]},
        "models": {"data": "toy", "loadavg": {"start": [0], "end": [0]},
                   "matmul_ceiling_gflops_per_s": 100.0, "matmul_ceiling_before_after": [90.0, 100.0],
                   "target": None,
                   "rows": [{"label": "itemknn", "model": "itemknn", "status": "skipped: no config"}]},
    }
    md = report.markdown(res)
    assert "no GPU" in md or "GPU present" in md
    assert "skipped: no config" in md and "scaling: boom" in md


@pytest.mark.slow
def test_seeds_part_reports_ratio_against_separate_runs():
    res = seeds.part_seeds("", True, [1, 2], 0)
    assert [r["k"] for r in res["rows"]] == [1, 2]
    one, two = res["rows"]
    assert one["epoch_ratio_vs_separate"] == 1.0 and two["epoch_s"] > 0
    assert two["epoch_ratio_vs_separate"] == two["epoch_s"] / (2 * one["epoch_s"])
    env = common.environment()
    assert "5. K seeds" in report.markdown({"quick": True, "command": "", "environment": env,
                                        "seeds": {**res, "loadavg": {"start": 0, "end": 0}}})


def test_diffrec_chain_flops_match_the_documented_counts():
    cfg = diffrec_ml1m.get_config()
    T = cfg.diffusion.steps
    # generic chain: the 3.62 M multiply-adds of one forward pass per user and step
    assert model_speed.diffrec_chain_flops(cfg, 2810, 1, False) / 2 / T == pytest.approx(3.62e6, rel=1e-2)
    # projected chain: 0.33 TFLOP for a 40-step evaluation of ML-1M's 5,949 users
    assert model_speed.diffrec_chain_flops(cfg, 2810, 5949, True) / 1e12 == pytest.approx(0.33, abs=0.01)


def test_models_markdown_shows_reference_and_chain_rows():
    row = {"label": "diffrec", "model": "diffrec", "status": "ok", "kind": "trained", "params": 10,
           "compile_train_s": 1.0, "train_users_per_s": 100.0, "train_gflops_per_s": 5.0,
           "train_ceiling_fraction": 0.05, "compile_eval_s": 1.0, "eval_ms_per_user": 0.1,
           "eval_gflops_per_s": 2.0, "eval_ceiling_fraction": 0.02, "peak_rss_mb": 10.0,
           "full_epoch": False, "epoch_s_est": 1.0, "eval_s": 2.0, "eval_chain_path": "projected",
           "eval_chain_tflop": 0.33, "eval_chain_gflops_per_s": 165.0, "eval_chain_ceiling_fraction": 0.5}
    ref = model_speed.against_reference(row, "quick: synthetic")
    assert ref["epoch_speedup_vs_2threads"] == pytest.approx(3.25)
    assert ref["eval_speedup"] == pytest.approx([38.9, 44.55])
    md = report.markdown({
        "quick": True, "command": "x", "errors": {}, "environment": common.environment(),
        "models": {"data": "toy", "loadavg": {"start": [0], "end": [0]},
                   "matmul_ceiling_gflops_per_s": 100.0, "matmul_ceiling_before_after": [90.0, 100.0],
                   "target": None, "reference": ref, "rows": [row]},
    })
    assert "PyTorch reference" in md and "0.330 TFLOP" in md and "Not comparable" in md


def test_launcher_runs_every_part_and_rejects_unknown_ones(launcher, tmp_path):
    assert launcher.PARTS == ("models", "steps", "scaling", "topk", "seeds")
    with pytest.raises(ValueError, match="unknown part"):
        launcher.run_suite(out=str(tmp_path), quick=True, parts=["nope"], data_dir="", diffrec_run="",
                           fallback_epochs=1, model_names=[], scaling_hidden=8, mem_budget_gb=1.0,
                           chunk_size=64, seed=0)
