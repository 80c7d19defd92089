"""Smoke tests of the benchmark suite's internal functions at toy sizes (no timing assertions).

``experiments/bench_suite.py`` is a script; it is loaded here from its path. Importing it defines
no absl flags (they are defined only when it runs as a script), so it coexists with other tests.
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

from configs import default  # noqa: E402
from diffrec_jax import models  # noqa: E402
from diffrec_jax.data import make_synthetic  # noqa: E402


@pytest.fixture(scope="module")
def bs():
    """The suite module, loaded from experiments/bench_suite.py."""
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


def test_fit_power_law_recovers_exponent(bs):
    sizes = np.logspace(3, 6, 7)
    fit = bs.fit_power_law(sizes, 2.5e-6 * sizes**1.37)
    assert fit["exponent"] == pytest.approx(1.37, abs=1e-9)
    assert fit["prefactor"] == pytest.approx(2.5e-6, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    noisy = 1e-3 * sizes**0.5 * np.exp(np.random.default_rng(0).normal(0, 0.02, sizes.size))
    assert bs.fit_power_law(sizes, noisy)["exponent"] == pytest.approx(0.5, abs=0.05)
    assert np.isnan(bs.fit_power_law([10.0], [1.0])["exponent"])


def test_topk_recall(bs):
    a = np.array([[1, 2, 3, 4], [9, 8, 7, 6]])
    assert bs.topk_recall(a, a) == 1.0
    assert bs.topk_recall(a[:, ::-1], a) == 1.0  # order does not matter
    assert bs.topk_recall(a + 100, a) == 0.0
    assert bs.topk_recall(np.array([[1, 2, 50, 51]]), np.array([[1, 2, 3, 4]])) == 0.5
    with pytest.raises(ValueError):
        bs.topk_recall(a[:, :2], a)


def test_steps_part_one_row_per_n(bs):
    model, params, ms, data = _tiny_diffrec()
    ns = (1, 5)
    res = bs.eval_steps(model, params, ms, data, ns=ns, generic_ns=(5,), ks=(10, 20), repeats=0)
    assert [r["n"] for r in res["rows"]] == list(ns)
    for r in res["rows"]:
        assert 0.0 <= r["recall@20"] <= 1.0 and r["eval_s"] > 0
    # projected (fast path on the truncated schedule) and generic sampler rank alike
    assert "generic_eval_s" not in res["rows"][0]
    assert res["rows"][1]["generic_max_abs_metric_diff"] < 1e-6
    # one reverse step from the row is the x0 prediction at t = 0
    assert res["x0_t0"]["recall@20"] == pytest.approx(res["rows"][0]["recall@20"], abs=1e-6)


def test_truncated_projected_chain_matches_generic_sampler(bs):
    model, params, ms, data = _tiny_diffrec()
    x = jnp.asarray(data.train.to_dense()[:8])
    fast = bs.chain_score_fn(model, 3, "projected")(params, ms, x, None)
    slow = bs.chain_score_fn(model, 3, "generic")(params, ms, x, None)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(slow), rtol=1e-4, atol=1e-5)
    assert bs.truncate_schedule(model.schedule, 3).num_steps == 3
    with pytest.raises(ValueError):
        bs.truncate_schedule(model.schedule, 6)


def test_streamed_and_chunked_topk_are_exact(bs):
    k1, k2 = jax.random.split(jax.random.key(1))
    h = jax.random.normal(k1, (5, 8))
    w = jax.random.normal(k2, (8, 1000))
    b = jnp.linspace(0.0, 0.1, 1000)
    exact = np.sort(np.asarray(jax.lax.top_k(h @ w + b, 20)[1]), 1)
    wc, bc = bs.chunk_output_layer(w, b, 128)  # 1000 is not a multiple of 128: padding is exercised
    assert np.array_equal(np.sort(np.asarray(bs.streamed_topk(h, wc, bc, 20)), 1), exact)
    assert bs.topk_recall(bs.streamed_topk(h, wc, bc, 20), exact) == 1.0


def test_synthetic_rows_and_densify(bs):
    rows = bs.synthetic_rows(300, 50, mean_len=8, seed=0)
    assert rows.dtype == np.int32 and rows.shape[0] == 300
    assert rows.min() >= 0 and rows.max() <= 50  # 50 is the padding id
    assert ((rows < 50).sum(1) >= 1).all()
    x = np.asarray(bs.densify(jnp.asarray(rows[:4]), 50))
    assert x.shape == (4, 50) and set(np.unique(x)) <= {0.0, 1.0}
    for u in range(4):
        assert set(np.flatnonzero(x[u])) == set(rows[u][rows[u] < 50].tolist())


def test_fill_params_from_restored_dict(bs):
    model, params, _, _ = _tiny_diffrec()
    restored: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        node = restored
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = np.asarray(leaf) + 1.0
    filled = bs._fill_params(params, restored)
    for a, b in zip(jax.tree.leaves(filled), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b) + 1.0)


def test_markdown_renders_partial_results(bs):
    res = {
        "quick": True, "command": "x", "errors": {"scaling": "boom"}, "loadavg_end": [1, 1, 1],
        "environment": {"date": "d", "devices": ["cpu:0"], "backend": "cpu", "gpu": bs.gpu_note(),
                        "cpu_count": 2, "jax": jax.__version__, "python": "3", "loadavg_start": [0, 0, 0]},
        "models": {"data": "toy", "loadavg": {"start": [0], "end": [0]},
                   "matmul_ceiling_gflops_per_s": 100.0, "matmul_ceiling_before_after": [90.0, 100.0],
                   "target": None,
                   "rows": [{"label": "itemknn", "model": "itemknn", "status": "skipped: no config"}]},
    }
    md = bs.markdown(res)
    assert "no GPU" in md or "GPU present" in md
    assert "skipped: no config" in md and "scaling: boom" in md


def test_seeds_part_reports_ratio_against_separate_runs(bs):
    res = bs.part_seeds("", True, [1, 2], 0)
    assert [r["k"] for r in res["rows"]] == [1, 2]
    one, two = res["rows"]
    assert one["epoch_ratio_vs_separate"] == 1.0 and two["epoch_s"] > 0
    assert two["epoch_ratio_vs_separate"] == two["epoch_s"] / (2 * one["epoch_s"])
    env = bs.environment()
    assert "5. K seeds" in bs.markdown({"quick": True, "command": "", "environment": env,
                                        "seeds": {**res, "loadavg": {"start": 0, "end": 0}}})
