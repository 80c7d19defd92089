"""Tests of diffrec_jax.data.load: one entry point for every ``config.data.source``.

``load(config.data)`` must give the same dataset as calling the source's loader directly with the
fields the trainers passed before it (the former ``train.load_data``, ``seq_train.load_seq_data``
and ``rerank_train.make_world``), including the defaults of absent fields.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections
import numpy as np
import pytest

import diffrec_jax.data as D
from diffrec_jax.data import kg as K
from diffrec_jax.data import rerank_synthetic as RS
from diffrec_jax.data import sequences as S
from diffrec_jax.data import sources as SRC
from diffrec_jax.data import tabular
from diffrec_jax.data.temporal import with_time_weights

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

ALL_SOURCES = ["synthetic", "diffrec_npy", "movielens", "lastfm_kgcn", "synthetic_seq",
               "dreamrec_npz", "diffurec_npz", "rerank_synthetic"]

SYN = {"n_users": 40, "n_items": 30, "mean_items_per_user": 8, "seed": 3}
SYN_SEQ = {"n_users": 30, "n_items": 20, "mean_len": 6.0, "seed": 1}
RERANK = {"n_users": 20, "n_items": 60, "n_cats": 4, "dim": 4, "history_len": 5, "n": 4,
          "n_train": 30, "n_valid": 10, "n_test": 10, "seed": 2}


def cfg(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(kw)


def assert_same(a, b, where="data"):
    """Deep equality of datasets: dataclasses, named tuples, dicts, arrays (values and dtypes)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, f"{where}: dtype {a.dtype} != {b.dtype}"
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{getattr(a, '_fields', range(len(a)))[i]}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# --------------------------------------------------------------------------- #
# The registry and the entry point
# --------------------------------------------------------------------------- #


def test_sources_lists_every_source():
    assert SRC.sources() == ALL_SOURCES
    assert list(SRC.SOURCES) == ALL_SOURCES
    assert D.load is SRC.load


def test_unknown_source_names_the_field_and_lists_every_source():
    with pytest.raises(ValueError, match=r"^config\.data\.source: unknown source 'nope'") as e:
        D.load(cfg(source="nope"))
    msg = str(e.value)
    for name in ALL_SOURCES:
        assert name in msg
    assert msg.endswith("diffurec_npz or rerank_synthetic")


# --------------------------------------------------------------------------- #
# Synthetic sources: load == the direct loader
# --------------------------------------------------------------------------- #


def test_synthetic():
    assert_same(D.load(cfg(source="synthetic", synthetic=SYN)), D.make_synthetic(**SYN))


def test_synthetic_time_weights():
    got = D.load(cfg(source="synthetic", synthetic=SYN, time_weights=(0.2, 1.0)))
    assert_same(got, with_time_weights(D.make_synthetic(**SYN), 0.2, 1.0))
    assert not np.array_equal(got.train.values, D.make_synthetic(**SYN).train.values)
    # empty / None: unweighted
    for tw in ((), None):
        assert_same(D.load(cfg(source="synthetic", synthetic=SYN, time_weights=tw)),
                    D.make_synthetic(**SYN))


@pytest.mark.parametrize("tw", [(0.5, 0.1), (0.0, 1.0), (0.1, 0.5, 1.0)])
def test_bad_time_weights(tw):
    with pytest.raises(ValueError, match=r"config\.data\.time_weights must be \(w_min, w_max\)"):
        D.load(cfg(source="synthetic", synthetic=SYN, time_weights=tw))


def test_synthetic_seq_defaults_and_max_len():
    # max_len absent or None: 10, as the sequential trainer always did
    want = S.make_synthetic_sequences(**SYN_SEQ, max_len=10)
    assert_same(D.load(cfg(source="synthetic_seq", synthetic_seq=SYN_SEQ)), want)
    assert_same(D.load(cfg(source="synthetic_seq", synthetic_seq=SYN_SEQ, max_len=None)), want)
    assert_same(D.load(cfg(source="synthetic_seq", synthetic_seq=SYN_SEQ, max_len=7)),
                S.make_synthetic_sequences(**SYN_SEQ, max_len=7))
    # time weights are an interaction-data setting: sequence sources ignore them (as today)
    assert_same(D.load(cfg(source="synthetic_seq", synthetic_seq=SYN_SEQ,
                           time_weights=(0.1, 1.0))), want)


def test_rerank_synthetic():
    assert_same(D.load(cfg(source="rerank_synthetic", **RERANK)), RS.make_rerank_world(**RERANK))
    # None fields fall back to make_rerank_world's defaults, as the rerank trainer always did
    assert_same(D.load(cfg(source="rerank_synthetic", **RERANK, swaps_mean=None, m=None)),
                RS.make_rerank_world(**RERANK))


# --------------------------------------------------------------------------- #
# File sources on files written here
# --------------------------------------------------------------------------- #


def test_diffrec_npy_on_written_files(tmp_path):
    d = tabular.write_diffrec_npy(D.make_synthetic(**SYN), tmp_path / "syn")
    assert_same(D.load(cfg(source="diffrec_npy", dir=str(d))), D.load_diffrec_npy(d))


def _write_u_data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    lines = [f"{u}\t{i}\t{int(rng.integers(1, 6))}\t{1000 + 7 * k}"
             for k, (u, i) in enumerate((u, i) for u in range(1, 9) for i in range(1, 13) if (u + i) % 3)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_movielens_on_a_written_file(tmp_path):
    f = _write_u_data(tmp_path / "ml-tiny" / "u.data")
    split = (0.6, 0.2, 0.2)
    want = D.load_movielens(f, min_rating=3, split=split)
    # ``path`` wins over ``dir``; without ``path``, ``dir`` is read
    assert_same(D.load(cfg(source="movielens", path=str(f), dir="/nonexistent", min_rating=3,
                           split=split)), want)
    assert_same(D.load(cfg(source="movielens", dir=str(f.parent), min_rating=3, split=split)), want)
    assert_same(D.load(cfg(source="movielens", dir=str(f.parent), split=split)),
                D.load_movielens(f, split=split))


def test_lastfm_kgcn_on_a_fake_folder(tmp_path):
    d = tmp_path / "lastfm"
    d.mkdir()
    (d / "item_index2entity_id.txt").write_text("10\t0\n11\t1\n12\t2\n13\t3\n")
    rows = ["userID\tartistID\tweight"] + [f"{u}\t{a}\t5" for u in (1, 2, 3) for a in (10, 11, 12, 13)]
    (d / "user_artists.dat").write_text("\n".join(rows) + "\n")
    (d / "kg.txt").write_text("0\tr.a\t4\n1\tr.a\t4\n2\tr.b\t5\n3\tr.b\t5\n")
    # defaults: split (0.7, 0.1, 0.2), split_seed 0; the KG is not returned
    assert_same(D.load(cfg(source="lastfm_kgcn", dir=str(d))), K.load_lastfm_kgcn(d)[0])
    kw = {"split": (0.5, 0.25, 0.25), "seed": 4}
    assert_same(D.load(cfg(source="lastfm_kgcn", dir=str(d), split=kw["split"], split_seed=4)),
                K.load_lastfm_kgcn(d, **kw)[0])


def test_diffurec_npz_on_a_written_file(tmp_path):
    users = np.repeat(np.arange(12), 6)
    items = (users * 5 + np.tile(np.arange(6), 12)) % 17
    table = tabular.from_columns(users, items, timestamps=np.arange(users.size))
    tabular.to_sequences(table, max_len=4, save_to=tmp_path / "ds" / "dataset.npz")
    # max_len absent: 50; on_long absent: "truncate"
    assert_same(D.load(cfg(source="diffurec_npz", dir=str(tmp_path / "ds"))),
                S.load_diffurec_npz(tmp_path / "ds", max_len=50, on_long="truncate"))
    assert_same(D.load(cfg(source="diffurec_npz", dir=str(tmp_path / "ds"), max_len=3)),
                S.load_diffurec_npz(tmp_path / "ds", max_len=3, on_long="truncate"))
    with pytest.raises(D.DataError):  # on_long="error" reaches the loader: histories of 4 > 3
        D.load(cfg(source="diffurec_npz", dir=str(tmp_path / "ds"), max_len=3, on_long="error"))


# --------------------------------------------------------------------------- #
# Real data (../shared/data beside the project)
# --------------------------------------------------------------------------- #

REAL = [
    ("diffrec_npy", SHARED / "diffrec" / "ml-1m_clean", {},
     lambda d: D.load_diffrec_npy(d)),
    ("movielens", SHARED / "movielens" / "ml-100k", {"split": (0.7, 0.2, 0.1), "min_rating": 4},
     lambda d: D.load_movielens(d, min_rating=4, split=(0.7, 0.2, 0.1))),
    ("lastfm_kgcn", SHARED / "lastfm_kgcn", {},
     lambda d: K.load_lastfm_kgcn(d, split=(0.7, 0.1, 0.2), seed=0)[0]),
    ("dreamrec_npz", SHARED / "dreamrec" / "yc", {},
     lambda d: S.load_dreamrec_npz(d, max_len=None, on_long="error")),
    ("diffurec_npz", SHARED / "diffurec" / "amazon_beauty", {},
     lambda d: S.load_diffurec_npz(d, max_len=50, on_long="truncate")),
]


@pytest.mark.realdata
@pytest.mark.parametrize("source,path,fields,direct", REAL, ids=[r[0] for r in REAL])
def test_real_source(source, path, fields, direct):
    if not path.is_dir():
        pytest.skip(f"needs ../shared/data/{path.relative_to(SHARED)} beside the project "
                    f"(absent: {path})")
    assert_same(D.load(cfg(source=source, dir=str(path), **fields)), direct(path))
