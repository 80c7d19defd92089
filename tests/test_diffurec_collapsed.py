"""DiffuRec's collapsed padding: equality with the full-length forward, batching, training variant.

The claim (``diffrec_jax.models.diffurec``): with the reference's query mask, no positions, dropout
off and equal lambda draws on the padding (``lambda_std = 0``), the ``L``-column forward equals the
forward over the real columns plus one pad slot with attention bias ``log(#pads)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import diffurec_beauty, seq_test  # noqa: E402
from diffrec_jax.data.sequences import load_diffurec_npz, make_synthetic_sequences  # noqa: E402
from diffrec_jax.models import diffurec as DU  # noqa: E402
from diffrec_jax import training  # noqa: E402
from diffrec_jax.training import sequences  # noqa: E402
from diffrec_jax import models  # noqa: E402

BEAUTY = ROOT.parent / "shared" / "data" / "diffurec" / "amazon_beauty"


def _small_cfg(L: int, *, hidden=16, heads=2, blocks=2, steps=32, lam_std=0.0):
    cfg = seq_test.get_config("diffurec")
    cfg.data.max_len = L
    cfg.model.hidden, cfg.model.num_heads, cfg.model.num_blocks = hidden, heads, blocks
    cfg.model.lambda_std = lam_std
    cfg.diffusion.steps = steps
    return cfg


def _pair(cfg, data, key=0):
    """(full model, collapsed model, shared params)."""
    full = DU.DiffuRec(cfg, data)
    c2 = cfg.copy_and_resolve_references()
    c2.eval.collapse_padding = True
    c2.train.collapse_padding = True
    col = DU.DiffuRec(c2, data)
    _, params, _ = full.init(jax.random.key(key))
    col.init(jax.random.key(key))
    return full, col, params


def _histories(lengths, L, n_items, seed=0):
    """Left-padded ``[N, L]`` histories of the given lengths (items 1..n_items)."""
    rng = np.random.default_rng(seed)
    seq = np.zeros((len(lengths), L), np.int32)
    for i, r in enumerate(lengths):
        if r:
            seq[i, L - r:] = rng.integers(1, n_items + 1, r)
    return seq


def _gen_fn(model, params, mode):
    @jax.jit
    def f(seq, keys):
        return model.generate(params, {"seq": seq}, keys, mode=mode)
    return f


def _check_equal(full, col, params, seq_NxL, *, modes=("reverse",), widths=(), tol=2e-4):
    """The collapsed output equals the full one for every row, at each width of ``widths`` (rows
    that need at most that width; the columns left of the pad slot are dead) or, with ``widths``
    None, at every row's minimal width ``min(len + 1, L)``."""
    L = seq_NxL.shape[1]
    n = seq_NxL.shape[0]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(jnp.arange(n))
    need = DU.collapsed_width((seq_NxL > 0).sum(1), L)
    covered = np.zeros(n, bool)
    for mode in modes:
        ref = np.asarray(_gen_fn(full, params, mode)(jnp.asarray(seq_NxL), keys))
        chex.assert_shape(ref, (n, full.mcfg.hidden))
        g = _gen_fn(col, params, mode)
        for w in sorted(set(need.tolist())) if widths is None else widths:
            rows = np.flatnonzero(need <= w)
            out = np.asarray(g(jnp.asarray(seq_NxL[rows, L - w:]), keys[rows]))
            chex.assert_shape(out, (rows.size, full.mcfg.hidden))
            assert np.all(np.isfinite(out))
            np.testing.assert_allclose(out, ref[rows], rtol=tol, atol=tol,
                                       err_msg=f"mode {mode}, width {w}")
            covered[rows] = True
    assert covered.all()


def test_padding_bias_layout():
    mask = jnp.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
    b = np.asarray(DU.collapsed_padding_bias(mask, 8))
    np.testing.assert_allclose(b[0], [-1e9, -1e9, np.log(6), 0, 0])
    np.testing.assert_allclose(b[1], [-1e9, -1e9, -1e9, np.log(7), 0])
    np.testing.assert_allclose(b[2], [0, 0, 0, 0, 0])  # no room for a slot (R = W): no pads
    np.testing.assert_allclose(b[3], [-1e9, -1e9, -1e9, -1e9, np.log(8)])  # empty history
    np.testing.assert_array_equal(DU.collapsed_width(np.array([0, 1, 7, 8, 9]), 8), [1, 2, 8, 8, 8])


def test_collapsed_equals_full_synthetic_every_length_through_the_32_step_chain():
    L = 50
    data = make_synthetic_sequences(n_users=20, n_items=30, max_len=L)
    full, col, params = _pair(_small_cfg(L, hidden=8), data)
    # every length 0..L (0: empty history), and histories longer than L cut to their last L
    long_seq = _histories([L + 13, 2 * L], 2 * L, 30, seed=3)[:, -L:]
    seq = np.concatenate([_histories(range(L + 1), L, 30), long_seq])
    # width L: every row, dead columns left of the slot; width 9: rows of <= 8 items (8 at its
    # minimal width, no dead column); width 2: one item plus the slot
    _check_equal(full, col, params, seq, widths=(L, 9, 2))


@pytest.mark.slow
def test_collapsed_equals_full_with_trained_like_weights_and_one_step():
    """Larger weights (a non-trivial padding row and attention), more heads and blocks."""
    L = 12
    data = make_synthetic_sequences(n_users=20, n_items=30, max_len=L)
    full, col, params = _pair(_small_cfg(L, hidden=32, heads=4, blocks=4, steps=8), data, key=3)
    params = jax.tree.map(lambda p: p * 1.5, params)
    seq = _histories(list(range(L + 1)) * 2, L, 30, seed=5)
    _check_equal(full, col, params, seq, modes=("reverse", "one_step"), widths=(L, 5))


def _beauty_rows():
    """Real Beauty histories of every length 1..50, plus test histories of exactly 50 and of more
    than 50 items (cut to the last 50 by the loader)."""
    if not (BEAUTY / "dataset.npz").exists():
        pytest.skip(f"{BEAUTY}/dataset.npz not present (the shared data is not mounted here)")
    data = load_diffurec_npz(BEAUTY, max_len=50)
    raw = np.diff(np.load(BEAUTY / "dataset.npz")["train_offsets"]) + 1  # test history lengths
    sp = data.test
    rows = [int(np.flatnonzero(sp.lengths == r)[0]) for r in range(1, 50) if np.any(sp.lengths == r)]
    rows += [int(i) for i in np.flatnonzero(raw == 50)[:1]] + [int(i) for i in np.flatnonzero(raw > 50)[:2]]
    assert raw[rows[-1]] > 50
    have = set(sp.lengths[rows].tolist())
    tr_rows = [int(np.flatnonzero(data.train.lengths == r)[0]) for r in range(1, 51) if r not in have]
    seq = np.concatenate([sp.seq[rows], data.train.seq[tr_rows]])
    assert set(((seq > 0).sum(1)).tolist()) == set(range(1, 51)), "a length 1..50 is missing"
    return data, seq


@pytest.mark.slow
def test_collapsed_equals_full_on_real_beauty_histories_small_net():
    data, seq = _beauty_rows()
    full, col, params = _pair(_small_cfg(50, hidden=16), data, key=1997)
    _check_equal(full, col, params, seq, widths=(50, 12))


@pytest.mark.slow
def test_random_lambda_changes_only_through_the_padding():
    """With the reference's per-position draws, full histories (no pads) still match exactly and
    short ones differ by the lambda noise only (small, not zero)."""
    L = 10
    data = make_synthetic_sequences(n_users=20, n_items=30, max_len=L)
    full, col, params = _pair(_small_cfg(L, steps=8, lam_std=1e-3), data)
    seq = _histories([L, L, 3, 1], L, 30)
    keys = jax.random.split(jax.random.key(0), 4)
    ref = np.asarray(_gen_fn(full, params, "reverse")(jnp.asarray(seq), keys))
    out = np.asarray(_gen_fn(col, params, "reverse")(jnp.asarray(seq), keys))
    np.testing.assert_allclose(out[:2], ref[:2], rtol=1e-5, atol=1e-5)
    rel = np.linalg.norm(out[2:] - ref[2:], axis=1) / np.linalg.norm(ref[2:], axis=1)
    assert np.all(rel > 0) and np.all(rel < 0.05)


@pytest.mark.slow
def test_collapsed_equals_full_on_real_beauty_histories():
    """The reference's network size (H = 128, 4 blocks x 4 heads, T = 32), untrained N(0, 1) table,
    lambda at its mean, at widths 50 (every row), 20, 8 and 2 (rows of 49, 19, 7 and 1 items at
    their minimal width; one compile per width: minutes on the shared CPU)."""
    data, seq = _beauty_rows()
    cfg = diffurec_beauty.get_config()
    cfg.model.lambda_std = 0.0
    full, col, params = _pair(cfg, data, key=1997)
    _check_equal(full, col, params, seq, widths=(50, 20, 8, 2), tol=5e-4)


@pytest.mark.slow
def test_eval_split_collapsed_equals_full_and_plan_covers_rows():
    L = 16
    data = make_synthetic_sequences(n_users=150, n_items=40, max_len=L, mean_len=6.0)
    cfg = _small_cfg(L, steps=8)
    cfg.eval.topk = (5, 10, 20)
    cfg.eval.batch_size = 32
    cfg.eval.batch_mean_of = 32
    full, col, params = _pair(cfg, data)
    sp = data.valid
    lengths = sp.lengths
    plan = sequences.eval_plan(col, len(sp), 32, lengths=sp.lengths, buckets=(2, 4, 8), max_len=L)
    assert len(plan) == -(-len(sp) // 32)  # sorted chunks: only the last one is short
    rows = np.concatenate([r for _, r in plan])
    np.testing.assert_array_equal(np.sort(rows), np.arange(len(sp)))
    need = DU.collapsed_width(lengths[: len(sp)], L)
    for w, r in plan:
        assert (w or L) >= need[r].max() and r.size <= 32
    (w_full, r_full), = sequences.eval_plan(full, len(sp), 32, lengths=sp.lengths, buckets=(2, 4, 8),
                                            max_len=L)  # the faithful form: one group, all columns
    assert w_full is None
    np.testing.assert_array_equal(r_full, np.arange(len(sp)))
    arr = sequences.split_arrays(sp)
    key = jax.random.key(3)
    a = sequences.eval_split(full, params, {}, arr, len(sp), cfg.eval, key, 0)
    b = sequences.eval_split(col, params, {}, arr, len(sp), cfg.eval, key, 0, lengths=sp.lengths,
                             buckets=(8,), max_len=L)
    for proto in ("exact", "reference"):
        for k, v in a[proto].items():
            assert abs(v - b[proto][k]) < 1e-6, (proto, k, v, b[proto][k])


@pytest.mark.slow
def test_collapsed_training_loss_and_grads_equal_full_without_dropout():
    L = 12
    data = make_synthetic_sequences(n_users=40, n_items=30, max_len=L)
    cfg = _small_cfg(L, steps=8)
    cfg.model.dropout = 0.0
    cfg.model.emb_dropout = 0.0
    full, col, params = _pair(cfg, data)
    seq = _histories([1, 2, 5, 0, 3], L, 30)
    batch = {"seq": jnp.asarray(seq), "len": jnp.asarray((seq > 0).sum(1)), "target": jnp.arange(1, 6)}
    cut = dict(batch, seq=batch["seq"][:, -6:])  # every row needs at most 6 columns
    m = jnp.ones(5, bool)
    key = jax.random.key(4)
    f = jax.jit(jax.value_and_grad(lambda p, b, mdl: mdl.loss(p, {}, b, m, key)[0]), static_argnums=2)
    (la, ga), (lb, gb) = f(params, batch, full), f(params, cut, col)
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    chex.assert_trees_all_close(ga, gb, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_collapsed_variant_trains_end_to_end_and_resumes(tmp_path):
    cfg = seq_test.get_config("diffurec")
    cfg.data.max_len = 12
    cfg.train.collapse_padding = True
    cfg.eval.collapse_padding = True
    cfg.train.length_buckets = (6,)
    cfg.eval.length_buckets = (6,)
    cfg.train.num_epochs = 2
    cfg.train.eval_every_epochs = 1
    full = training.train_and_evaluate(cfg, str(tmp_path / "full"))
    assert 0.0 <= full["test"]["hr@20"] <= 1.0
    part = cfg.copy_and_resolve_references()
    part.train.num_epochs = 1
    training.train_and_evaluate(part, str(tmp_path / "part"))
    resumed = training.train_and_evaluate(cfg, str(tmp_path / "part"))
    assert resumed["test"] == full["test"] and resumed["valid"] == full["valid"]


def test_collapse_config_checks(tmp_path):
    data = make_synthetic_sequences(n_users=20, n_items=10, max_len=6)
    for field in ("eval", "train"):
        cfg = seq_test.get_config("diffurec")
        cfg[field].collapse_padding = True
        cfg.model.mask_mode = "key"
        with pytest.raises(ValueError, match=f"config.{field}.collapse_padding needs model.mask_mode"):
            models.get_model(cfg, data)
        cfg.model.mask_mode = "query"
        cfg.model.pos_emb = True
        with pytest.raises(ValueError, match="pos_emb=False"):
            models.get_model(cfg, data)
    # the faithful query mask without collapse still refuses length buckets in training
    cfg = seq_test.get_config("diffurec")
    cfg.train.length_buckets = (4,)
    with pytest.raises(ValueError, match="length_buckets needs"):
        training.train_and_evaluate(cfg, str(tmp_path))
    for v in diffurec_beauty.VARIANTS:
        c = diffurec_beauty.get_config(v)
        assert c.train.collapse_padding == c.eval.collapse_padding == (v == "collapsed")
