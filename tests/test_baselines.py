"""Baselines: EASE / ItemKNN / RP3beta closed forms against direct NumPy computations, Mult-VAE and
LightGCN units (shapes, masking, annealing, propagation, sampling), and every baseline trained end
to end through ``train.train_and_evaluate`` on the tiny synthetic config, beating popularity."""

import json
import os
import sys
import types
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import test as test_config  # noqa: E402
from diffrec_jax import models  # noqa: E402
from diffrec_jax.checkpointing import Checkpointer  # noqa: E402
from diffrec_jax.data import CSR  # noqa: E402
from diffrec_jax.models import baselines, lightgcn  # noqa: E402
from diffrec_jax.models.multvae import MultVAE  # noqa: E402
from diffrec_jax import training  # noqa: E402
from diffrec_jax.data import load as load_data  # noqa: E402
from diffrec_jax.training import interactions  # noqa: E402
from diffrec_jax.training.pretrain import pretrain_item_embeddings  # noqa: E402
from diffrec_jax.training.steps import TrainState  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _random_binary(rng, n_users=40, n_items=9, density=0.35):
    x = (rng.random((n_users, n_items)) < density).astype(np.float64)
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0  # no empty row
    x[0, :] = 1.0  # every item has a user
    x[1, :] = 0.0
    x[1, :2] = 1.0  # one short row
    return x


def _data_from_dense(x):
    users, items = np.nonzero(x)
    csr = CSR.from_pairs(users, items, x.shape[0], x.shape[1])
    return types.SimpleNamespace(train=csr, n_users=x.shape[0], n_items=x.shape[1])


def _cfg(name, **model_fields):
    c = test_config.get_config()
    c.model.name = name
    for k, v in model_fields.items():
        c.model[k] = v
    return c


def _assert_topk_rows(kept_IxJ, full_IxJ, k):
    """Each row keeps at most k entries, equal to the full matrix there and a valid top-k set."""
    for r in range(full_IxJ.shape[0]):
        nz = np.flatnonzero(kept_IxJ[r])
        assert len(nz) <= k
        np.testing.assert_allclose(kept_IxJ[r, nz], full_IxJ[r, nz], rtol=1e-10, atol=1e-12)
        dropped = np.setdiff1d(np.arange(full_IxJ.shape[1]), nz)
        if len(nz) and len(dropped):
            assert full_IxJ[r, nz].min() >= full_IxJ[r, dropped].max() - 1e-12
        if len(nz) < k:  # fewer than k kept only when the others are all zero
            np.testing.assert_allclose(full_IxJ[r, dropped], 0.0, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Closed-form baselines
# ----------------------------------------------------------------------------------------------


def test_ease_matches_constrained_least_squares(np_rng):
    x = _random_binary(np_rng)
    lam = 3.0
    model = baselines.EASE(_cfg("ease", l2=lam), _data_from_dense(x))
    b = np.asarray(model._fit_matrix())
    n = x.shape[1]
    np.testing.assert_allclose(np.diag(b), 0.0)
    # Column j: ridge regression of item j on the other items (diag(B) = 0 enforced by removal).
    direct = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        xo = x[:, others]
        direct[others, j] = np.linalg.solve(xo.T @ xo + lam * np.eye(n - 1), xo.T @ x[:, j])
    np.testing.assert_allclose(b, direct, rtol=1e-8, atol=1e-10)
    # Lagrangian stationarity: (G + lam I) B - G is diagonal (the multipliers of diag(B) = 0).
    g = x.T @ x
    kkt = (g + lam * np.eye(n)) @ b - g
    np.testing.assert_allclose(kkt - np.diag(np.diag(kkt)), 0.0, atol=1e-9)
    # fit/score: float32 params, scores x B.
    params, state = model.fit(jax.random.key(0))
    s = model.score(params, state, jnp.asarray(x[:5], jnp.float32), None)
    np.testing.assert_allclose(np.asarray(s), x[:5] @ b, rtol=1e-4, atol=1e-5)


def test_itemknn_matches_loops(np_rng):
    x = _random_binary(np_rng)
    k, shrink = 3, 2.0
    model = baselines.ItemKNN(_cfg("itemknn", topk=k, shrink=shrink), _data_from_dense(x))
    b = model._fit_matrix()
    n = x.shape[1]
    sim = np.zeros((n, n))  # sim[j, i]: similarity of neighbour i to target item j
    for j in range(n):
        for i in range(n):
            if i != j:
                num = float(np.dot(x[:, i], x[:, j]))
                den = np.sqrt(x[:, i].sum()) * np.sqrt(x[:, j].sum()) + shrink + 1e-6
                sim[j, i] = num / den
    _assert_topk_rows(b.T, sim, k)  # top-k neighbours per (target) item
    params, state = model.fit()
    s = model.score(params, state, jnp.asarray(x[:4], jnp.float32))
    expect = np.array([[sum(x[u, i] * b[i, j] for i in range(n)) for j in range(n)] for u in range(4)])
    np.testing.assert_allclose(np.asarray(s), expect, rtol=1e-5, atol=1e-6)


def test_rp3beta_matches_loops(np_rng):
    x = _random_binary(np_rng)
    k, alpha, beta = 4, 0.8, 0.3
    model = baselines.RP3beta(_cfg("rp3beta", topk=k, alpha=alpha, beta=beta), _data_from_dense(x))
    b = model._fit_matrix()
    n_users, n = x.shape
    d_u, p_i = x.sum(1), x.sum(0)
    w = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            walk = 0.0
            for u in range(n_users):  # item i -> user u -> item j
                walk += (x[u, i] / p_i[i]) ** alpha * (x[u, j] / d_u[u]) ** alpha
            w[i, j] = walk / p_i[j] ** beta
    _assert_topk_rows(b, w, k)
    np.testing.assert_allclose(np.diag(b), 0.0)


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("ease", "l2", 0.0),
        ("itemknn", "topk", 0),
        ("itemknn", "shrink", -1.0),
        ("rp3beta", "alpha", 0.0),
        ("rp3beta", "beta", -0.1),
        ("multvae", "anneal_cap", -1.0),
        ("multvae", "dropout", 1.0),
        ("lightgcn", "n_layers", -1),
        ("lightgcn", "samples_per_user", 0),
        ("lightgcn", "reg", -1e-4),
    ],
)
def test_validate_config_names_the_field(name, field, value):
    with pytest.raises(ValueError, match=f"config.model.{field}"):
        models.validate_config(_cfg(name, **{field: value}))


# ----------------------------------------------------------------------------------------------
# Mult-VAE
# ----------------------------------------------------------------------------------------------


def _multvae(x, **fields):
    fields = {"enc_dims": (16, 8), **fields}
    model = MultVAE(_cfg("multvae", **fields), _data_from_dense(x))
    _, params, state = model.init(jax.random.key(0))
    return model, params, state


def test_multvae_shapes_padding_and_counter(np_rng):
    x = jnp.asarray(_random_binary(np_rng, n_users=6, n_items=20), jnp.float32)
    model, params, state = _multvae(x, total_anneal_steps=4)
    net = nnx.merge(model.graphdef, params)
    mu, logvar = jax.eval_shape(net.encode, x)
    chex.assert_shape([mu, logvar], (6, 8))
    chex.assert_shape(jax.eval_shape(model.score, params, state, x), (6, 20))
    state = {"step": jnp.asarray(2, jnp.int32)}  # beta = 0.2 * 0 + 2 / 4 capped to 0.2: KL counts
    key = jax.random.key(7)
    loss = jax.jit(model.loss)
    l1, (s1, aux) = loss(params, state, x, jnp.ones(6, bool), key)
    assert np.isfinite(float(l1)) and float(aux["beta"]) == pytest.approx(0.2)
    # Padding rows (mask False) change nothing: per-row randomness, masked means.
    pad = jnp.asarray(np_rng.random((3, 20)) < 0.5, jnp.float32)
    l2, (s2, _) = loss(params, state, jnp.concatenate([x, pad]), jnp.arange(9) < 6, key)
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
    assert s1["step"].dtype == jnp.int32 and int(s1["step"]) == int(s2["step"]) == 3


def test_multvae_kl_annealing_schedule(np_rng):
    x = _random_binary(np_rng, n_users=4, n_items=10)
    model = MultVAE(_cfg("multvae", total_anneal_steps=10, anneal_cap=0.2), _data_from_dense(x))
    betas = [float(model.kl_weight(jnp.asarray(t, jnp.int32))) for t in (0, 1, 2, 5, 1000)]
    np.testing.assert_allclose(betas, [0.0, 0.1, 0.2, 0.2, 0.2], atol=1e-7)
    model = MultVAE(_cfg("multvae", total_anneal_steps=0, anneal_cap=0.3), _data_from_dense(x))
    assert float(model.kl_weight(jnp.asarray(0, jnp.int32))) == pytest.approx(0.3)


# ----------------------------------------------------------------------------------------------
# LightGCN
# ----------------------------------------------------------------------------------------------


def test_lightgcn_propagation_matches_dense(np_rng):
    x = _random_binary(np_rng, n_users=7, n_items=5, density=0.4)
    model = lightgcn.LightGCN(_cfg("lightgcn", emb_dim=3, n_layers=2), _data_from_dense(x))
    _, params, _ = model.init(jax.random.key(0))
    eu, ei = jax.jit(model.propagate)(params)
    U, I = x.shape
    a = np.zeros((U + I, U + I))
    a[:U, U:], a[U:, :U] = x, x.T
    dinv = 1.0 / np.sqrt(a.sum(1))
    a_hat = dinv[:, None] * a * dinv[None, :]
    e = np.concatenate([np.asarray(params["user_emb"]), np.asarray(params["item_emb"])]).astype(np.float64)
    layers = [e]
    for _ in range(2):
        layers.append(a_hat @ layers[-1])
    final = np.mean(layers, axis=0)
    np.testing.assert_allclose(np.asarray(eu), final[:U], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ei), final[U:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.item_embeddings(params), final[U:], rtol=1e-5, atol=1e-6)
    s = jax.jit(model.score)(params, {}, jnp.asarray(x, jnp.float32), None, user_ids_B=jnp.array([3, 0]))
    np.testing.assert_allclose(np.asarray(s), final[[3, 0]] @ final[U:].T, rtol=1e-4, atol=1e-6)


def test_lightgcn_sampling_and_bpr_loss(np_rng):
    x = _random_binary(np_rng, n_users=10, n_items=30, density=0.3)
    x[2, :] = 1.0  # a full row (as row 0): no negative exists, its triples are dropped
    xj = jnp.asarray(x, jnp.float32)
    pos, neg, ok = jax.jit(lambda k: lightgcn.sample_bpr_triples(xj, k, 200))(jax.random.key(1))
    pos, neg, ok = map(np.asarray, (pos, neg, ok))
    np.testing.assert_array_equal(ok, x.sum(1) < x.shape[1])
    rows = np.arange(10)[:, None]
    assert (x[rows, pos][ok] == 1).all()  # positives in the row
    assert (x[rows, neg][ok] == 0).all()  # negatives never in the row
    for u in np.flatnonzero(ok):  # every item is reachable: the draws cover the sets
        assert set(pos[u]) == set(np.flatnonzero(x[u]))
        assert set(neg[u]) == set(np.flatnonzero(x[u] == 0))
    model = lightgcn.LightGCN(
        _cfg("lightgcn", emb_dim=4, samples_per_user=5, reg=1e-2), _data_from_dense(x)
    )
    _, params, st = model.init(jax.random.key(0))
    ids = jnp.arange(10)
    key = jax.random.key(5)
    loss = jax.jit(model.loss)
    l1, (_, aux) = loss(params, st, xj, jnp.ones(10, bool), key, user_ids_B=ids)
    assert np.isfinite(float(l1)) and float(aux["bpr"]) == pytest.approx(np.log(2.0), abs=0.05)
    # padding rows (mask False) change nothing
    l2, _ = loss(
        params, st, jnp.concatenate([xj, xj[:3]]), jnp.arange(13) < 10, key, user_ids_B=jnp.arange(13) % 10
    )
    np.testing.assert_allclose(float(l1), float(l2), rtol=1e-5)
    with pytest.raises(ValueError, match="user_ids_B"):
        model.loss(params, st, xj, jnp.ones(10, bool), key)


# ----------------------------------------------------------------------------------------------
# End to end through the trainer, against popularity
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def popularity_recall():
    """Test recall@10 of most-popular ranking on the tiny synthetic config."""
    c = test_config.get_config()
    data = load_data(c.data)
    pop = jnp.asarray(np.bincount(data.train.indices, minlength=data.n_items), jnp.float32)
    model = types.SimpleNamespace(score=lambda p, s, x, k: jnp.broadcast_to(pop, x.shape))
    state = TrainState(jnp.zeros((), jnp.int32), {}, None, {})
    dd = interactions.DeviceData.from_data(data)
    res = interactions.evaluate(model, state, dd, data.n_users, c.eval, jax.random.key(0))
    return res["test"]["recall@10"]


@pytest.mark.parametrize(
    "name, fields",
    [
        ("ease", {"l2": 10.0}),
        ("itemknn", {"topk": 20, "shrink": 0.0}),
        ("rp3beta", {"topk": 20, "alpha": 1.0, "beta": 0.5}),
    ],
)
def test_closed_form_end_to_end(tmp_path, popularity_recall, name, fields):
    res = training.train_and_evaluate(_cfg(name, **fields), str(tmp_path))
    assert res["best_epoch"] == 1 and (tmp_path / "results.json").exists()
    assert res["test"]["recall@10"] > popularity_recall + 0.05


@pytest.mark.slow
def test_multvae_end_to_end_counter_checkpointed(tmp_path, popularity_recall):
    c = _cfg("multvae", enc_dims=(200, 64))
    c.optim.lr = 1e-2
    c.train.num_epochs, c.train.eval_every_epochs = 6, 3
    res = training.train_and_evaluate(c, str(tmp_path))
    assert res["test"]["recall@10"] > popularity_recall + 0.05
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in lines if "train/loss" in r]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    state, _ = ck.restore_untyped()
    ck.close()
    # the anneal counter is checkpointed and counts optimizer steps (120 users / 32 = 4 per epoch)
    # (an untyped restore may return scalars as shape [1]: compare with .item())
    assert np.asarray(state["model_state"]["step"]).item() == np.asarray(state["step"]).item() == 6 * 4


@pytest.mark.slow
def test_lightgcn_end_to_end_and_pretrained_embeddings(tmp_path, popularity_recall):
    c = _cfg("lightgcn", emb_dim=16, samples_per_user=8)
    c.optim.lr = 1e-2
    c.train.num_epochs, c.train.eval_every_epochs = 6, 3
    emb = pretrain_item_embeddings(c, None, str(tmp_path))
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["test"]["recall@10"] > popularity_recall
    assert emb.shape == (60, 16) and emb.dtype == np.float32
    np.testing.assert_array_equal(np.load(tmp_path / "item_emb.npy"), emb)
    assert os.path.isdir(tmp_path / "best")
