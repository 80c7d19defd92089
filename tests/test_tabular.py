"""Tests of diffrec_jax.data.tabular: reading CSV/Parquet, preparation, splits, round trips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffrec_jax.data import DataError, load_diffrec_npy, load_movielens, split_counts
from diffrec_jax.data.sequences import load_diffurec_npz
from diffrec_jax.data import tabular

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens" / "ml-100k" / "u.data"

# Four users; "u4" has too few rows; item "z" is seen once. Rows deliberately out of time order.
CSV = """user,item,rating,ts
u1,a,5,10
u1,b,4,30
u1,c,2,20
u1,d,5,40
u2,a,4,5
u2,c,5,1
u2,d,3,9
u2,b,5,7
u3,b,5,100
u3,a,4,300
u3,z,5,200
u3,d,4,400
u4,a,5,1
"""


# No time column (file order is time order); "e" only occurs as u3's last item.
LOO_CSV = "u,i\nu1,a\nu2,d\nu1,b\nu2,c\nu3,b\nu1,c\nu2,a\nu3,a\nu1,d\nu2,b\nu3,e\n"


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def rows(data, split):
    """{user: [items in row order]} of one split."""
    csr = data.split(split)
    return {u: csr.row(u).tolist() for u in range(data.n_users) if len(csr.row(u))}


def test_read_table_types_and_lines(tmp_path):
    p = write(tmp_path, "id;item;when\n\n7;x1;2024-01-02\n12;x2;2024-01-01T10:00:00\n")
    t = tabular.read_table(p, user_col="id", item_col="item", time_col="when", sep=";")
    assert t.users.dtype == np.int64 and t.users.tolist() == [7, 12]  # canonical integers
    assert t.items.dtype.kind == "U" and t.items.tolist() == ["x1", "x2"]
    assert t.timestamps[1] < t.timestamps[0]  # ISO date-times, microseconds
    assert t.rows.tolist() == [3, 4] and t.row_label == "line"  # blank line 2 skipped
    # leading zeros keep ids textual, so "007" and "7" stay distinct
    t2 = tabular.read_table(write(tmp_path, "u,i\n007,1\n7,2\n"), user_col=0, item_col=1)
    assert t2.users.tolist() == ["007", "7"] and t2.items.dtype == np.int64


def test_temporal_split_matches_movielens_loader_rule(tmp_path):
    p = write(tmp_path, CSV)
    data, maps = tabular.load_table(
        p, user_col="user", item_col="item", rating_col="rating", time_col="ts",
        min_rating=4, return_maps=True, cold_items="keep",
    )
    # min_rating drops (u1,c) and (u2,d); u4 has one row -> dropped (users need 3).
    assert maps.users.tolist() == ["u1", "u2", "u3"]
    assert maps.items.tolist() == ["a", "b", "c", "d", "z"]
    a, b, c, d, z = range(5)
    # chronological rows; n=3 -> 1/1/1, n=4 -> 3/1/... clipped so every split gets one
    assert rows(data, "train") == {0: [a], 1: [c], 2: [b, z]}
    assert rows(data, "valid") == {0: [b], 1: [a], 2: [a]}
    assert rows(data, "test") == {0: [d], 1: [b], 2: [d]}
    n_tr, n_va, n_te = split_counts(np.array([3, 3, 4]))
    assert n_tr.tolist() == [1, 1, 2] and n_va.tolist() == [1, 1, 1]
    assert maps.user_index(["u3"]).tolist() == [2] and maps.raw_items([z]).tolist() == ["z"]
    with pytest.raises(KeyError, match="u4"):
        maps.user_index("u4")


def test_leave_one_out_file_order_and_cold_items(tmp_path):
    # no time column: file order is the time order. "e" only occurs as a test item (cold).
    p = write(tmp_path, LOO_CSV)
    data, maps = tabular.load_table(p, user_col="u", item_col="i", split="leave_one_out",
                                    return_maps=True)
    assert maps.items.tolist() == ["a", "b", "c", "d"]  # "e" dropped, ids re-mapped
    assert rows(data, "train") == {0: [0, 1], 1: [3, 2], 2: [1]}
    assert rows(data, "valid") == {0: [2], 1: [0], 2: [0]}
    assert rows(data, "test") == {0: [3], 1: [1]}
    kept = tabular.load_table(p, user_col="u", item_col="i", split="leave_one_out",
                              cold_items="keep")
    assert kept.n_items == 5 and rows(kept, "test")[2] == [4]


def test_k_core_is_iterative():
    # item 2 is rated once; dropping it leaves user 1 with one row; then item 1 falls below 2.
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    items = np.array([0, 1, 3, 1, 2, 0, 3, 1])
    keep = tabular.k_core(users, items, user_min=2, item_min=2)
    assert keep.tolist() == [True, True, True, False, False, True, True, True]
    keep = tabular.k_core(users, items, user_min=3, item_min=3)
    # users 0 and 2 keep items 0, 1, 3: item 1 now has 2 rows -> dropped -> users have 2 -> all go
    assert not keep.any()


def test_duplicates(tmp_path):
    p = write(tmp_path, "u,i,t\n1,1,5\n1,2,1\n1,1,2\n1,3,3\n1,4,4\n")
    first = tabular.load_table(p, user_col=0, item_col=1, time_col=2, split="leave_one_out",
                               duplicates="first", cold_items="keep")
    # first (1,1) at t=2: order 2 1 3 4 -> train [2, 1]
    assert first.train.row(0).tolist() == [1, 0]
    last = tabular.load_table(p, user_col=0, item_col=1, time_col=2, split="leave_one_out",
                              duplicates="last", cold_items="keep")
    assert last.test.row(0).tolist() == [0]  # (1,1) kept at t=5, the latest
    msg = r"t\.csv: 1 repeated \(user, item\) row\(s\); first: user 1, item 1 on lines 2, 4"
    with pytest.raises(DataError, match=msg):
        tabular.load_table(p, user_col=0, item_col=1, time_col=2, duplicates="error")


def test_sequences_and_diffurec_round_trip(tmp_path):
    p = write(tmp_path, CSV)
    seq, maps = tabular.to_sequences(
        p, user_col="user", item_col="item", time_col="ts", max_len=3, return_maps=True,
        save_to=tmp_path / "seq" / "dataset.npz",
    )
    assert maps.item_offset == 1 and seq.pad_id == 0 and seq.n_items == 5
    # u1 sequence: a c b d -> ids 1 3 2 4; test history [a c b] -> d
    assert seq.test.seq[0].tolist() == [1, 3, 2] and seq.test.targets[0] == 4
    assert maps.raw_items(seq.test.targets).tolist() == ["d", "d", "d"]
    back = load_diffurec_npz(tmp_path / "seq", max_len=3)
    for s in ("train", "valid", "test"):
        for f in ("seq", "lengths", "targets"):
            np.testing.assert_array_equal(getattr(seq.split(s), f), getattr(back.split(s), f))
    assert tabular.IdMaps.load(tmp_path / "seq" / "id_maps.npz").items.tolist() == maps.items.tolist()


def test_write_diffrec_npy_round_trip(tmp_path):
    p = write(tmp_path, LOO_CSV)
    data, maps = tabular.load_table(p, user_col="u", item_col="i", split="leave_one_out",
                                    return_maps=True)
    out = tabular.write_diffrec_npy(data, tmp_path / "npy", maps=maps)
    back = load_diffrec_npy(out)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(data.split(s).indptr, back.split(s).indptr)
        np.testing.assert_array_equal(data.split(s).indices, back.split(s).indices)
    cold = tabular.load_table(p, user_col="u", item_col="i", split="leave_one_out",
                              cold_items="keep")
    with pytest.raises(DataError, match="no train row"):
        tabular.write_diffrec_npy(cold, tmp_path / "npy2")


def test_from_columns_accepts_arrays():
    t = tabular.from_columns(["a", "a", "a", "b", "b", "b"], [1, 2, 3, 1, 2, 3],
                             timestamps=np.array(["2024-01-0%d" % d for d in (3, 1, 2, 1, 2, 3)],
                                                 dtype="datetime64[D]"))
    data = tabular.load_table(t, split="leave_one_out", name="arr")
    assert data.name == "arr" and data.test.row(0).tolist() == [0]  # a: 2 3 1 -> test item 1


@pytest.mark.parametrize(
    "text,kw,pattern",
    [
        ("user,item\n", {}, r"t\.csv: no data rows after the header"),
        ("", {}, r"t\.csv: empty file"),
        ("user,item\n1,2\n3\n", {}, r"t\.csv: line 3: expected 2 fields"),
        ("user,item\n1,2\n3,4,5\n", {}, r"t\.csv: line 3: expected 2 fields"),
        ("user,item\n1,\n", {}, r"t\.csv: line 2: empty item id"),
        ("user,itm\n1,2\n", {}, r"t\.csv: no column 'item' \(item_col\); the header has \['user', 'itm'\]"),
        ("user,item,r\n1,2,x\n", {"rating_col": "r"}, r"t\.csv: line 2: rating 'x' is not a number"),
        ("user,item,r\n1,2,4\n1,3,nan\n", {"rating_col": "r"}, r"t\.csv: line 3: non-finite rating"),
        ("user,item,t\n1,2,5\n1,3,yesterday\n", {"time_col": "t"}, r"t\.csv: line 3: timestamp 'yesterday'"),
        ("user,item,t\n1,2,2024-01-01\n1,3,5\n", {"time_col": "t"}, r"line 3: timestamp '5' is a number but .* mixes"),
        ('user,item\n1,"2\n', {}, r"t\.csv: line 2: malformed CSV"),
        ("user,user\n1,2\n", {}, r"repeated column name"),
        ("user,item\n1,2\n", {"min_rating": 4}, r"min_rating=4 needs a rating column"),
        ("user,item\n1,a\n1,b\n1,c\n2,a\n2,b\n2,c\n", {"split": "leave_one_out"},
         r"the valid split is empty: every valid row is of an item without train rows"),
        ("user,item\n1,2\n1,3\n2,3\n", {}, r"nothing left after filtering: no user keeps >= 3"),
    ],
)
def test_malformed_csv_raises_data_error(tmp_path, text, kw, pattern):
    p = write(tmp_path, text)
    with pytest.raises(DataError, match=pattern):
        tabular.load_table(p, user_col="user", item_col="item", **kw)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="missing.csv: file not found"):
        tabular.read_table(tmp_path / "missing.csv", user_col=0, item_col=1)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"user,item\n1,2\n1,\xff\n")
    with pytest.raises(DataError, match=r"bad\.csv: line 3: not UTF-8"):
        tabular.read_table(bad, user_col="user", item_col="item")
    p = write(tmp_path, "1,2\n")
    with pytest.raises(DataError, match="is a name but header=False"):
        tabular.read_table(p, user_col="user", item_col=1, header=False)
    with pytest.raises(DataError, match="item_col=5 is out of range"):
        tabular.read_table(p, user_col=0, item_col=5, header=False)
    with pytest.raises(ValueError, match="split must be"):
        tabular.load_table(p, user_col=0, item_col=1, header=False, split="random")


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    t = pa.table({
        "u": pa.array([1, 1, 1, 2, 2, 2], pa.int32()),
        "i": pa.array(["a", "b", "c", "a", "b", "c"]),
        "r": pa.array([5.0, 4.0, 3.0, 5.0, 5.0, 5.0]),
        "t": pa.array(np.array([3, 2, 1, 1, 2, 3], "datetime64[s]")),
    })
    pq.write_table(t, tmp_path / "x.parquet")
    data = tabular.load_table(tmp_path / "x.parquet", user_col="u", item_col="i", rating_col="r",
                              time_col="t", split="leave_one_out", cold_items="keep")
    assert data.test.row(0).tolist() == [0] and data.test.row(1).tolist() == [2]
    pq.write_table(pa.table({"u": [1, None], "i": ["a", "b"]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n\.parquet: row 1: missing user value"):
        tabular.read_table(tmp_path / "n.parquet", user_col="u", item_col="i")
    with pytest.raises(DataError, match=r"no column 'item'"):
        tabular.read_table(tmp_path / "n.parquet", user_col="u", item_col="item")
    (tmp_path / "c.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"c\.parquet: not a readable Parquet file"):
        tabular.read_table(tmp_path / "c.parquet", user_col="u", item_col="i")


@pytest.mark.skipif(not ML100K.is_file(), reason="needs ../shared/data/movielens/ml-100k")
def test_same_as_movielens_loader_on_ml100k():
    ref = load_movielens(ML100K, min_rating=4)
    data = tabular.load_table(ML100K, user_col=0, item_col=1, rating_col=2, time_col=3,
                              sep="\t", header=False, min_rating=4, cold_items="keep")
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(data.split(s).indptr, ref.split(s).indptr)
        np.testing.assert_array_equal(data.split(s).indices, ref.split(s).indices)


@pytest.mark.slow
def test_own_csv_to_pretrained_item_embeddings(tmp_path):
    """The documented flow: CSV -> DiffRec .npy folder -> experiments/pretrain_item_emb.py."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 900), rng.integers(0, 30, 900)
    p = write(tmp_path, "user,item\n" + "".join(f"u{u},i{i}\n" for u, i in zip(users, items)))
    data, maps = tabular.load_table(p, user_col="user", item_col="item", k_core=3, return_maps=True)
    ds = tabular.write_diffrec_npy(data, tmp_path / "mine", maps=maps)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "experiments" / "pretrain_item_emb.py"),
         f"--config={root / 'configs' / 'test.py'}", "--config.data.source=diffrec_npy",
         f"--config.data.dir={ds}", f"--workdir={tmp_path / 'lgcn'}", f"--out={ds / 'item_emb.npy'}",
         "--lightgcn.num_epochs=2", "--lightgcn.emb_dim=8", "--lightgcn.eval_every_epochs=1"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    back = load_diffrec_npy(ds)
    assert back.item_emb.shape == (data.n_items, 8)
