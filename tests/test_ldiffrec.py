"""L-DiffRec and T-DiffRec: k-means, latent widths, item order, loss, anneals, optimizer, time weights
and end-to-end training on a tiny synthetic config (LT-DiffRec is their combination: no new code)."""

import dataclasses
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

from configs import ldiffrec_ml1m  # noqa: E402
from configs import test as test_config  # noqa: E402
from diffrec_jax import models  # noqa: E402
from diffrec_jax.data import CSR  # noqa: E402
from diffrec_jax.data.temporal import time_weighted  # noqa: E402
from diffrec_jax.models import ldiffrec as L  # noqa: E402
from diffrec_jax.models.kmeans import kmeans  # noqa: E402
from diffrec_jax import training  # noqa: E402
from diffrec_jax.data import load as load_data  # noqa: E402


def _cfg(**model):
    """Tiny L-DiffRec config (synthetic data of configs/test.py) with ``model`` overrides."""
    c = ldiffrec_ml1m.add_ldiffrec_fields(test_config.get_config())
    c.model.in_dims = (12,)
    c.model.mlp_dims = (16,)
    c.diffusion.steps = 5
    c.diffusion.noise_max = 0.02
    for k, v in model.items():
        c.model[k] = v
    return c


def _blobs(n_per=20, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]])[:k]
    pts = np.concatenate([c + rng.normal(size=(n_per, 2)) for c in centres])
    truth = np.repeat(np.arange(k), n_per)
    order = rng.permutation(len(pts))  # interleave the blobs
    return pts[order].astype(np.float32), truth[order]


# ---------------------------------------------------------------------------------------------
# k-means
# ---------------------------------------------------------------------------------------------


# random init may start with two centres in one blob (a local minimum for k >= 3); with k = 2
# well-separated blobs Lloyd always recovers them, and k-means++ recovers k = 3
@pytest.mark.parametrize("init,k", [("random", 2), ("k-means++", 3)])
def test_kmeans_recovers_separated_clusters_deterministically(init, k):
    pts, truth = _blobs(k=k)
    r = kmeans(pts, k, jax.random.key(3), init=init)
    chex.assert_shape(r.labels, (20 * k,))
    chex.assert_shape(r.centres, (k, 2))
    labels = np.asarray(r.labels)
    # same partition up to renaming: each true blob maps to one label, all distinct
    mapping = {t: set(labels[truth == t]) for t in range(k)}
    assert all(len(s) == 1 for s in mapping.values())
    assert len(set.union(*mapping.values())) == k
    r2 = kmeans(pts, k, jax.random.key(3), init=init)
    np.testing.assert_array_equal(labels, np.asarray(r2.labels))
    np.testing.assert_array_equal(np.asarray(r.centres), np.asarray(r2.centres))


def test_kmeans_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        kmeans(np.zeros((4, 2), np.float32), 5, jax.random.key(0))


# ---------------------------------------------------------------------------------------------
# Widths and item order
# ---------------------------------------------------------------------------------------------


def test_latent_widths_rule():
    sizes = [30, 50, 20]
    w = L.latent_widths(sizes, [300, 10])
    assert w == [[90, 3], [150, 5], [60, 2]]
    assert [sum(c[j] for c in w) for j in range(2)] == [300, 10]
    # int(1/1000 * 10) = 0 -> minimum 1; the last takes the remainder
    assert L.split_widths([1, 999], 10) == [1, 9]
    assert L.split_widths([333, 333, 334], 100) == [33, 33, 34]


def test_cluster_permutation_round_trip():
    labels = np.array([1, 0, 1, 1, 0, 2])
    perm, sizes = L.cluster_items(labels)
    np.testing.assert_array_equal(perm, [1, 4, 0, 2, 3, 5])  # clusters in order, ids ascending
    assert sizes == [2, 3, 1]
    model = types.SimpleNamespace(perm=perm, inv_perm=np.argsort(perm))
    x = jnp.arange(12.0).reshape(2, 6)
    xc = L.LDiffRec.to_cluster_order(model, x)
    np.testing.assert_array_equal(xc[0], [1, 4, 0, 2, 3, 5])
    np.testing.assert_array_equal(L.LDiffRec.to_item_order(model, xc), x)


def _interleaved_data(n_items=8, n_users=6):
    """Items with even ids form one cluster, odd ids another (so the permutation is non-trivial)."""
    emb = np.where((np.arange(n_items) % 2 == 0)[:, None], [[10.0, 0.0]], [[0.0, 10.0]])
    return types.SimpleNamespace(
        n_items=n_items, n_users=n_users, item_emb=emb.astype(np.float32), name="interleaved"
    )


def test_scores_come_back_in_original_item_order():
    I = 8
    data = _interleaved_data(I)
    c = _cfg(in_dims=(I,), mlp_dims=(4,))
    model = L.LDiffRec(c, data)
    assert sorted([list(model.perm[:4]), list(model.perm[4:])]) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert model.cluster_sizes == (4, 4)
    _, params, state = model.init(jax.random.key(0))
    ae, den = model._modules(params)
    assert ae.latent_sizes == (4, 4)
    # denoiser outputs the constant v with v[p] = original id of cluster position p; the decoder
    # is the identity, so the reverse chain ends at v (c1_0 = 1, c2_0 = 0) and the scores in
    # original item order must be arange(I)
    last = den.out_layers[-1]
    last.kernel.value = jnp.zeros_like(last.kernel.value)
    last.bias.value = jnp.asarray(model.perm, jnp.float32)
    ae.decoder.kernel.value = jnp.eye(I)
    ae.decoder.bias.value = jnp.zeros((I,))
    params = {"ae": nnx.split(ae)[1], "denoiser": nnx.split(den)[1]}
    x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (3, I)), jnp.float32)
    s = jax.jit(model.score)(params, state, x, jax.random.key(1))
    np.testing.assert_allclose(s, np.tile(np.arange(I, dtype=np.float32), (3, 1)), atol=1e-5)


def test_missing_item_emb_names_the_field():
    data = dataclasses.replace(load_data(_cfg().data), item_emb=None)
    with pytest.raises(ValueError, match="config.model.item_emb_path"):
        L.LDiffRec(_cfg(), data)
    L.LDiffRec(_cfg(n_cate=1), data)  # no clustering, no embedding needed


@pytest.mark.parametrize(
    "field,value",
    [("n_cate", 0), ("in_dims", ()), ("recon_target", "noisy"), ("kmeans_init", "pp"), ("ae_dropout", 1.0)],
)
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"config.model.{field}"):
        models.validate_config(_cfg(**{field: value}))


def test_item_emb_path_used_when_dataset_has_none(tmp_path):
    data = load_data(_cfg().data)
    np.save(tmp_path / "emb.npy", data.item_emb)
    model = L.LDiffRec(_cfg(item_emb_path=str(tmp_path / "emb.npy")), dataclasses.replace(data, item_emb=None))
    assert sum(model.cluster_sizes) == data.n_items and len(model.cluster_sizes) == 2


# ---------------------------------------------------------------------------------------------
# Shapes, loss, anneals, optimizer
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    c = _cfg()
    data = load_data(c.data)
    model = models.get_model(c, data)
    graphdefs, params, state = model.init(jax.random.key(0))
    x = jnp.asarray(data.train.to_dense(np.arange(8)))
    return c, data, model, params, state, x


_JITTED: dict = {}


def _jitted(model):
    """One jitted (loss, score) pair per model object, shared by the tests."""
    if id(model) not in _JITTED:
        _JITTED[id(model)] = (model, jax.jit(model.loss), jax.jit(model.score))
    return _JITTED[id(model)][1:]


@pytest.mark.parametrize("out_dims", [(), (10,)])
def test_shapes_and_finite_loss(tiny, out_dims):
    c, data, model, params, state, x = tiny
    if out_dims:
        model = L.LDiffRec(_cfg(out_dims=out_dims), data)
        _, params, state = model.init(jax.random.key(0))
    loss_fn, score_fn = _jitted(model)

    @jax.jit
    def encode_decode(params, x):
        ae, _ = model._modules(params)
        x_drop, z, mu, logvar = ae.encode(
            model.to_cluster_order(x), dropout_key=jax.random.key(1), reparam_key=jax.random.key(2)
        )
        return x_drop, z, mu, logvar, ae.decode(z)

    x_drop, z, mu, logvar, logits = encode_decode(params, x)
    chex.assert_shape(x_drop, (8, data.n_items))
    chex.assert_shape([z, mu, logvar], (8, 12))
    assert float(jnp.max(jnp.abs(mu))) < 1.0 and float(jnp.max(jnp.abs(logvar))) < 1.0  # final tanh
    chex.assert_shape(logits, (8, data.n_items))
    loss, (new_state, aux) = loss_fn(params, state, x, jnp.ones(8, bool), jax.random.key(3))
    chex.assert_shape(loss, ())
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in aux.values())
    assert int(new_state["step"]) == 1 and int(new_state["hist"].counts.sum()) == 8
    chex.assert_shape(score_fn(params, state, x, jax.random.key(4)), (8, data.n_items))


def test_padding_rows_do_not_change_the_loss(tiny):
    _, _, model, params, state, x = tiny
    mask = jnp.arange(8) < 5
    garbage = x.at[5:].set(3.0)
    loss, _ = _jitted(model)
    l1, (s1, _) = loss(params, state, x, mask, jax.random.key(5))
    l2, (s2, _) = loss(params, state, garbage, mask, jax.random.key(5))
    np.testing.assert_allclose(l1, l2, rtol=1e-6)
    assert int(s1["hist"].counts.sum()) == 5


def test_param_count_is_encoders_decoder_denoiser(tiny):
    _, data, model, params, _, _ = tiny
    I, (a, b) = data.n_items, model.cluster_sizes
    la, lb = L.split_widths([a, b], 12)
    enc = (a + 1) * 2 * la + (b + 1) * 2 * lb
    dec = (12 + 1) * I
    den = 10 * 10 + 10 + (12 + 10 + 1) * 16 + (16 + 1) * 12
    assert models.count_params(params) == enc + dec + den


def test_gradient_paths_match_the_reference(tiny):
    """z is not detached (the diffusion loss reaches the encoders) and the decoder reads the
    denoiser's x0 prediction (the reconstruction loss reaches the denoiser), spec section 8."""
    _, _, model, params, state, x = tiny

    def term(name):
        def f(p):
            return model.loss(p, state, x, jnp.ones(8, bool), jax.random.key(7))[1][1][name]

        return jax.jit(jax.grad(f))(params)

    norm = lambda tree: float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(tree)))  # noqa: E731
    g_elbo = term("elbo")
    assert norm(g_elbo["ae"]["encoders"]) > 0.0  # z not detached
    assert norm(g_elbo["ae"]["decoder"]) == 0.0  # the diffusion loss does not see the decoder
    g_rec = term("recon")
    assert norm(g_rec["denoiser"]) > 0.0  # decode(x0_hat), not decode(z)
    assert norm(g_rec["ae"]["encoders"]) > 0.0


def test_reconstruction_target_is_the_dropped_out_input(tiny):
    _, _, model, params, _, x = tiny
    ae, _ = model._modules(params)
    xc = model.to_cluster_order(x)
    x_drop, _, _, _ = ae.encode(xc, dropout_key=jax.random.key(3))
    kept = x_drop != 0
    np.testing.assert_allclose(x_drop[kept], xc[kept] / (1.0 - model.ae_dropout), rtol=1e-6)
    assert int(jnp.sum((xc != 0) & ~kept)) > 0  # some interactions were dropped
    x_eval, z, mu, _ = ae.encode(xc)  # evaluation: no dropout, z = mu
    np.testing.assert_array_equal(x_eval, xc)
    np.testing.assert_array_equal(z, mu)


def test_anneal_schedules():
    np.testing.assert_allclose(
        [float(L.vae_anneal(s, 200, 0.3)) for s in (0, 30, 60, 200, 999)],
        [0.0, 0.15, 0.3, 0.3, 0.3],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        [float(L.lamda_anneal(e, 0.03, 500, 0.005)) for e in (0, 250, 400, 500)],
        [0.03, 0.015, 0.006, 0.005],
        rtol=1e-6,
    )
    assert float(L.vae_anneal(7, 0, 0.3)) == pytest.approx(0.3)
    assert float(L.lamda_anneal(7, 0.03, 0, 0.005)) == pytest.approx(0.03)


def test_model_anneals_follow_the_step_counter(tiny):
    c, data, model, _, _, _ = tiny
    # 120 users, batch 32 -> 4 steps per epoch
    assert model.steps_per_epoch == 4
    lam, kl_w = model.anneals(jnp.asarray(9))  # 2 epochs done, 9 batches seen
    assert float(lam) == pytest.approx(0.03 * (1 - 2 / 500))
    assert float(kl_w) == pytest.approx(9 / 200)


def test_optimizer_uses_lr1_for_autoencoder_and_lr2_for_denoiser(tiny):
    c, _, model, params, _, _ = tiny
    c = _cfg()
    c.optim.lr1, c.optim.lr2 = 1e-2, 1e-4
    tx = model.optimizer(c.optim)
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(ones, tx.init(params), params)
    # Adam's first step is -lr * g / (|g| + eps) = -lr for g = 1
    for leaf in jax.tree.leaves(updates["ae"]):
        np.testing.assert_allclose(leaf, -1e-2, rtol=1e-5)
    for leaf in jax.tree.leaves(updates["denoiser"]):
        np.testing.assert_allclose(leaf, -1e-4, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# T-DiffRec time weights
# ---------------------------------------------------------------------------------------------


def test_time_weights_linear_oldest_to_newest():
    users = np.array([0, 0, 0, 0, 0, 1, 2, 2])
    items = np.array([4, 1, 3, 0, 2, 5, 0, 1])
    csr = CSR.from_pairs(users, items, n_users=3, n_items=6)
    w = time_weighted(csr, 0.2, 1.0)
    np.testing.assert_allclose(w.values, [0.2, 0.4, 0.6, 0.8, 1.0, 0.2, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(w.indices, csr.indices)
    dense = w.to_dense()
    assert dense[0, 4] == pytest.approx(0.2) and dense[0, 2] == pytest.approx(1.0)
    assert dense[1, 5] == pytest.approx(0.2)  # single-entry row gets w_min
    np.testing.assert_array_equal(dense > 0, csr.to_dense() > 0)  # masks unchanged


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def _short(c):
    c.train.num_epochs = 2
    c.train.eval_every_epochs = 2
    return c


@pytest.mark.parametrize(
    "name,make",
    [
        ("ldiffrec", lambda: _short(_cfg())),
        ("tdiffrec", lambda: _tw(_short(test_config.get_config()))),
    ],
)
@pytest.mark.slow
def test_end_to_end(tmp_path, name, make):
    res = training.train_and_evaluate(make(), str(tmp_path))
    assert 0.0 < res["test"]["recall@20"] <= 1.0
    assert res["best_epoch"] == 2
    assert (tmp_path / "results.json").exists()


def _tw(c):
    c.data.time_weights = (0.1, 1.0)
    return c
