"""Ranking metrics against hand-computed cases."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from diffrec_jax import metrics as M


def _log2(x):
    return math.log2(x)


def test_hand_computed_single_user():
    # 6 items; the user saw item 0; truth = {2, 4, 5}
    scores = jnp.array([[9.0, 1.0, 5.0, 4.0, 3.0, 0.5]])
    history = jnp.array([[1, 0, 0, 0, 0, 0]], jnp.float32)
    truth = jnp.array([[0, 0, 1, 0, 1, 1]], jnp.float32)
    # ranking without item 0: 2 (hit), 3, 4 (hit), 1, 5 (hit)
    out = M.ranking_metrics(scores, history, truth, ks=(1, 2, 3, 5))
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@3"] == pytest.approx(2 / 3)
    assert out["recall@5"] == pytest.approx(1.0)
    assert out["precision@2"] == pytest.approx(1 / 2)
    assert out["precision@3"] == pytest.approx(2 / 3)
    dcg3 = 1 / _log2(2) + 1 / _log2(4)
    idcg3 = 1 / _log2(2) + 1 / _log2(3) + 1 / _log2(4)
    assert out["ndcg@3"] == pytest.approx(dcg3 / idcg3, rel=1e-6)
    dcg5 = dcg3 + 1 / _log2(6)
    assert out["ndcg@5"] == pytest.approx(dcg5 / idcg3, rel=1e-6)
    assert out["mrr@1"] == pytest.approx(1.0)
    assert out["hr@1"] == 1.0


def test_recall_denominator_and_average_over_all_users():
    # user 0: 4 truth items, K=2, 1 hit -> recall 1/4 (not 1/2); user 1: no truth -> counts 0
    scores = jnp.array([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0], [4.0, 3.0, 2.0, 1.0, 0.0, -1.0]])
    history = jnp.zeros((2, 6))
    truth = jnp.array([[0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]], jnp.float32)
    out_all = M.ranking_metrics(scores, history, truth, ks=(2,), average="all")
    out_ne = M.ranking_metrics(scores, history, truth, ks=(2,), average="nonempty")
    assert out_all["recall@2"] == pytest.approx(0.25 / 2)
    assert out_ne["recall@2"] == pytest.approx(0.25)
    # NDCG with |G| > K: IDCG uses min(|G|, K) = 2 positions; hit at rank 1 only
    assert out_ne["ndcg@2"] == pytest.approx((1 / _log2(3)) / (1 + 1 / _log2(3)), rel=1e-6)
    assert out_ne["mrr@2"] == pytest.approx(0.5)


def test_no_hit_gives_zero():
    scores = jnp.array([[3.0, 2.0, 1.0, 0.0]])
    out = M.ranking_metrics(scores, jnp.zeros((1, 4)), jnp.array([[0, 0, 0, 1.0]]), ks=(2,))
    assert all(v == 0.0 for v in out.values())


def test_masked_items_never_ranked():
    scores = jnp.array([[10.0, 9.0, 1.0, 0.0]])
    top = M.topk_indices(M.mask_scores(scores, jnp.array([[1, 1, 0, 0.0]])), 2)
    np.testing.assert_array_equal(np.asarray(top), [[2, 3]])


@pytest.mark.parametrize("chunk", [7, 16, 100])
def test_chunked_topk_is_exact(chunk):
    rng = np.random.default_rng(0)
    scores = jnp.asarray(rng.normal(size=(5, 53)).astype(np.float32))
    full = np.asarray(M.topk_indices(scores, 10))
    chunked = np.asarray(M.topk_indices(scores, 10, chunk_size=chunk))
    np.testing.assert_array_equal(full, chunked)


def test_batched_sums_equal_one_batch():
    rng = np.random.default_rng(1)
    scores = jnp.asarray(rng.normal(size=(10, 30)).astype(np.float32))
    truth = jnp.asarray((rng.random((10, 30)) < 0.2).astype(np.float32))
    top = M.topk_indices(scores, 10)
    n = jnp.sum(truth > 0, 1)
    whole = M.metric_sums(M.hits_from_topk(top, truth), n, (5, 10))
    a = M.metric_sums(M.hits_from_topk(top[:4], truth[:4]), n[:4], (5, 10))
    b = M.metric_sums(M.hits_from_topk(top[4:], truth[4:]), n[4:], (5, 10))
    for k in whole:
        assert float(whole[k]) == pytest.approx(float(a[k] + b[k]), rel=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="larger than the number of items"):
        M.topk_indices(jnp.zeros((1, 3)), 5)
    with pytest.raises(ValueError, match="average"):
        M.finalize({"recall@1": 1.0, "_users": 1.0}, 1, average="mean")
