"""BSPM: the ODE solves match closed forms on a small graph (the defining property), the graph is
the normalised item-item matrix, the merge variants follow the spec, and the model runs end to end
through the trainer, beating popularity. Each test takes a few seconds on one core."""

import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import test as test_config  # noqa: E402
from diffrec_jax import models  # noqa: E402
from diffrec_jax.data import CSR  # noqa: E402
from diffrec_jax.models import bspm  # noqa: E402
from diffrec_jax import training  # noqa: E402
from diffrec_jax.data import load as load_data  # noqa: E402
from diffrec_jax.training import interactions  # noqa: E402
from diffrec_jax.training.steps import TrainState  # noqa: E402


def _dense(seed=0, n_users=30, n_items=8):
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < 0.4).astype(np.float64)
    x[0, :] = 1.0  # every item has a user
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0  # no empty row
    return x


def _data(x):
    u, i = np.nonzero(x)
    csr = CSR.from_pairs(u, i, x.shape[0], x.shape[1])
    return types.SimpleNamespace(train=csr, n_users=x.shape[0], n_items=x.shape[1])


def _cfg(**fields):
    c = test_config.get_config()
    c.model.name = "bspm"
    for k, v in fields.items():
        c.model[k] = v
    return c


def _model(x, **fields):
    c = _cfg(**fields)
    models.validate_config(c)
    m = models.get_model(c, _data(x))
    params, state = m.fit(None)
    return m, params, state


def _p_tilde(x):
    du, di = x.sum(1), x.sum(0)
    r = x / np.sqrt(du)[:, None] / np.sqrt(di)[None, :]
    return r.T @ r


def test_normalized_item_graph_is_rtr():
    x = _dense()
    p, d_i = bspm.normalized_item_graph(_data(x).train)
    np.testing.assert_allclose(p, _p_tilde(x), atol=1e-12)
    np.testing.assert_allclose(d_i, x.sum(0))
    ev = np.linalg.eigvalsh(p)
    assert ev.max() == pytest.approx(1.0, abs=1e-9) and ev.min() > -1e-9  # spectrum in [0, 1]


def test_blurring_ode_matches_heat_kernel():
    """Defining property: the blurring ODE dr/dt = -r L solved by the core's RK4 is r expm(-T L)."""
    x = _dense()
    lap = np.eye(x.shape[1]) - _p_tilde(x)
    T = 1.3
    m, params, state = _model(
        x, T_b=T, K_b=32, solver_blur="rk4", sharpening=False, idl_beta=0.0
    )
    rows = jnp.asarray(x[:6], jnp.float32)
    got = np.asarray(m.score(params, state, rows))
    np.testing.assert_allclose(got, x[:6] @ scipy.linalg.expm(-T * lap), atol=2e-5)


def test_blur_then_sharpen_matches_matrix_exponentials():
    """Blurring to T_b, then sharpening dr/dt = -r P~ for T_s: r expm(-T_b L) expm(-T_s P~)."""
    x = _dense(1)
    p = _p_tilde(x)
    lap = np.eye(x.shape[1]) - p
    m, params, state = _model(
        x, T_b=0.7, K_b=16, solver_blur="rk4", T_s=0.9, K_s=16, solver_sharp="heun", idl_beta=0.0
    )
    got = np.asarray(m.score(params, state, jnp.asarray(x, jnp.float32)))
    want = x @ scipy.linalg.expm(-0.7 * lap) @ scipy.linalg.expm(-0.9 * p)
    np.testing.assert_allclose(got, want, atol=5e-4)


def test_one_euler_step_is_gf_cf_and_ideal_filter_projects():
    """Euler with one step: blurring gives x P~ (GF-CF's linear filter); the ideal ODE gives x Pi."""
    x = _dense(2)
    p = _p_tilde(x)
    m, params, state = _model(x, sharpening=False, idl_beta=0.0)
    np.testing.assert_allclose(np.asarray(m.score(params, state, jnp.asarray(x, jnp.float32))), x @ p, atol=1e-5)
    # with k = I eigenvectors Pi = D^{-1/2} D^{1/2} = I, so the late-merged ideal term is beta x
    beta = 0.3
    m, params, state = _model(x, sharpening=False, idl_beta=beta, factor_dim=100)
    assert params["V"].shape == (x.shape[1], x.shape[1])  # factor_dim capped at I
    got = np.asarray(m.score(params, state, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, x @ p + beta * x, atol=1e-5)


def test_early_and_late_merge_and_time_point_combination():
    x = _dense(3)
    p = _p_tilde(x)
    n = x.shape[1]
    w, v = np.linalg.eigh(p)
    vk = v[:, ::-1][:, :3]
    d = x.sum(0)
    pi = np.diag(d**-0.5) @ vk @ vk.T @ np.diag(d**0.5)
    beta, Ts = 0.25, 1.0
    common = dict(idl_beta=beta, factor_dim=3, T_s=Ts, K_s=1, solver_sharp="euler")
    xb, xi = x @ p, x @ pi  # one Euler step each
    sharp = np.eye(n) - Ts * p  # one Euler step of dr/dt = -r P~
    early = _model(x, final_sharpening=True, **common)
    late = _model(x, final_sharpening=False, **common)
    comb = _model(x, final_sharpening=True, t_point_combination=True, **common)
    xr = jnp.asarray(x, jnp.float32)
    s = lambda mps: np.asarray(mps[0].score(mps[1], mps[2], xr))  # noqa: E731
    np.testing.assert_allclose(s(early), (xb + beta * xi) @ sharp, atol=1e-4)
    np.testing.assert_allclose(s(late), xb @ sharp + beta * xi, atol=1e-4)
    np.testing.assert_allclose(s(comb), 0.5 * (xb + (xb + beta * xi) @ sharp), atol=1e-4)


def test_validate_config_names_the_field():
    for fields, field in [
        ({"K_s": 0}, "K_s"),
        ({"T_b": -1.0}, "T_b"),
        ({"solver_sharp": "dopri5"}, "solver_sharp"),
        ({"idl_beta": -0.1}, "idl_beta"),
        ({"factor_dim": 0}, "factor_dim"),
    ]:
        with pytest.raises(ValueError, match=field):
            models.validate_config(_cfg(**fields))


def test_bspm_end_to_end_beats_popularity(tmp_path):
    c = _cfg(factor_dim=16)
    data = load_data(c.data)
    pop = jnp.asarray(np.bincount(data.train.indices, minlength=data.n_items), jnp.float32)
    pop_model = types.SimpleNamespace(score=lambda p, s, x, k: jnp.broadcast_to(pop, x.shape))
    st = TrainState(jnp.zeros((), jnp.int32), {}, None, {})
    pop_res = interactions.evaluate(pop_model, st, interactions.DeviceData.from_data(data), data.n_users, c.eval, jax.random.key(0))
    res = training.train_and_evaluate(c, str(tmp_path))
    assert res["best_epoch"] == 1 and (tmp_path / "results.json").exists()
    assert res["test"]["recall@10"] > pop_res["test"]["recall@10"] + 0.05
