"""Tests of diffrec_jax.data.sequences: padding, splits, the two .npz loaders and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffrec_jax.data import DataError
from diffrec_jax.data.sequences import (
    leave_one_out,
    load_diffurec_npz,
    load_dreamrec_npz,
    make_synthetic_sequences,
    pad_windows,
    session_split,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
YC = SHARED / "dreamrec" / "yc" / "yc.npz"
KS = SHARED / "dreamrec" / "ks" / "ks_partial.npz"
BEAUTY = SHARED / "diffurec" / "amazon_beauty" / "dataset.npz"


# --------------------------------------------------------------------------- #
# tiny files
# --------------------------------------------------------------------------- #


def _dreamrec_arrays(I=5, S=3):
    # sessions [1, 2, 3, 4] (train) and [0, 2] (val) and [4, 1] (test)
    def rows(session):
        seq, lq, nxt = [], [], []
        for k, x in enumerate(session):
            h = session[max(0, k - S) : k]
            seq.append(h + [I] * (S - len(h)))
            lq.append(max(len(h), 1))
            nxt.append(x)
        return np.array(seq, np.int32), np.array(lq, np.int32), np.array(nxt, np.int32)

    z = {"item_num": np.int32(I), "seq_size": np.int32(S)}
    for name, sess in (("train", [1, 2, 3, 4]), ("val", [0, 2]), ("test", [4, 1])):
        z[f"{name}_seq"], z[f"{name}_len_seq"], z[f"{name}_next"] = rows(sess)
    return z


def _write(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def _diffurec_arrays():
    # users: [1,2,3] + val 4 + test 5 ; [2,5] + val 1 + test 3
    return {
        "train_items": np.array([1, 2, 3, 2, 5], np.int32),
        "train_offsets": np.array([0, 3, 5], np.int64),
        "val_item": np.array([4, 1], np.int32),
        "test_item": np.array([5, 3], np.int32),
        "num_users": np.int64(2),
        "num_items": np.int64(5),
    }


# --------------------------------------------------------------------------- #
# padding and splits
# --------------------------------------------------------------------------- #


def test_pad_windows_left_right_truncate_and_error():
    items = np.arange(1, 8)
    seq, lens = pad_windows(items, [0, 2, 3], [0, 7, 5], 3, pad_id=0, pad_side="left")
    np.testing.assert_array_equal(seq, [[0, 0, 0], [5, 6, 7], [0, 4, 5]])
    np.testing.assert_array_equal(lens, [0, 3, 2])
    seq, _ = pad_windows(items, [0, 2, 3], [0, 7, 5], 3, pad_id=9, pad_side="right")
    np.testing.assert_array_equal(seq, [[9, 9, 9], [5, 6, 7], [4, 5, 9]])
    with pytest.raises(DataError, match="more than max_len=3"):
        pad_windows(items, [0], [5], 3, pad_id=0, pad_side="left", on_long="error", where="x.npz")


def test_leave_one_out_examples():
    d = leave_one_out(np.array([1, 2, 3, 4, 5]), np.array([0, 5]), 5, max_len=3)
    np.testing.assert_array_equal(d.train.seq, [[0, 0, 1], [0, 1, 2]])
    np.testing.assert_array_equal(d.train.targets, [2, 3])
    np.testing.assert_array_equal(d.valid.seq, [[1, 2, 3]])
    np.testing.assert_array_equal(d.valid.targets, [4])
    np.testing.assert_array_equal(d.test.seq, [[2, 3, 4]])  # truncated to the last 3
    np.testing.assert_array_equal(d.test.targets, [5])
    with pytest.raises(DataError, match="needs >= 3"):
        leave_one_out(np.array([1, 2]), np.array([0, 2]), 5)


def test_session_split_every_position_with_empty_first_history():
    items = np.array([0, 1, 2, 3, 1, 2, 0, 4, 2])
    d = session_split(items, np.array([0, 3, 5, 6, 7, 9]), 5, fractions=(0.6, 0.2, 0.2), max_len=2)
    np.testing.assert_array_equal(d.train.seq[:3], [[5, 5], [0, 5], [0, 1]])
    np.testing.assert_array_equal(d.train.lengths, [0, 1, 2, 0, 1, 0])
    np.testing.assert_array_equal(d.train.targets, [0, 1, 2, 3, 1, 2])
    assert len(d.valid) == 1 and len(d.test) == 2


def test_synthetic_is_seeded_and_valid_for_both_layouts():
    a = make_synthetic_sequences(n_users=40, n_items=20, seed=3)
    b = make_synthetic_sequences(n_users=40, n_items=20, seed=3)
    np.testing.assert_array_equal(a.train.seq, b.train.seq)
    assert a.pad_id == 0 and a.pad_side == "left" and a.train.targets.min() >= 1
    s = make_synthetic_sequences(n_users=40, n_items=20, layout="sessions")
    assert s.pad_id == 20 and s.pad_side == "right" and s.train.lengths.min() == 0


# --------------------------------------------------------------------------- #
# loaders
# --------------------------------------------------------------------------- #


def test_dreamrec_tiny_roundtrip(tmp_path):
    d = load_dreamrec_npz(_write(tmp_path / "t.npz", _dreamrec_arrays()))
    assert (d.n_items, d.pad_id, d.pad_side, d.max_len) == (5, 5, "right", 3)
    np.testing.assert_array_equal(d.train.lengths, [0, 1, 2, 3])
    np.testing.assert_array_equal(d.train.seq[3], [1, 2, 3])
    d2 = load_dreamrec_npz(tmp_path / "t.npz", max_len=2, on_long="truncate")
    np.testing.assert_array_equal(d2.train.seq[3], [2, 3])
    with pytest.raises(DataError, match="more than max_len=2"):
        load_dreamrec_npz(tmp_path / "t.npz", max_len=2)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda z: z.pop("train_seq"), "'train' split is missing"),
        (lambda z: z.update(val_next=z["val_next"] + 5), "val_next has ids outside"),
        (lambda z: z.update(train_len_seq=z["train_len_seq"] + 1), "len_seq=.* does not match"),
        (lambda z: z.update(train_seq=z["train_seq"][:, ::-1].copy()), "padding before a real item"),
        (lambda z: z.update(test_seq=z["test_seq"].astype(np.float32)), "must hold integers"),
        (lambda z: z.update(test_seq=z["test_seq"][:0], test_len_seq=z["test_len_seq"][:0],
                            test_next=z["test_next"][:0]), "split is empty"),
        (lambda z: z.update(train_seq=z["train_seq"][:, :2]), r"expected train_seq \[N, 3\]"),
    ],
)
def test_dreamrec_errors_name_the_file(tmp_path, mutate, match):
    z = _dreamrec_arrays()
    mutate(z)
    path = _write(tmp_path / "bad.npz", z)
    with pytest.raises(DataError, match=match) as e:
        load_dreamrec_npz(path)
    assert "bad.npz" in str(e.value)


def test_loaders_refuse_pickled_objects_and_missing_files(tmp_path):
    z = _dreamrec_arrays()
    z["train_seq"] = np.array([list(r) for r in z["train_seq"]] + [[1]], dtype=object)
    path = _write(tmp_path / "obj.npz", z)
    with pytest.raises(DataError, match="obj.npz.*without pickle"):
        load_dreamrec_npz(path)
    with pytest.raises(DataError, match="file not found"):
        load_diffurec_npz(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="junk.npz: not a readable"):
        load_diffurec_npz(tmp_path / "junk.npz")


def test_diffurec_tiny_and_errors(tmp_path):
    d = load_diffurec_npz(_write(tmp_path / "dataset.npz", _diffurec_arrays()), max_len=3)
    np.testing.assert_array_equal(d.train.seq, [[0, 0, 1], [0, 1, 2], [0, 0, 2]])
    np.testing.assert_array_equal(d.train.targets, [2, 3, 5])
    np.testing.assert_array_equal(d.valid.seq, [[1, 2, 3], [0, 2, 5]])
    np.testing.assert_array_equal(d.test.seq, [[2, 3, 4], [2, 5, 1]])
    np.testing.assert_array_equal(d.test.targets, [5, 3])
    with pytest.raises(DataError, match="more than max_len=3"):
        load_diffurec_npz(tmp_path / "dataset.npz", max_len=3, on_long="error")
    bad = {
        "num_items": (lambda z: z.update(val_item=np.array([4, 0], np.int32)), "val_item has ids outside"),
        "offsets": (lambda z: z.update(train_offsets=np.array([0, 3, 4])), "offsets must start at 0 and end"),
        "empty": (lambda z: z.update(train_offsets=np.array([0, 5, 5])), "user 1 has an empty training"),
        "users": (lambda z: z.update(num_users=np.int64(3)), "num_users=3"),
        "missing": (lambda z: z.pop("test_item"), r"missing arrays \['test_item'\]"),
    }
    for label, (mutate, match) in bad.items():
        z = _diffurec_arrays()
        mutate(z)
        path = _write(tmp_path / f"bad_{label}.npz", z)
        with pytest.raises(DataError, match=match) as e:
            load_diffurec_npz(path)
        assert f"bad_{label}.npz" in str(e.value)


@pytest.mark.skipif(not YC.exists(), reason="shared YooChoose copy not present")
def test_real_yooChoose_counts():
    d = load_dreamrec_npz(YC.parent)
    assert (len(d.train), len(d.valid), len(d.test), d.n_items) == (427129, 57062, 55245, 9514)
    assert int((d.train.lengths == 0).sum()) == 102774  # one empty history per session
    with pytest.raises(DataError, match="ks_partial.npz.*'train' split is missing"):
        load_dreamrec_npz(KS)


@pytest.mark.skipif(not BEAUTY.exists(), reason="shared DiffuRec Beauty copy not present")
def test_real_beauty_counts():
    d = load_diffurec_npz(BEAUTY)
    assert (len(d.train), len(d.valid), len(d.test), d.n_items) == (131413, 22363, 22363, 12101)
    assert d.valid.lengths.min() >= 1 and d.test.seq[:, -1].min() >= 1


def test_train_items_and_cold_target_fraction():
    from diffrec_jax.data.sequences import SeqSplit, SequenceData

    pad = 5  # items 0..4, pad id 5 (right padding)
    tr = SeqSplit(seq=np.array([[0, 1, pad], [1, pad, pad]], np.int32), lengths=np.array([2, 1], np.int32),
                  targets=np.array([2, 0], np.int32))
    va = SeqSplit(seq=np.array([[0, pad, pad]] * 4, np.int32), lengths=np.ones(4, np.int32),
                  targets=np.array([3, 1, 4, 3], np.int32))
    te = SeqSplit(seq=np.array([[2, pad, pad]], np.int32), lengths=np.ones(1, np.int32),
                  targets=np.array([2], np.int32))
    d = SequenceData("toy", tr, va, te, n_items=5, pad_id=pad, pad_side="right", max_len=3)
    np.testing.assert_array_equal(d.train_items(), [True, True, True, False, False, False])
    assert d.cold_target_fraction() == {"train": 0.0, "valid": 0.75, "test": 0.0}


def test_diffurec_folder_with_only_the_reference_pickle(tmp_path):
    import os
    import pickle

    ds = {"train": {0: [1, 2, 3], 1: [2, 5]}, "val": {0: [4], 1: [1]}, "test": {0: [5], 1: [3]},
          "umap": {10: 0, 20: 1}, "smap": {100 + k: k for k in range(1, 6)}}
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "dataset.pkl").write_bytes(pickle.dumps(ds))
    d = load_diffurec_npz(tmp_path / "cat", max_len=3)
    ref = load_diffurec_npz(_write(tmp_path / "dataset.npz", _diffurec_arrays()), max_len=3)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(d.split(s).seq, ref.split(s).seq)
        np.testing.assert_array_equal(d.split(s).targets, ref.split(s).targets)
    bad = dict(ds, train={0: [1, 9], 1: [2]})  # item 9 outside the 5-item table
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.pkl").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"bad/dataset\.pkl"):
        load_diffurec_npz(tmp_path / "bad")

    class _Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "dataset.pkl").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(DataError, match=r"evil/dataset\.pkl"):
        load_diffurec_npz(tmp_path / "evil")
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "dataset.pkl").write_bytes(pickle.dumps(ds)[:20])
    with pytest.raises(DataError, match=r"trunc/dataset\.pkl"):
        load_diffurec_npz(tmp_path / "trunc")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no dataset.npz or dataset.pkl"):
        load_diffurec_npz(tmp_path / "none")
