"""Tests of the TFDS MovieLens adapter, offline with ``tfds.testing.mock_data`` (no TensorFlow)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from diffrec_jax.data import DataError, tabular  # noqa: E402
from diffrec_jax.data import tfds as dtfds  # noqa: E402

# (user_id, movie_id, rating, timestamp) as TFDS gives them: ids are strings.
ROWS = [
    ("1", "10", 5.0, 3), ("1", "20", 4.0, 1), ("1", "30", 2.0, 2), ("1", "40", 5.0, 4),
    ("2", "10", 4.0, 9), ("2", "30", 5.0, 5), ("2", "20", 5.0, 7), ("2", "40", 4.0, 8),
    ("3", "20", 5.0, 1), ("3", "10", 4.0, 2), ("3", "40", 5.0, 3),
    ("4", "10", 5.0, 1),
]


def _examples(self, split, decoders=None, **kwargs):
    """Stands in for ``builder.as_data_source``: examples shaped like the real features."""
    del self, split, decoders, kwargs
    return [
        {"user_id": u, "movie_id": m.encode(), "user_rating": np.float32(r),
         "timestamp": np.int64(t), "movie_title": b"x"}
        for u, m, r, t in ROWS
    ]


def test_random_mock_examples_have_the_expected_columns():
    with tfds.testing.mock_data(num_examples=25):
        table = dtfds.movielens_table("movielens/1m-ratings")
        assert len(table) == 25 and table.source == "tfds:movielens/1m-ratings[train]"
        assert table.ratings.dtype == np.float64 and table.timestamps.dtype == np.int64
        # random user ids are (nearly) all distinct: nothing survives the 3-per-user rule
        with pytest.raises(DataError, match="nothing left after filtering"):
            dtfds.from_tfds_movielens("movielens/1m-ratings")


def test_interactions_match_the_table_loader(tmp_path):
    with tfds.testing.mock_data(as_data_source_fn=_examples):
        data, maps = dtfds.from_tfds_movielens(
            "movielens/100k-ratings", min_rating=4, split_mode="temporal", cold_items="keep",
            return_maps=True, cache_dir=tmp_path,
        )
    assert data.name == "ml-100k" and maps.users.tolist() == [1, 2, 3]  # user 4: one row
    # the same rows through the CSV path give the same dataset
    csv = tmp_path / "r.csv"
    csv.write_text("u,m,r,t\n" + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in ROWS))
    ref = tabular.load_table(csv, user_col="u", item_col="m", rating_col="r", time_col="t",
                             min_rating=4, cold_items="keep")
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(data.split(s).indptr, ref.split(s).indptr)
        np.testing.assert_array_equal(data.split(s).indices, ref.split(s).indices)
    # user 1 (ratings >= 4): 20@1, 10@3, 40@4 -> one per split, chronological
    m = maps.item_index
    assert [data.train.row(0).tolist(), data.valid.row(0).tolist(), data.test.row(0).tolist()] == [
        m(["20"]).tolist(), m(["10"]).tolist(), m(["40"]).tolist()]
    # second call is served from the .npz cache, outside any mock
    again = dtfds.from_tfds_movielens("movielens/100k-ratings", min_rating=4, cold_items="keep",
                                      cache_dir=tmp_path, download=False)
    np.testing.assert_array_equal(again.train.indices, data.train.indices)


def test_sequences(tmp_path):
    with tfds.testing.mock_data(as_data_source_fn=_examples):
        seq, maps = dtfds.from_tfds_movielens_sequences(max_len=3, return_maps=True,
                                                        manual_dir=tmp_path)
    # user 2 in time order: 30, 20, 40, 10 -> test history [30, 20, 40], target 10
    assert maps.raw_items(seq.test.seq[1]).tolist() == [30, 20, 40]
    assert maps.raw_items([seq.test.targets[1]]).tolist() == [10]
    assert len(seq.valid) == 3 and seq.pad_id == 0


def test_bad_names():
    with pytest.raises(ValueError, match=r"movielens/\*-ratings"):
        dtfds.from_tfds_movielens("movielens/100k-movies")


def test_package_imports_without_tfds():
    code = (
        "import sys; sys.modules['tensorflow_datasets'] = None\n"
        "import diffrec_jax, diffrec_jax.data, diffrec_jax.data.tfds as t\n"
        "try:\n    t.movielens_table()\nexcept ImportError as e:\n    print('ImportError', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'pip install "diffrec_jax[tfds]"' in out.stdout
