"""Tests of the KG data layer (diffrec_jax.data.kg): triples loading and validation, DiffKG's
preprocessing (de-duplication, inverse relations, first relation per pair, counts), per-batch
adjacency rows and neighbour lists, the normalised user-item graph and the KGCN Last.FM loader.
"""

from pathlib import Path

import numpy as np
import pytest

from diffrec_jax.data import CSR, DataError
from diffrec_jax.data import kg as K
from diffrec_jax.data import load as load_data  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LASTFM = SHARED / "lastfm_kgcn"
DIFFKG = SHARED / "diffkg"


def _write(tmp_path, text, name="kg.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_preprocessing_dedup_inverse_first_relation(tmp_path):
    p = _write(tmp_path, "0 0 1\n0 0 1\n0 1 1\n\n1 0 2\r\n2 1 0\n")
    tr = K.load_kg_triples(p)
    assert tr.shape == (5, 3)
    g = K.build_kg(tr, name="toy")
    assert (g.n_entities, g.n_relations, g.n_triples_raw, g.n_triples) == (3, 4, 5, 4)
    h, t, r = g.edges()
    got = {(int(a), int(b)): int(c) for a, b, c in zip(h, t, r)}
    # canonical (sorted): (0,0,1) (0,1,1) (1,0,2) (2,1,0); inverses (r + 2): (1,2,0) (1,3,0) (2,2,1) (0,3,2)
    assert got == {(0, 1): 0, (1, 2): 0, (2, 0): 1, (1, 0): 2, (2, 1): 2, (0, 2): 3}
    np.testing.assert_array_equal(g.relation_of(np.array([0, 1, 0]), np.array([1, 0, 0])), [0, 2, -1])
    A = g.adjacency_rows(np.arange(3))
    np.testing.assert_array_equal(A, A.T)  # inverses make it symmetric
    assert g.stats()["edges_with_inverses"] == 6


@pytest.mark.parametrize("text, match", [
    ("0 1\n", "line 1: expected 3 fields"),
    ("0 1 2\n3 x 4\n", "line 2: non-integer id 'x'"),
    ("0 1 2\n0 -1 2\n", "line 2: ids must be integers in"),
    ("0 1 2\n0 1 2147483648\n", "line 2: ids must be"),
    ("\n\n", "no triples found"),
    ("0 1 2 3\n", "line 1: expected 3 fields"),
])
def test_triples_validation_names_file_and_line(tmp_path, text, match):
    p = _write(tmp_path, text, "bad_kg.txt")
    with pytest.raises(DataError, match=match) as e:
        K.load_kg_triples(p)
    assert "bad_kg.txt" in str(e.value)


def test_missing_file_and_bad_arrays(tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        K.load_kg_triples(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="non-empty"):
        K.build_kg(np.zeros((0, 3), np.int64))
    with pytest.raises(DataError, match="n_entities"):
        K.build_kg(np.array([[0, 0, 5]]), n_entities=3)


def _random_kg(rng, E=40, N=150, R=5):
    tr = np.stack([rng.integers(0, E, N), rng.integers(0, R, N), rng.integers(0, E, N)], 1)
    return tr, K.build_kg(tr)


def test_adjacency_rows_and_neighbor_lists_match_dense_reference(np_rng):
    tr, g = _random_kg(np_rng)
    E = g.n_entities
    dense = np.zeros((E, E), np.float32)
    dense[tr[:, 0], tr[:, 2]] = 1
    dense[tr[:, 2], tr[:, 0]] = 1
    rows = np.array([3, 0, 3, E - 1, 17])
    np.testing.assert_array_equal(g.adjacency_rows(rows), dense[rows])
    assert g.n_edges == int(dense.sum())
    tails, rels, mask = g.neighbor_lists(rows)
    for b, e in enumerate(rows):
        nb = tails[b][mask[b]]
        np.testing.assert_array_equal(np.sort(nb), np.flatnonzero(dense[e]))
        np.testing.assert_array_equal(rels[b][mask[b]], g.relation_of(np.full(len(nb), e), nb))
    t2, _, m2 = g.neighbor_lists(rows, max_degree=2)
    assert t2.shape == (5, 2) and np.all(m2.sum(1) <= 2)


def test_sample_edges_caps_per_head(np_rng):
    _, g = _random_kg(np_rng, E=20, N=300)
    h, t, r = g.sample_edges(3, np.random.default_rng(0))
    assert np.bincount(h, minlength=g.n_entities).max() <= 3
    np.testing.assert_array_equal(np.bincount(h, minlength=g.n_entities), np.minimum(g.degrees(), 3))
    np.testing.assert_array_equal(g.relation_of(h, t), r)  # a subset of the edges
    h2, t2, _ = g.sample_edges(3, np.random.default_rng(0))
    np.testing.assert_array_equal(t, t2)
    assert len(g.sample_edges(-1, np.random.default_rng(0))[0]) == g.n_edges


def test_user_item_edges_equal_dense_normalisation(np_rng):
    U, I = 6, 5
    X = (np_rng.random((U, I)) < 0.4).astype(np.float32)
    X[0, 0] = 1
    u, i = np.nonzero(X)
    csr = CSR.from_pairs(u, i, U, I)
    users, items, w, (su, si) = K.user_item_edges(csr)
    A = np.zeros((U + I, U + I))
    A[:U, U:] = X
    A[U:, :U] = X.T
    A += np.eye(U + I)
    d = A.sum(1)
    Ah = A / np.sqrt(d[:, None] * d[None, :])
    np.testing.assert_allclose(w, Ah[users, U + items], rtol=1e-6)
    np.testing.assert_allclose(su, np.diag(Ah)[:U], rtol=1e-6)
    np.testing.assert_allclose(si, np.diag(Ah)[U:], rtol=1e-6)


def _fake_lastfm(tmp_path):
    d = tmp_path / "lfm"
    d.mkdir()
    (d / "item_index2entity_id.txt").write_text("10\t0\r\n11\t1\r\n12\t2\r\n")
    rows = ["userID\tartistID\tweight"] + [f"{u}\t{a}\t5" for u in (1, 2) for a in (10, 11, 12)]
    rows += ["3\t10\t1", "3\t99\t1"]  # user 3: one usable pair -> dropped
    (d / "user_artists.dat").write_text("\n".join(rows) + "\n")
    (d / "kg.txt").write_text("0\tmusic.genre\t3\r\n1\tmusic.genre\t3\r\n2\tfilm.x\t4\r\n")
    return d


def test_lastfm_loader_on_a_fake_folder(tmp_path):
    d = _fake_lastfm(tmp_path)
    data, g = K.load_lastfm_kgcn(d, seed=0)
    assert (data.n_users, data.n_items) == (2, 3)
    assert data.train.nnz + data.valid.nnz + data.test.nnz == 6
    assert g.n_entities == 5 and g.n_relations == 4
    import ml_collections

    via_config = load_data(ml_collections.ConfigDict(
        {"source": "lastfm_kgcn", "dir": str(d), "split": (0.7, 0.1, 0.2), "split_seed": 0}))
    assert via_config.train.nnz == data.train.nnz and via_config.n_items == 3
    (d / "kg.txt").write_text("0\tmusic.genre\n")
    with pytest.raises(DataError, match="kg.txt: line 1: expected 3"):
        K.load_lastfm_kgcn(d)
    (d / "item_index2entity_id.txt").write_text("10\t0\n11\t0\n")
    with pytest.raises(DataError, match="one-to-one"):
        K.load_lastfm_kgcn(d)


@pytest.mark.realdata
@pytest.mark.skipif(not LASTFM.is_dir(), reason="shared/data/lastfm_kgcn absent")
def test_lastfm_kgcn_real():
    data, g = K.load_lastfm_kgcn(LASTFM, seed=0)
    assert (data.n_users, data.n_items) == (1858, 3846)
    total = data.train.nnz + data.valid.nnz + data.test.nnz
    assert total == 21150  # 21,173 usable pairs minus the 23 of the 14 users with < 3 pairs
    assert g.stats()["triples_unique"] == 15518 and g.n_entities == 9366 and g.n_base_relations == 60
    data2, _ = K.load_lastfm_kgcn(LASTFM, seed=0)
    np.testing.assert_array_equal(data.test.indices, data2.test.indices)
    data3, _ = K.load_lastfm_kgcn(LASTFM, seed=1)
    assert not np.array_equal(data.test.indices, data3.test.indices)
    assert np.all(data.test.row_lengths() >= 1) and np.all(data.valid.row_lengths() >= 1)


@pytest.mark.realdata
@pytest.mark.parametrize("name, stats", [
    ("alibaba", dict(triples_raw=279155, triples_unique=279155, relations=51, relation_num=102,
                     entity_n=89196, edges_with_inverses=558310)),
    ("mind", dict(triples_raw=148568, triples_unique=148529, relations=512, relation_num=1024,
                  entity_n=49545, edges_with_inverses=293856)),
])
def test_diffkg_kg_counts_match_readme(name, stats):
    p = DIFFKG / name / "kg.txt"
    if not p.is_file():
        pytest.skip(f"{p} absent")
    g = K.build_kg(K.load_kg_triples(p), name=name)
    got = g.stats()
    assert {k: got[k] for k in stats} == stats
    rows = np.array([0, 5, g.n_entities - 1])
    A = g.adjacency_rows(rows)  # one batch of dense rows, never the E x E matrix
    assert A.shape == (3, g.n_entities) and np.array_equal(A.sum(1), g.degrees()[rows])
