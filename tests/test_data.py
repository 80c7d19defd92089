"""Tests of diffrec_jax.data: CSR, loaders, validation errors, synthetic data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from diffrec_jax.data import (
    CSR,
    DataError,
    InteractionData,
    load_diffrec_npy,
    load_movielens,
    make_synthetic,
    split_counts,
    validate,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML1M_CLEAN = SHARED_DATA / "diffrec" / "ml-1m_clean"
ML100K = SHARED_DATA / "movielens" / "ml-100k" / "u.data"


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #

# 3 users, 4 items. Train rows are deliberately not in item order.
TRAIN = np.array([[0, 2], [0, 0], [1, 3], [1, 1], [2, 0], [2, 3], [0, 1]], dtype=np.int64)
VALID = np.array([[0, 3], [1, 0], [2, 1]], dtype=np.int64)
TEST = np.array([[1, 2], [2, 2]], dtype=np.int64)


def write_diffrec(d: Path, train=TRAIN, valid=VALID, test=TEST, item_emb=None) -> Path:
    """Write a small DiffRec-format directory."""
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "train_list.npy", train)
    np.save(d / "valid_list.npy", valid)
    np.save(d / "test_list.npy", test)
    if item_emb is not None:
        np.save(d / "item_emb.npy", item_emb)
    return d


def recall_at_k(scores: np.ndarray, data: InteractionData, k: int = 20) -> float:
    """Mean Recall@k on test, ranking all non-train items."""
    train = data.train.to_dense()
    test = data.test.to_dense()
    scores = np.where(train > 0, -np.inf, scores)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    hits = np.take_along_axis(test, top, axis=1).sum(1)
    return float(np.mean(hits / np.maximum(test.sum(1), 1)))


# --------------------------------------------------------------------------- #
# CSR
# --------------------------------------------------------------------------- #


def test_csr_from_pairs_to_dense_round_trip():
    users = np.array([2, 0, 2, 1, 0])
    items = np.array([3, 1, 0, 2, 4])
    vals = np.array([0.5, 1.0, 2.0, 3.0, 4.0])
    csr = CSR.from_pairs(users, items, n_users=4, n_items=5, values=vals)
    expected = np.zeros((4, 5), np.float32)
    expected[users, items] = vals
    assert csr.indptr.dtype == np.int64 and csr.indices.dtype == np.int32
    assert csr.values.dtype == np.float32
    assert csr.n_users == 4 and csr.nnz == 5
    np.testing.assert_array_equal(csr.to_dense(), expected)
    np.testing.assert_array_equal(csr.to_dense(np.array([3, 2, 2])), expected[[3, 2, 2]])
    np.testing.assert_array_equal(csr.to_dense(np.array([], dtype=np.int64)), np.zeros((0, 5)))
    assert csr.to_dense(dtype=np.int8).dtype == np.int8
    np.testing.assert_array_equal(csr.row_lengths(), [2, 1, 2, 0])
    np.testing.assert_array_equal(csr.binary().values, np.ones(5))
    np.testing.assert_array_equal(csr.binary().to_dense(), (expected > 0).astype(np.float32))
    u, i = csr.to_pairs()
    np.testing.assert_array_equal(expected[u, i], csr.values)


def test_csr_keeps_input_order_within_rows():
    users = np.array([1, 0, 1, 0, 1])
    items = np.array([9, 5, 2, 7, 4])
    csr = CSR.from_pairs(users, items, n_users=2, n_items=10)
    np.testing.assert_array_equal(csr.row(0), [5, 7])
    np.testing.assert_array_equal(csr.row(1), [9, 2, 4])


def test_csr_from_pairs_rejects_out_of_range():
    with pytest.raises(DataError, match="item id out of range"):
        CSR.from_pairs(np.array([0]), np.array([5]), n_users=1, n_items=5)


def test_split_counts_rule():
    n = np.array([3, 4, 5, 10, 11, 20, 100])
    tr, va, te = split_counts(n)
    np.testing.assert_array_equal(tr, [1, 2, 3, 7, 8, 14, 70])
    np.testing.assert_array_equal(va, [1, 1, 1, 2, 2, 4, 20])
    np.testing.assert_array_equal(te, [1, 1, 1, 1, 1, 2, 10])
    assert np.all(tr + va + te == n)


# --------------------------------------------------------------------------- #
# DiffRec .npy loader
# --------------------------------------------------------------------------- #


def test_load_diffrec_npy_counts_and_rows(tmp_path):
    emb = np.arange(8, dtype=np.float64).reshape(4, 2)
    data = load_diffrec_npy(write_diffrec(tmp_path / "tiny", item_emb=emb))
    assert data.name == "tiny"
    assert (data.n_users, data.n_items) == (3, 4)
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (7, 3, 2)
    np.testing.assert_array_equal(data.train.row(0), [2, 0, 1])  # file order kept
    dense = data.train.to_dense()
    np.testing.assert_array_equal(dense, [[1, 1, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1]])
    np.testing.assert_array_equal(data.test.to_dense(), [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]])
    assert data.item_emb.dtype == np.float32 and data.item_emb.shape == (4, 2)
    s = data.summary()
    assert s["users"] == 3 and s["train"] == 7 and s["density"] == pytest.approx(7 / 12)
    assert "tiny" in repr(data) and "train=7" in repr(data)


def test_missing_file(tmp_path):
    d = write_diffrec(tmp_path / "d")
    (d / "valid_list.npy").unlink()
    with pytest.raises(DataError, match=r"valid_list\.npy.*not found.*train_list\.npy"):
        load_diffrec_npy(d)
    with pytest.raises(DataError, match=r"nope.*not found"):
        load_diffrec_npy(tmp_path / "nope")


def test_truncated_npy(tmp_path):
    d = write_diffrec(tmp_path / "d")
    raw = (d / "train_list.npy").read_bytes()
    (d / "train_list.npy").write_bytes(raw[:-20])
    with pytest.raises(DataError, match=r"train_list\.npy.*(corrupt|truncated)"):
        load_diffrec_npy(d)


def test_not_npy(tmp_path):
    d = write_diffrec(tmp_path / "d")
    (d / "test_list.npy").write_text("0,1\n1,2\n")
    with pytest.raises(DataError, match=r"test_list\.npy.*not a valid \.npy"):
        load_diffrec_npy(d)


def test_pickled_object_array(tmp_path):
    d = write_diffrec(tmp_path / "d")
    obj = np.empty((2, 2), dtype=object)
    obj[:] = [[0, 1], [1, 2]]
    np.save(d / "valid_list.npy", obj, allow_pickle=True)
    with pytest.raises(DataError, match=r"valid_list\.npy.*refusing to load pickled data"):
        load_diffrec_npy(d)


def test_raw_pickle_file(tmp_path):
    d = write_diffrec(tmp_path / "d")
    (d / "train_list.npy").write_bytes(pickle.dumps(TRAIN))
    with pytest.raises(DataError, match=r"train_list\.npy.*not a valid \.npy"):
        load_diffrec_npy(d)


def test_wrong_shape(tmp_path):
    d = write_diffrec(tmp_path / "d", valid=np.array([0, 1, 2]))
    with pytest.raises(DataError, match=r"valid_list\.npy.*wrong shape"):
        load_diffrec_npy(d)
    d = write_diffrec(tmp_path / "e", test=np.zeros((2, 3), np.int64))
    with pytest.raises(DataError, match=r"test_list\.npy.*wrong shape \(2, 3\)"):
        load_diffrec_npy(d)


def test_float_dtype_refused(tmp_path):
    d = write_diffrec(tmp_path / "d", train=TRAIN.astype(np.float64))
    with pytest.raises(DataError, match=r"train_list\.npy.*float dtype float64"):
        load_diffrec_npy(d)


def test_negative_id(tmp_path):
    test = TEST.copy()
    test[1, 1] = -1
    d = write_diffrec(tmp_path / "d", test=test)
    with pytest.raises(DataError, match=r"test_list\.npy.*negative id.*row 1"):
        load_diffrec_npy(d)


def test_out_of_range_valid_id(tmp_path):
    valid = VALID.copy()
    valid[2, 1] = 4  # n_items from train is 4
    d = write_diffrec(tmp_path / "d", valid=valid)
    with pytest.raises(DataError, match=r"valid_list\.npy.*item id.*out of range.*train_list"):
        load_diffrec_npy(d)
    valid = VALID.copy()
    valid[0, 0] = 7
    d = write_diffrec(tmp_path / "e", valid=valid)
    with pytest.raises(DataError, match=r"valid_list\.npy.*user id.*out of range"):
        load_diffrec_npy(d)


def test_empty_test_split(tmp_path):
    d = write_diffrec(tmp_path / "d", test=np.zeros((0, 2), np.int64))
    with pytest.raises(DataError, match=r"test_list\.npy.*empty split"):
        load_diffrec_npy(d)


def test_duplicate_pair(tmp_path):
    train = np.concatenate([TRAIN, [[1, 3], [2, 0]]])
    d = write_diffrec(tmp_path / "d", train=train)
    with pytest.raises(DataError, match=r"train_list\.npy: 2 duplicate.*user 1, item 3"):
        load_diffrec_npy(d)


def test_train_test_leakage(tmp_path):
    test = np.concatenate([TEST, [[0, 2]]])
    d = write_diffrec(tmp_path / "d", test=test)
    with pytest.raises(DataError, match=r"test_list\.npy: leakage.*train_list\.npy.*user 0, item 2"):
        load_diffrec_npy(d)


def test_nan_item_emb(tmp_path):
    emb = np.ones((4, 3), np.float32)
    emb[2, 1] = np.nan
    d = write_diffrec(tmp_path / "d", item_emb=emb)
    with pytest.raises(DataError, match=r"item_emb\.npy.*NaN.*row 2"):
        load_diffrec_npy(d)


def test_wrong_item_emb_shape(tmp_path):
    d = write_diffrec(tmp_path / "d", item_emb=np.ones((3, 8), np.float32))
    with pytest.raises(DataError, match=r"item_emb\.npy.*wrong shape \(3, 8\)"):
        load_diffrec_npy(d)


def test_validate_user_constructed_data():
    data = make_synthetic(40, 30, mean_items_per_user=8, seed=1)
    validate(data)
    leaky = InteractionData(
        "leaky", data.n_users, data.n_items, data.train, data.valid, data.train
    )
    with pytest.raises(DataError, match=r"'leaky' \[test\]: leakage"):
        validate(leaky)
    bad = CSR(data.test.indptr, data.test.indices.astype(np.int64), data.test.values, 30)
    with pytest.raises(DataError, match=r"\[test\]: indices must have dtype int32"):
        validate(InteractionData("x", data.n_users, 30, data.train, data.valid, bad))


# --------------------------------------------------------------------------- #
# MovieLens
# --------------------------------------------------------------------------- #

# user 10: 5 ratings, user 30: 4 ratings, user 20: 2 ratings (dropped), raw ids not contiguous.
ML_ROWS = [
    (30, 500, 4, 100),
    (10, 300, 5, 50),
    (10, 100, 3, 10),
    (20, 300, 5, 5),
    (10, 200, 1, 30),
    (30, 100, 5, 400),
    (10, 500, 4, 40),
    (30, 300, 2, 200),
    (20, 100, 4, 6),
    (10, 400, 5, 30),  # same timestamp as (10, 200): line order breaks the tie
    (30, 200, 5, 300),
]


def write_ml(path: Path, rows, sep: str) -> Path:
    path.write_text("".join(sep.join(str(x) for x in r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fname,sep", [("u.data", "\t"), ("ratings.dat", "::")])
def test_movielens_remap_and_temporal_split(tmp_path, fname, sep):
    data = load_movielens(write_ml(tmp_path / fname, ML_ROWS, sep))
    assert data.name == tmp_path.name
    # users 10, 30 kept (user 20 has 2 ratings); items 100..500 -> 0..4 (all still rated).
    assert (data.n_users, data.n_items) == (2, 5)
    # user 10 (id 0), chronological: 100@10, 200@30, 400@30, 500@40, 300@50 -> 3/1/1
    np.testing.assert_array_equal(data.train.row(0), [0, 1, 3])
    np.testing.assert_array_equal(data.valid.row(0), [4])
    np.testing.assert_array_equal(data.test.row(0), [2])  # the latest one
    # user 30 (id 1): 500@100, 300@200, 200@300, 100@400 -> 2/1/1
    np.testing.assert_array_equal(data.train.row(1), [4, 2])
    np.testing.assert_array_equal(data.valid.row(1), [1])
    np.testing.assert_array_equal(data.test.row(1), [0])


def test_movielens_min_rating(tmp_path):
    data = load_movielens(write_ml(tmp_path / "u.data", ML_ROWS, "\t"), min_rating=4)
    # >= 4: user 10 has 300, 500, 400 (3 -> kept), user 30 has 500, 100, 200, user 20 two.
    assert (data.n_users, data.n_items) == (2, 5)
    assert data.train.nnz + data.valid.nnz + data.test.nnz == 6
    # user 30 (id 1): 500@100, 200@300, 100@400 -> items 4 / 1 / 0
    np.testing.assert_array_equal(data.train.row(1), [4])
    np.testing.assert_array_equal(data.test.row(1), [0])
    with pytest.raises(DataError, match=r"u\.data.*no user has >= 3"):
        load_movielens(tmp_path / "u.data", min_rating=5)


def test_movielens_detects_format_by_content(tmp_path):
    data = load_movielens(write_ml(tmp_path / "my_ratings.txt", ML_ROWS, "::"))
    assert data.n_users == 2


def test_movielens_malformed_line(tmp_path):
    path = write_ml(tmp_path / "u.data", ML_ROWS, "\t")
    lines = path.read_text().splitlines()
    lines[3] = "20\t300\t5"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"u\.data: line 4: wrong number of columns"):
        load_movielens(path)
    lines[3] = "20\tabc\t5\t5"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"u\.data: line 4: non-numeric"):
        load_movielens(path)
    lines[3] = "20\t300\tnan\t5"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"u\.data: line 4: non-finite rating"):
        load_movielens(path)


def test_movielens_empty_missing_duplicate(tmp_path):
    (tmp_path / "u.data").write_text("\n\n")
    with pytest.raises(DataError, match=r"u\.data: empty file"):
        load_movielens(tmp_path / "u.data")
    with pytest.raises(DataError, match=r"ratings\.dat: file not found"):
        load_movielens(tmp_path / "ratings.dat")
    write_ml(tmp_path / "ratings.dat", ML_ROWS + [(30, 100, 1, 999)], "::")
    with pytest.raises(DataError, match=r"ratings\.dat: 1 duplicate.*lines 6, 12"):
        load_movielens(tmp_path / "ratings.dat")


# --------------------------------------------------------------------------- #
# Synthetic
# --------------------------------------------------------------------------- #


def test_synthetic_deterministic_and_clean():
    a = make_synthetic(200, 100, mean_items_per_user=15, seed=3)
    b = make_synthetic(200, 100, mean_items_per_user=15, seed=3)
    c = make_synthetic(200, 100, mean_items_per_user=15, seed=4)
    for s in ("train", "valid", "test"):
        for f in ("indptr", "indices", "values"):
            np.testing.assert_array_equal(getattr(a.split(s), f), getattr(b.split(s), f))
    np.testing.assert_array_equal(a.item_emb, b.item_emb)
    assert not np.array_equal(a.train.to_dense(), c.train.to_dense())
    for s in ("train", "valid", "test"):
        assert a.split(s).row_lengths().min() >= 1
    total = a.train.row_lengths() + a.valid.row_lengths() + a.test.row_lengths()
    assert total.min() >= 5 and total.max() <= 50
    assert a.item_emb.shape == (100, 8) and a.item_emb.dtype == np.float32
    validate(a)  # no duplicates, no leakage (make_synthetic validates too)
    dense = a.train.to_dense() + a.valid.to_dense() + a.test.to_dense()
    assert dense.max() == 1.0


def test_synthetic_is_learnable():
    data = make_synthetic(300, 200, seed=0)
    x = data.train.to_dense()
    pop = np.broadcast_to(x.sum(0), x.shape)
    co = x.T @ x
    deg = np.sqrt(np.diag(co))
    np.fill_diagonal(co, 0.0)
    co = co / np.maximum(np.outer(deg, deg), 1.0)
    r_pop = recall_at_k(pop, data)
    r_co = recall_at_k(x @ co, data)
    assert r_co > 1.5 * r_pop, (r_co, r_pop)


# --------------------------------------------------------------------------- #
# Real data
# --------------------------------------------------------------------------- #


@pytest.mark.realdata
def test_real_ml1m_clean():
    if not (ML1M_CLEAN / "train_list.npy").is_file():
        pytest.skip(f"real data not found at {ML1M_CLEAN}")
    data = load_diffrec_npy(ML1M_CLEAN)
    assert data.name == "ml-1m_clean"
    assert (data.n_users, data.n_items) == (5949, 2810)
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (403277, 110722, 57532)
    assert data.item_emb.shape == (2810, 64)
    raw = np.load(ML1M_CLEAN / "train_list.npy")  # sorted by user: row order == file order
    np.testing.assert_array_equal(data.train.indices, raw[:, 1])
    for s in ("train", "valid", "test"):
        assert data.split(s).row_lengths().min() >= 1


@pytest.mark.realdata
def test_real_ml100k():
    if not ML100K.is_file():
        pytest.skip(f"real data not found at {ML100K}")
    raw = np.loadtxt(ML100K, dtype=np.int64)
    assert raw.shape == (100000, 4) and len(np.unique(raw[:, 0])) == 943
    data = load_movielens(ML100K)
    assert (data.n_users, data.n_items) == (943, 1682)
    assert data.train.nnz + data.valid.nnz + data.test.nnz == 100000
    data4 = load_movielens(ML100K, min_rating=4)
    kept = raw[raw[:, 2] >= 4]
    users, counts = np.unique(kept[:, 0], return_counts=True)
    n_kept = counts[counts >= 3].sum()
    assert data4.n_users == (counts >= 3).sum()
    assert data4.train.nnz + data4.valid.nnz + data4.test.nnz == n_kept
