"""Tests of DiffKG (diffrec_jax.models.diffkg) against direct NumPy computations, plus a tiny
end-to-end run through the standard trainer (closed-form hook)."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from diffrec_jax import samplers, schedules
from diffrec_jax.data import make_synthetic
from diffrec_jax.data import kg as K
from diffrec_jax.models import diffkg as DK
from diffrec_jax.models.lightgcn import LightGCN
from diffrec_jax.models.mlp import DiffRecDenoiser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import test as test_cfg  # noqa: E402
from diffrec_jax import training  # noqa: E402


def test_segment_softmax_matches_numpy(np_rng):
    a = np_rng.normal(size=12).astype(np.float32)
    seg = np.array([0, 0, 1, 2, 2, 2, 0, 1, 3, 3, 3, 3])
    got = np.asarray(DK.segment_softmax(jnp.asarray(a), jnp.asarray(seg), 4))
    for s in range(4):
        m = seg == s
        e = np.exp(a[m] - a[m].max())
        np.testing.assert_allclose(got[m], e / e.sum(), rtol=1e-5)


def _rgat_numpy(e, r, W, h, t, rel, n_layers, lam):
    ent, res = e.copy(), e.copy()
    for _ in range(n_layers):
        a = np.array([np.sum((np.concatenate([ent[hh], ent[tt]]) @ W) * r[rr]) for hh, tt, rr in zip(h, t, rel)])
        a = np.where(a > 0, a, 0.2 * a)
        new = ent.copy()
        for hh in np.unique(h):
            m = h == hh
            w = np.exp(a[m] - a[m].max())
            w /= w.sum()
            new[hh] += (w[:, None] * ent[t[m]]).sum(0)
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        res = lam * res + new
        ent = new
    return res


def test_rgat_matches_dense_reference(np_rng):
    E, R, d = 7, 3, 4
    e = np_rng.normal(size=(E, d)).astype(np.float32)
    r = np_rng.normal(size=(R, d)).astype(np.float32)
    W = np_rng.normal(size=(2 * d, d)).astype(np.float32) * 0.5
    h = np.array([0, 0, 1, 2, 2, 5, 6])
    t = np.array([1, 2, 0, 0, 3, 6, 5])
    rel = np.array([0, 1, 2, 0, 1, 2, 0])
    want = _rgat_numpy(e, r, W, h, t, rel, 2, 0.5)
    pad = 3  # padding edges (head == E) must be ignored
    hp = np.concatenate([h, np.full(pad, E)])
    tp = np.concatenate([t, np.zeros(pad, int)])
    rp = np.concatenate([rel, np.zeros(pad, int)])
    got = DK.rgat(jnp.asarray(e), jnp.asarray(r), jnp.asarray(W), jnp.asarray(hp), jnp.asarray(tp),
                  jnp.asarray(rp), n_layers=2, res_lambda=0.5)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_kg_schedule_overrides_beta0():
    s = DK.kg_schedule(5, 0.1, 1e-4, 0.02)
    b = schedules.diffrec_betas(5, 0.1, 1e-4, 0.02, beta_fixed=False)
    np.testing.assert_allclose(np.asarray(s.betas)[0], 1e-4, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s.betas)[1:], b[1:], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod), np.cumprod(1 - np.concatenate([[1e-4], b[1:]])), rtol=1e-6)


@pytest.mark.slow
def test_projected_reverse_norm_equals_generic_chain(np_rng):
    E = 40
    den = DiffRecDenoiser(E, (24,), emb_size=10, dropout_rate=0.5, norm=True, rngs=nnx.Rngs(params=jax.random.key(0)))
    sched = DK.kg_schedule(5, 0.1, 1e-4, 0.02)
    x0 = jnp.asarray((np_rng.random((6, E)) < 0.1).astype(np.float32))
    x0 = x0.at[0, 3].set(1.0)
    want = samplers.diffrec_reverse(lambda x, t, c=None: den(x, t), sched, x0, noise_steps=0,
                                    sampling_noise=False, mean_type="x0")
    got = DK.projected_reverse_norm(den, sched, x0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(DK.projected_reverse_norm(den, sched, x0, out_cols=9)),
                               np.asarray(want)[:, :9], rtol=1e-4, atol=1e-5)
    r, c = np.nonzero(np.asarray(x0))
    pad = 5
    sp = (jnp.asarray(np.concatenate([r, np.zeros(pad, int)])), jnp.asarray(np.concatenate([c, np.zeros(pad, int)])),
          jnp.asarray(np.arange(len(r) + pad) < len(r)), 6)
    np.testing.assert_allclose(np.asarray(DK.projected_reverse_norm(den, sched, None, sparse=sp)),
                               np.asarray(want), rtol=1e-4, atol=1e-5)


def _tiny(tmp_path, np_rng, n_users=30, n_items=20, n_ent=35):
    data = make_synthetic(n_users=n_users, n_items=n_items, n_factors=4, mean_items_per_user=6, seed=0)
    tr = np.stack([np_rng.integers(0, n_items, 60), np_rng.integers(0, 3, 60), np_rng.integers(n_items, n_ent, 60)], 1)
    p = tmp_path / "kg.txt"
    np.savetxt(p, tr, fmt="%d")
    c = test_cfg.get_config()
    c.model.name = "diffkg"
    c.model.kg_path = str(p)
    c.model.emb_dim = 8
    c.model.dims = (16,)
    c.model.diff_batch = 16
    c.model.samples_per_user = 3
    c.model.triplet_num = 2
    c.model.keep_rate = 1.0
    c.diffusion.steps = 5
    c.diffusion.noise_scale = 0.1
    c.diffusion.noise_min = 1e-4
    c.diffusion.noise_max = 0.02
    c.train.batch_size = 16
    c.train.num_epochs = 2
    c.eval.topk = (5, 10)
    c.eval.select_metric = "recall@10"
    return c, data


def test_ckgc_association_and_propagations(tmp_path, np_rng):
    c, data = _tiny(tmp_path, np_rng)
    m = DK.DiffKG(c, data)
    u = jax.random.normal(jax.random.key(0), (m.U, 8))
    xhat = jax.random.normal(jax.random.key(1), (5, m.E))
    X = data.train.binary().to_dense()
    want = (X @ np.asarray(xhat)[:, : m.I].T).T @ np.asarray(u)  # the reference's association
    np.testing.assert_allclose(np.asarray(xhat[:, : m.I] @ m.item_users(u)), want, rtol=1e-4, atol=1e-4)
    it = jax.random.normal(jax.random.key(2), (m.I, 8))
    lg = LightGCN(ml_collections.ConfigDict({"model": {"emb_dim": 8, "n_layers": 2}}), data)
    for a, b in zip(m.propagate(u, it), lg.propagate({"user_emb": u, "item_emb": it})):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)
    c.model.gcn = "reference"
    m2 = DK.DiffKG(c, data)
    U, I = m.U, m.I
    A = np.zeros((U + I, U + I))
    A[:U, U:] = X
    A[U:, :U] = X.T
    A += np.eye(U + I)
    dg = A.sum(1)
    Ah = A / np.sqrt(dg[:, None] * dg[None, :])
    x0 = np.concatenate([np.asarray(u), np.asarray(it)])
    want2 = x0 + Ah @ x0 + Ah @ (Ah @ x0)
    got2 = np.concatenate([np.asarray(a) for a in m2.propagate(u, it)])
    np.testing.assert_allclose(got2, want2, rtol=1e-4, atol=1e-5)


def test_rebuild_filters_to_original_kg(tmp_path, np_rng, monkeypatch):
    c, data = _tiny(tmp_path, np_rng)
    m = DK.DiffKG(c, data)
    h, t, r = m.kg.edges()
    first = {}
    for hh, tt in zip(h, t):
        first.setdefault(int(hh), int(tt))
    # a fake denoiser: every entity's top-1 is its first KG neighbour if any, else entity 0
    fake = np.array([[first.get(e, 0)] for e in range(m.E)])
    monkeypatch.setattr(m, "denoise_topk", lambda dp, rows, k: fake[rows])
    hh, tt, rr = m.rebuild(None, np.random.default_rng(0))
    got = set(zip(hh.tolist(), tt.tolist()))
    want = {(e, first[e]) for e in first} | {(first[e], e) for e in first}
    assert got == want  # reverses added, non-edges (entity -> 0) dropped
    np.testing.assert_array_equal(rr, m.kg.relation_of(hh, tt))
    c.model.keep_rate = 0.0
    m0 = DK.DiffKG(c, data)
    monkeypatch.setattr(m0, "denoise_topk", lambda dp, rows, k: fake[rows])
    assert len(m0.rebuild(None, np.random.default_rng(0))[0]) == 0


def test_validate_config_names_fields(tmp_path, np_rng):
    c, _ = _tiny(tmp_path, np_rng)
    for field, bad in (("triplet_num", 0), ("cl_pattern", 2), ("keep_rate", 1.5), ("gcn", "gat"), ("temp", 0.0)):
        c2 = c.copy_and_resolve_references()
        c2.model[field] = bad
        with pytest.raises(ValueError, match=f"config.model.{field}"):
            DK.DiffKG.validate_config(c2)


@pytest.mark.slow
def test_end_to_end_through_trainer(tmp_path, np_rng):

    c, data = _tiny(tmp_path, np_rng)
    res = training.train_and_evaluate(c, str(tmp_path / "run"), data=data)
    assert np.isfinite(res["test"]["recall@10"]) and 0 <= res["test"]["recall@10"] <= 1
    with open(tmp_path / "run" / "results.json") as f:
        assert json.load(f)["model"] == "diffkg"
    # the per-epoch history is in metrics.jsonl, and results name the selected epoch
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch"] for r in lines if "train/loss" in r]  # the recommender pass's loss
    assert all("diff_loss" in r and "denoised_edges" in r for r in lines if "train/loss" in r)
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) == res["epochs_run"]
    assert 1 <= res["best_epoch"] <= res["epochs_run"]
