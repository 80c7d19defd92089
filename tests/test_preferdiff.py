"""Tests of PreferDiff (diffrec_jax/models/preferdiff.py): shapes and padding rows, the loss written
out, the reduction to DreamRec's loss at rank weight 0, config checks, and a tiny end-to-end run."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import seq_test  # noqa: E402
from diffrec_jax import diffusion as dif  # noqa: E402
from diffrec_jax import models, training  # noqa: E402
from diffrec_jax.data import load as load_data  # noqa: E402
from diffrec_jax.data.sequences import make_synthetic_sequences  # noqa: E402
from diffrec_jax.models import dreamrec as DR  # noqa: E402
from diffrec_jax.models import preferdiff as PD  # noqa: E402
from diffrec_jax.training import sequences  # noqa: E402


def _config(layout: str = "loo", **model):
    c = seq_test.get_config("dreamrec")
    c.data.synthetic_seq.layout = layout
    c.model.name = "preferdiff"
    c.model.rank_weight = 0.6  # 1 - the paper's lambda (0.4)
    c.model.rank_scale = 5.0
    c.model.recon_loss = "cosine"
    c.model.negatives = "in_batch"
    c.model.num_negatives = 0
    c.model.rank_reduction = "example"
    c.sampling.mode = "ddim"
    c.sampling.steps = 4
    for k, v in model.items():
        c.model[k] = v
    return c


def _batch(data, n=6, split="train"):
    sp = data.split(split)
    return {"seq": jnp.asarray(sp.seq[:n]), "len": jnp.asarray(sp.lengths[:n]),
            "target": jnp.asarray(sp.targets[:n])}


@pytest.fixture(scope="module")
def tiny():
    data = make_synthetic_sequences(n_users=30, n_items=12, max_len=4)  # left-padded (loo)
    return data


def test_shapes_finiteness_and_padding_rows(tiny):
    c = _config()
    m = models.get_model(c, tiny)
    _, params, state = m.init(jax.random.key(0))
    b = _batch(tiny, 6)
    key = jax.random.key(1)
    loss_fn = jax.jit(lambda p, bb, mk: m.loss(p, state, bb, mk, key))
    loss, (_, aux) = loss_fn(params, b, jnp.ones(6, bool))
    assert np.isfinite(float(loss)) and set(aux) == {"loss_pos", "loss_neg", "loss_rank"}
    # two extra padding rows (garbage content) must not change the loss: the valid rows draw the
    # same randomness only if the batch shape is the same, so compare against zero-weight rows
    pad = {k: jnp.concatenate([v, v[:2][::-1]]) for k, v in b.items()}
    mask = jnp.array([True] * 6 + [False] * 2)
    l_pad, _ = loss_fn(params, pad, mask)
    pad2 = dict(pad, target=pad["target"].at[6:].set(0), seq=pad["seq"].at[6:].set(tiny.pad_id))
    l_pad2, _ = loss_fn(params, pad2, mask)
    np.testing.assert_allclose(float(l_pad), float(l_pad2), rtol=1e-6)
    g = jax.jit(jax.grad(lambda p: loss_fn(p, pad, mask)[0]))(params)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
    keys = jax.random.split(jax.random.key(2), 6)
    s = jax.jit(lambda p, bb, k: m.score(p, state, bb, k))(params, b, keys)
    assert s.shape == (6, tiny.num_embeddings) and np.isfinite(np.asarray(s)).all()
    # per-example keys: a batch equals vmap over single rows
    one = jax.jit(jax.vmap(lambda sq, ln, tg, k: m.score(params, state, {"seq": sq[None], "len": ln[None],
                                                                  "target": tg[None]}, k[None])[0]))(
        b["seq"], b["len"], b["target"], keys)
    np.testing.assert_allclose(s, one, rtol=1e-4, atol=1e-4)


def test_loss_equals_the_equation_written_out(tiny):
    """The per-example BPR-Diff + cosine objective, recomputed from the network's pieces."""
    c = _config()
    c.model.cfg_dropout = 0.0
    c.model.dropout = 0.0
    m = models.get_model(c, tiny)
    _, params, state = m.init(jax.random.key(0))
    b = _batch(tiny, 5)
    mask = jnp.array([True, True, False, True, True])
    key = jax.random.key(3)
    got, _ = jax.jit(lambda p: m.loss(p, state, b, mask, key))(params)
    net = m.net(params)
    _, _, k_t, k_eps = jax.random.split(key, 4)
    k_neg, k_neps = jax.random.split(jax.random.fold_in(key, 7))
    E = np.asarray(net.item_emb[...])
    tgt = np.asarray(b["target"])
    c_ = net.guidance(b["seq"], b["len"], tiny.pad_id, None)
    t = jax.random.randint(k_t, (5,), 0, m.num_steps)
    eps = jax.random.normal(k_eps, (5, E.shape[1]))
    valid = np.asarray(mask)
    e_neg = np.stack([E[tgt[[j for j in range(5) if j != i and valid[j]]]].mean(0) for i in range(5)])
    eps_n = jax.random.normal(k_neps, e_neg.shape)

    def cos_err(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        cs = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        return (cs - 1.0) ** 2

    tau = net.tau(t)
    pos = cos_err(E[tgt], net.denoise(dif.q_sample(m.schedule, jnp.asarray(E[tgt]), t, eps), c_, tau))
    neg = cos_err(e_neg, net.denoise(dif.q_sample(m.schedule, jnp.asarray(e_neg, jnp.float32), t, eps_n), c_, tau))
    rank = np.log1p(np.exp(5.0 * (pos - neg)))  # -log sigmoid(-gamma (l+ - l-))
    want = 0.4 * pos[valid].mean() + 0.6 * rank[valid].mean()
    np.testing.assert_allclose(float(got), want, rtol=2e-4)


def test_rank_weight_zero_is_dreamrecs_loss_exactly():
    """rank_weight 0 with MSE reconstruction: the same number as DreamRec's loss, bit for bit."""
    c = _config(layout="sessions", rank_weight=0.0, recon_loss="mse")
    data = load_data(c.data)
    assert data.pad_side == "right"
    pd = models.get_model(c, data)
    dc = c.copy_and_resolve_references()
    dc.model.name = "dreamrec"
    dr = models.get_model(dc, data)
    assert type(dr) is DR.DreamRec
    _, p_pd, s = pd.init(jax.random.key(0))
    _, p_dr, _ = dr.init(jax.random.key(0))
    for a, b in zip(jax.tree.leaves(p_pd), jax.tree.leaves(p_dr)):
        np.testing.assert_array_equal(a, b)  # same parameters from the same key
    arrays = sequences.split_arrays(data.train)
    b = sequences.gather(arrays, jnp.arange(16))
    mask = jnp.arange(16) < 13
    f_pd = jax.jit(lambda p, k: pd.loss(p, s, b, mask, k)[0])
    f_dr = jax.jit(lambda p, k: dr.loss(p, s, b, mask, k)[0])
    for seed in range(3):
        key = jax.random.key(10 - seed)
        l_pd, l_dr = f_pd(p_pd, key), f_dr(p_dr, key)
        assert float(l_pd) == float(l_dr)
    # and the rank term does change it
    c1 = _config(layout="sessions", rank_weight=0.5, recon_loss="mse")
    m1 = models.get_model(c1, data)
    m1.init(jax.random.key(0))
    l1 = jax.jit(lambda p: m1.loss(p, s, b, mask, jax.random.key(10))[0])(p_pd)
    assert float(l1) != float(l_pd)


def test_negative_weights():
    mask = jnp.array([True, True, True, False, True])
    W = np.asarray(PD.in_batch_negative_weights(mask, None, 0))
    assert np.all(np.diag(W) == 0) and np.all(W[:, 3] == 0)
    np.testing.assert_allclose(W.sum(1), 1.0)
    np.testing.assert_allclose(W[0], [0, 1 / 3, 1 / 3, 0, 1 / 3])
    Wk = np.asarray(PD.in_batch_negative_weights(mask, jax.random.key(0), 2))
    assert np.all((Wk > 0).sum(1) == 2) and np.all(np.diag(Wk) == 0) and np.all(Wk[:, 3] == 0)
    one = np.asarray(PD.in_batch_negative_weights(jnp.array([True, False]), None, 0))
    assert one[0].sum() == 0  # no negative for a lone valid row


def test_uniform_negatives_and_batch_reduction_run(tiny):
    for fields in ({"negatives": "uniform", "num_negatives": 3}, {"rank_reduction": "batch"},
                   {"num_negatives": 2}):
        m = models.get_model(_config(**fields), tiny)
        _, params, state = m.init(jax.random.key(0))
        loss, _ = jax.jit(lambda p: m.loss(p, state, _batch(tiny, 6), jnp.ones(6, bool), jax.random.key(1)))(params)
        assert np.isfinite(float(loss))


@pytest.mark.parametrize("field, value", [
    ("model.rank_weight", 1.5), ("model.rank_scale", 0.0), ("model.recon_loss", "l1"),
    ("model.negatives", "hard"), ("model.num_negatives", -1), ("model.rank_reduction", "sum"),
    ("model.hidden", 7), ("model.cfg_dropout", 2.0), ("sampling.mode", "ode"), ("sampling.steps", 0),
    ("diffusion.schedule", "quadratic"),
])
def test_validate_config_names_the_field(field, value):
    c = _config()
    group, name = field.split(".")
    c[group][name] = value
    with pytest.raises(ValueError, match=f"config.{field}"):
        PD.PreferDiff.validate_config(c)
    c = _config(negatives="uniform", num_negatives=0)
    with pytest.raises(ValueError, match="config.model.num_negatives"):
        models.validate_config(c)


@pytest.mark.slow
def test_end_to_end_beats_popularity(tmp_path):
    c = _config()
    c.model.hidden = 32
    c.model.num_heads = 2
    c.diffusion.schedule = "linear"
    c.diffusion.steps = 50
    c.sampling.w = 2.0
    c.sampling.steps = 10
    c.eval.score_padding = False
    c.train.num_epochs = 12
    c.train.eval_every_epochs = 4
    c.optim.lr = 3e-3
    res = training.train_and_evaluate(c, str(tmp_path))
    data = load_data(c.data)
    pop = np.bincount(data.train.targets, minlength=data.num_embeddings).astype(float)
    pop[data.pad_id] = -1
    top10 = np.argsort(-pop, kind="stable")[:10]
    pop_hr10 = float(np.isin(data.test.targets, top10).mean())
    chance = 10 / data.n_items
    assert res["test"]["hr@10"] > max(chance, pop_hr10), (res["test"], pop_hr10, chance)
