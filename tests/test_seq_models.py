"""Tests of the sequential models: encoder masks, DreamRec guidance and sampler, DiffuRec, end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import seq_test  # noqa: E402
from diffrec_jax import samplers  # noqa: E402
from diffrec_jax.data.sequences import make_synthetic_sequences  # noqa: E402
from diffrec_jax.models import diffurec as DU  # noqa: E402
from diffrec_jax.models import dreamrec as DR  # noqa: E402
from diffrec_jax.models.seq import TransformerEncoder  # noqa: E402
from diffrec_jax import training  # noqa: E402
from diffrec_jax.data import load as load_data  # noqa: E402
from diffrec_jax import batching  # noqa: E402
from diffrec_jax.training import sequences  # noqa: E402
from diffrec_jax import models  # noqa: E402

B, L, D = 3, 5, 8


def _enc(**kw):
    """A jitted ``f(x, mask, query_idx=None)`` of a small encoder (one compile, not one per op)."""
    args = dict(num_blocks=1, num_heads=2, dropout_rate=0.0, emb_dropout=0.0, rngs=nnx.Rngs(params=0))
    args.update(kw)
    graphdef, state = nnx.split(TransformerEncoder(D, L, **args))
    f = jax.jit(lambda st, x, m, q: nnx.merge(graphdef, st)(x, m, None, q))
    return lambda x, m, q=None: f(state, x, m, q)


def _x_mask():
    x = jax.random.normal(jax.random.key(1), (B, L, D))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool)
    return x, mask


# --------------------------------------------------------------------------- #
# encoder masks
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("style", ["sasrec", "prenorm"])
def test_causal_encoder_ignores_the_future_and_query_path_matches(style):
    enc = _enc(style=style, causal=True, num_blocks=2)
    x, mask = _x_mask()
    full = enc(x, mask)
    # changing column 3 must not change columns 0..2
    x2 = x.at[:, 3:].add(5.0)
    np.testing.assert_allclose(enc(x2, mask)[:, :3], full[:, :3], atol=1e-5)
    # computing only one column in the last block gives the same numbers
    q = jnp.array([2, 4, 3])
    np.testing.assert_allclose(enc(x, mask, q), full[jnp.arange(B), q], atol=1e-5)


def test_key_mask_hides_padding_and_query_mask_does_not():
    x, mask = _x_mask()
    x2 = jnp.where(mask[..., None], x, x + 3.0 * jax.random.normal(jax.random.key(9), x.shape))  # padding only
    for causal in (False, True):
        enc = _enc(style="prenorm", causal=causal, mask_mode="key", pos_emb=False, zero_pad_inputs=False)
        np.testing.assert_allclose(enc(x, mask)[1], enc(x2, mask)[1], atol=1e-6)  # no padding
        real = np.asarray(mask)
        np.testing.assert_allclose(np.asarray(enc(x, mask))[real], np.asarray(enc(x2, mask))[real], atol=1e-5)
    enc = _enc(style="prenorm", causal=False, mask_mode="query", pos_emb=False, zero_pad_inputs=False)
    out, out2 = enc(x, mask), enc(x2, mask)
    assert float(jnp.abs(out[0, 2] - out2[0, 2]).max()) > 1e-3  # DiffuRec: padded keys are attended
    np.testing.assert_allclose(out[1], out2[1], atol=1e-6)


def test_positional_embedding_switch_and_bidirectional():
    x, mask = _x_mask()
    mask = jnp.ones_like(mask)
    perm = jnp.array([1, 0, 2, 3, 4])
    enc = _enc(style="prenorm", causal=False, pos_emb=False)
    # no positions, bidirectional: swapping two inputs swaps the outputs
    np.testing.assert_allclose(enc(x[:, perm], mask)[:, perm], enc(x, mask), atol=1e-5)
    enc_p = _enc(style="prenorm", causal=False, pos_emb=True)
    assert float(jnp.abs(enc_p(x[:, perm], mask)[:, perm] - enc_p(x, mask)).max()) > 1e-3


# --------------------------------------------------------------------------- #
# DreamRec
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def dreamrec():
    cfg = seq_test.get_config("dreamrec")
    data = make_synthetic_sequences(n_users=30, n_items=12, layout="sessions", max_len=4)
    m = DR.DreamRec(cfg, data)
    _, params, _ = m.init(jax.random.key(0))
    return m, params, data


def test_dreamrec_guidance_w0_is_the_conditional_model(dreamrec):
    m, params, _ = dreamrec
    net = m.net(params)
    x = jax.random.normal(jax.random.key(2), (4, 16))
    c = jax.random.normal(jax.random.key(3), (4, 16))
    t = jnp.array([0, 3, 5, 7])
    for fast in (True, False):
        f, g0, prep = m.guided_denoiser(net, 0.0, fast=fast)
        np.testing.assert_allclose(g0(x, t, prep(c)), f(x, t, prep(c)), atol=1e-6)
        _, g2, _ = m.guided_denoiser(net, 2.0, fast=fast)
        null = jnp.broadcast_to(net.null[...], c.shape)
        want = 3.0 * net.denoise(x, c, net.tau(t)) - 2.0 * net.denoise(x, null, net.tau(t))
        np.testing.assert_allclose(g2(x, t, prep(c)), want, atol=1e-4)
    keys = jax.random.split(jax.random.key(4), 4)
    s0 = m.sample(params, c, keys, w=0.0)  # guided sampler with w = 0 ...
    f, _, prep = m.guided_denoiser(net, 0.0, fast=True)  # ... equals the unguided conditional one
    x_T = samplers.normal_per_example(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), 0, c.shape)
    plain = samplers.ancestral_sample(
        f, m.schedule, x_T, jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys), cond=prep(c), mean_type="x0"
    )
    np.testing.assert_allclose(s0, plain, atol=1e-5)


@pytest.mark.slow
def test_dreamrec_sampler_batch_equals_vmap_and_fast_equals_generic(dreamrec):
    m, params, data = dreamrec
    c = jax.random.normal(jax.random.key(5), (3, 16))
    keys = jax.random.split(jax.random.key(6), 3)
    batched = m.sample(params, c, keys)
    single = jax.vmap(lambda ci, ki: m.sample(params, ci[None], ki[None])[0])(c, keys)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(m.sample(params, c, keys, fast=False), batched, atol=1e-4)
    # an empty history's guidance vector is LN3's bias, whatever the item table holds
    seq = jnp.full((2, data.max_len), data.pad_id, jnp.int32)
    c0 = m.net(params).guidance(seq, jnp.zeros(2, jnp.int32), data.pad_id)
    np.testing.assert_allclose(c0[0], m.net(params).encoder.final_ln.bias[...], atol=1e-6)


# --------------------------------------------------------------------------- #
# DiffuRec
# --------------------------------------------------------------------------- #


def test_diffurec_schedule_matches_the_spec():
    s = DU.diffurec_schedule("trunc_lin", 32)
    assert abs(float(s.betas[0]) - 0.013125) < 1e-6 and abs(float(s.betas[-1]) - 0.635) < 1e-6
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[[0, 8, 16]], [0.987, 0.408, 0.0346], rtol=3e-3)


@pytest.mark.slow
def test_diffurec_reverse_batch_equals_vmap_and_one_step_runs():
    cfg = seq_test.get_config("diffurec")
    cfg.model.hidden = 8
    cfg.model.num_heads = 2
    cfg.diffusion.steps = 4
    data = make_synthetic_sequences(n_users=20, n_items=10, max_len=4)
    m = DU.DiffuRec(cfg, data)
    _, params, _ = m.init(jax.random.key(0))
    batch = {"seq": jnp.asarray(data.test.seq[:3]), "len": jnp.asarray(data.test.lengths[:3]),
             "target": jnp.asarray(data.test.targets[:3])}
    keys = jax.random.split(jax.random.key(1), 3)
    out = m.generate(params, batch, keys)
    one = jax.vmap(lambda s, k: m.generate(params, {"seq": s[None]}, k[None])[0])(batch["seq"], keys)
    np.testing.assert_allclose(out, one, atol=1e-5)
    assert m.generate(params, batch, keys, mode="one_step").shape == (3, 8)


def test_target_rank_equals_the_position_in_top_k():
    from diffrec_jax import metrics as M

    s = jax.random.normal(jax.random.key(0), (200, 50))  # distinct scores
    tgt = jax.random.randint(jax.random.key(1), (200,), 0, 50)
    want = jnp.argmax(M.topk_indices(s, 50) == tgt[:, None], axis=1)
    np.testing.assert_array_equal(sequences.target_rank(s, tgt), want)
    tied = jnp.zeros((1, 6))  # ties: the lower id ranks first
    np.testing.assert_array_equal(sequences.target_rank(tied, jnp.array([4])), [4])


# --------------------------------------------------------------------------- #
# end to end: results, metrics, resume
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_sasrec_end_to_end_and_exact_resume(tmp_path):
    cfg = seq_test.get_config("sasrec")
    cfg.train.num_epochs = 2
    cfg.train.eval_every_epochs = 1
    full = training.train_and_evaluate(cfg, str(tmp_path / "full"))
    assert set(full["test"]) == {f"{m}@{k}" for m in ("hr", "ndcg", "recall") for k in (5, 10, 20)}
    assert 0.0 < full["test"]["hr@20"] <= 1.0 and full["params"] > 0
    on_disk = json.loads((tmp_path / "full" / "results.json").read_text())
    assert on_disk["test"] == full["test"]
    lines = [json.loads(s) for s in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "train/loss" in r] == [1, 2]
    part = cfg.copy_and_resolve_references()
    part.train.num_epochs = 1
    training.train_and_evaluate(part, str(tmp_path / "part"))
    resumed = training.train_and_evaluate(cfg, str(tmp_path / "part"))
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]
    with pytest.raises(ValueError, match="config.eval.select_metric"):
        bad = cfg.copy_and_resolve_references()
        bad.eval.select_metric = "recall@20"
        training.train_and_evaluate(bad, str(tmp_path / "bad"))


@pytest.mark.slow
def test_time_budget_stops_sequential_training(tmp_path):
    cfg = seq_test.get_config("sasrec")
    cfg.train.num_epochs, cfg.train.eval_every_epochs, cfg.train.time_budget_s = 3, 3, 1e-9
    res = training.train_and_evaluate(cfg, str(tmp_path))
    assert res["epochs_run"] == 1 and res["best_epoch"] == 1 and 0.0 <= res["test"]["hr@20"] <= 1.0


def test_epoch_batches_are_seeded_and_buckets_cover_every_row_once():
    idx, mask = batching.epoch_batches(103, 10, seed=1, epoch=2, sampling="independent")
    assert idx.shape == (10, 10) and mask.all()
    assert all(len(set(r)) == 10 for r in idx)  # distinct rows within a step
    np.testing.assert_array_equal(idx, batching.epoch_batches(103, 10, 1, 2, "independent")[0])
    lengths = np.array([0, 1, 3, 4, 5, 8, 9, 12, 2, 2, 7])
    bucket, widths = batching.length_buckets(lengths, (4, 8), 12)
    assert widths == (4, 8, 12) and all(lengths <= np.asarray(widths)[bucket])
    batches = batching.bucketed_epoch_batches(bucket, len(widths), 3, seed=0, epoch=1)
    rows = np.concatenate([ib[mb] for _, ib, mb in batches])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(lengths)))
    assert all(np.all(bucket[ib[mb]] == b) for b, ib, mb in batches)


@pytest.mark.slow
def test_cold_items_analysis_runs_on_a_trained_dreamrec(tmp_path):
    import importlib.util

    from configs import seq_test

    c = seq_test.get_config("dreamrec")
    c.train.num_epochs = 2
    c.train.eval_every_epochs = 1
    training.train_and_evaluate(c, str(tmp_path))
    spec = importlib.util.spec_from_file_location(
        "cold_items", Path(__file__).resolve().parents[1] / "experiments" / "cold_items.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.analyse(c, str(tmp_path), rows=50)
    assert set(res["cold_target_fraction"]) == {"train", "valid", "test"}
    assert res["cold_target_fraction"]["train"] == 0.0
    t = res["test"]
    assert t["all"]["n"] == t["warm_target_rows"]["n"] + t["cold_target_rows"]["n"] == res["test_rows"]
    assert 0.0 <= res["cold_share_of_top20"] <= 1.0 and res["median_norm"]["warm"] > 0
    assert 20 <= res["top20_lists"]["distinct_items"] <= 20 * 50
    # one fixed list for everyone: its HR is the model's; the oracle list bounds any fixed list
    top = np.tile(np.arange(20), (6, 1))
    cons = mod.top20_consensus(top, np.array([3, 19, 25, 3, 3, 40]))
    assert cons == {"distinct_items": 20, "overlap_with_consensus": 1.0, "consensus_hr@20": 4 / 6,
                    "best_fixed_list_hr@20": 1.0}
    mixed = mod.top20_consensus(np.stack([np.arange(20), np.arange(20) + 20]), np.array([0, 39]))
    assert mixed["distinct_items"] == 40 and mixed["consensus_hr@20"] == 0.5


def test_dreamrec_item_init_std(tmp_path):
    """model.item_init_std scales the item table's N(0, 1) init (1.0 = the reference); 0 is refused."""
    from configs import seq_test

    c = seq_test.get_config("dreamrec")
    data = load_data(c.data)
    stds = []
    for s in (1.0, 0.01):
        c.model.item_init_std = s
        model = models.get_model(c, data)
        _, params, _ = model.init(jax.random.key(0))
        stds.append(float(np.std(np.asarray(model.net(params).item_emb[...]))))
    assert abs(stds[0] - 1.0) < 0.1 and abs(stds[1] - 0.01) < 0.001
    c.model.item_init_std = 0.0
    with pytest.raises(ValueError, match="config.model.item_init_std"):
        models.get_model(c, data)


@pytest.mark.slow
def test_dreamrec_stop_target_grad():
    """With model.stop_target_grad the loss sends no gradient into a row used only as a target."""
    from configs import seq_test

    c = seq_test.get_config("dreamrec")
    data = load_data(c.data)
    arrays = sequences.split_arrays(data.train)
    idx = jnp.arange(8)
    batch = sequences.gather(arrays, idx)
    hist = set(np.asarray(batch["seq"]).ravel().tolist())
    only_target = [int(t) for t in np.asarray(batch["target"]) if int(t) not in hist]
    assert only_target, "the test needs a row that is a target but in no history of the batch"
    grads = {}
    for flag in (False, True):
        c.model.stop_target_grad = flag
        model = models.get_model(c, data)
        _, params, state = model.init(jax.random.key(0))

        def f(p):
            return model.loss(p, state, batch, jnp.ones(8, bool), jax.random.key(1))[0]

        g = jax.grad(f)(params)
        grads[flag] = np.abs(np.asarray(model.net(g).item_emb[...])[only_target]).sum()
    assert grads[False] > 0 and grads[True] == 0
