"""Property-based tests of the data loaders and config checks against bad input.

Every malformed input must raise :class:`DataError` whose message names the offending file, and
never another exception type; valid input must come back exactly as written (no silently wrong
data). Config values that make no sense must be refused before any JAX work, naming the field.

Hypothesis example counts are kept small (the whole file runs in seconds); they are summarised in
``RELIABILITY.md``.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import test as test_config  # noqa: E402
from diffrec_jax import models  # noqa: E402
from diffrec_jax.data import DataError, load_diffrec_npy, load_movielens  # noqa: E402
from diffrec_jax import training  # noqa: E402

N_EXAMPLES = 25
SETTINGS = settings(
    max_examples=N_EXAMPLES,
    deadline=None,
    derandomize=True,  # reproducible in CI; the counts in RELIABILITY.md are these examples
    suppress_health_check=[HealthCheck.too_slow],
)

# 3 users, 4 items; the same tiny dataset as tests/test_data.py.
TRAIN = np.array([[0, 2], [0, 0], [1, 3], [1, 1], [2, 0], [2, 3], [0, 1]], dtype=np.int64)
VALID = np.array([[0, 3], [1, 0], [2, 1]], dtype=np.int64)
TEST = np.array([[1, 2], [2, 2]], dtype=np.int64)
SPLITS = {"train": TRAIN, "valid": VALID, "test": TEST}
FILES = {s: f"{s}_list.npy" for s in SPLITS}


def npy_bytes(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    """The bytes ``np.save`` writes for ``arr``."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def write_dir(d: Path, files: dict[str, bytes | np.ndarray]) -> Path:
    """Writes a DiffRec directory: the valid tiny dataset, with ``files`` replacing/adding files."""
    content = {FILES[s]: a for s, a in SPLITS.items()}
    content.update(files)
    for name, c in content.items():
        (d / name).write_bytes(c if isinstance(c, bytes) else npy_bytes(c))
    return d


def expect_data_error(fn, fname: str) -> DataError:
    """Runs ``fn``; passes only if it raises DataError naming ``fname``."""
    try:
        out = fn()
    except DataError as e:
        assert fname in str(e), f"DataError does not name {fname}: {e}"
        return e
    except Exception as e:  # noqa: BLE001 - any other type is the failure under test
        pytest.fail(f"{type(e).__name__} instead of DataError (file {fname}): {e}")
    pytest.fail(f"bad {fname} accepted silently: {out!r}")


def load_with(files: dict[str, bytes | np.ndarray]):
    """Loads a temporary DiffRec directory holding ``files`` over the valid dataset."""
    with tempfile.TemporaryDirectory() as d:
        return load_diffrec_npy(write_dir(Path(d), files))


splits = st.sampled_from(sorted(SPLITS))


# --------------------------------------------------------------------------------------------
# DiffRec .npy files
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(
    name=splits,
    raw=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: b"\x93NUMPY" + b),  # past the magic check
        st.binary(max_size=200).map(lambda b: b"\x93NUMPY\x01\x00" + b),  # past the version
    ),
)
def test_garbage_bytes_refused(name, raw):
    expect_data_error(lambda: load_with({FILES[name]: raw}), FILES[name])


@SETTINGS
@given(name=splits, data=st.data())
def test_truncated_npy_refused(name, data):
    raw = npy_bytes(SPLITS[name])
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    expect_data_error(lambda: load_with({FILES[name]: raw[:cut]}), FILES[name])


@SETTINGS
@given(name=splits, extra=st.binary(min_size=1, max_size=64))
def test_trailing_bytes_refused(name, extra):
    raw = npy_bytes(SPLITS[name]) + extra
    expect_data_error(lambda: load_with({FILES[name]: raw}), FILES[name])


@SETTINGS
@given(
    name=splits,
    shape=st.sampled_from([(1_000_000_000_000, 2), (2**40, 2), (50_000_000, 2)]),
)
def test_header_declaring_huge_shape_refused_without_allocating(name, shape):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<i8", "fortran_order": False, "shape": shape}
    )
    raw = buf.getvalue() + npy_bytes(SPLITS[name])[128:]
    expect_data_error(lambda: load_with({FILES[name]: raw}), FILES[name])


BAD_DTYPES = ["float16", "float32", "float64", "bool", "complex64", "U3", "S2", "m8[s]", "M8[D]"]


@SETTINGS
@given(name=splits, dtype=st.sampled_from(BAD_DTYPES + ["object"]))
def test_wrong_dtype_refused(name, dtype):
    arr = SPLITS[name].astype(dtype)
    raw = npy_bytes(arr, allow_pickle=dtype == "object")
    expect_data_error(lambda: load_with({FILES[name]: raw}), FILES[name])


@SETTINGS
@given(
    name=st.sampled_from(["valid", "test"]),
    col=st.integers(0, 1),
    value=st.integers(4, 255),
    dtype=st.sampled_from(["uint8", "int16", "uint32", "int64"]),
)
def test_out_of_range_ids_refused(name, col, value, dtype):
    # train holds users 0..2 and items 0..3, which fixes n_users=3 and n_items=4
    arr = SPLITS[name].copy()
    arr[0, col] = value
    expect_data_error(lambda: load_with({FILES[name]: arr.astype(dtype)}), FILES[name])


@SETTINGS
@given(name=splits, value=st.integers(2**31, 2**63 - 1), dtype=st.sampled_from(["int64", "uint64"]))
def test_huge_ids_refused(name, value, dtype):
    arr = SPLITS[name].astype(dtype)
    arr[-1, 1] = value
    expect_data_error(lambda: load_with({FILES[name]: arr}), FILES[name])


@SETTINGS
@given(
    name=splits,
    shape=st.sampled_from([(7,), (7, 3), (7, 2, 1), (7, 1), (2, 7), (0,), (), (7, 0), (1, 1, 2)]),
)
def test_wrong_shape_refused(name, shape):
    arr = np.zeros(shape, np.int64)
    expect_data_error(lambda: load_with({FILES[name]: arr}), FILES[name])


@SETTINGS
@given(name=splits, data=st.data(), dtype=st.sampled_from(["int8", "int32", "int64"]))
def test_negative_ids_refused(name, data, dtype):
    arr = SPLITS[name].astype(dtype)
    r = data.draw(st.integers(0, len(arr) - 1), label="row")
    c = data.draw(st.integers(0, 1), label="col")
    arr[r, c] = data.draw(st.integers(-128, -1), label="value")
    expect_data_error(lambda: load_with({FILES[name]: arr}), FILES[name])


@SETTINGS
@given(name=splits, dtype=st.sampled_from(["int64", "int32", "uint8"]))
def test_empty_split_refused(name, dtype):
    expect_data_error(lambda: load_with({FILES[name]: np.zeros((0, 2), dtype)}), FILES[name])


@SETTINGS
@given(name=splits, data=st.data())
def test_duplicate_interactions_refused(name, data):
    arr = SPLITS[name]
    r = data.draw(st.integers(0, len(arr) - 1), label="row")
    pos = data.draw(st.integers(0, len(arr)), label="insert_at")
    dup = np.insert(arr, pos, arr[r], axis=0)
    expect_data_error(lambda: load_with({FILES[name]: dup}), FILES[name])


@SETTINGS
@given(data=st.data())
def test_leakage_between_splits_refused(data):
    a, b = data.draw(
        st.sampled_from([("train", "valid"), ("train", "test"), ("valid", "test")]), label="pair"
    )
    r = data.draw(st.integers(0, len(SPLITS[a]) - 1), label="row")
    leaky = np.concatenate([SPLITS[b], SPLITS[a][r : r + 1]])
    expect_data_error(lambda: load_with({FILES[b]: leaky}), FILES[b])


@SETTINGS
@given(
    data=st.data(),
    bad=st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300]),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
)
def test_non_finite_item_emb_refused(data, bad, dtype):
    emb = np.ones((4, 3), np.float64)
    emb[data.draw(st.integers(0, 3), label="row"), data.draw(st.integers(0, 2), label="col")] = bad
    with np.errstate(over="ignore"):
        emb = emb.astype(dtype)
    expect_data_error(lambda: load_with({"item_emb.npy": emb}), "item_emb.npy")


@SETTINGS
@given(
    emb=st.sampled_from(
        [
            np.ones((3, 2), np.float32),  # wrong number of rows
            np.ones((5, 2), np.float32),
            np.ones((4,), np.float32),
            np.ones((4, 0), np.float32),
            np.ones((4, 2, 1), np.float32),
            np.ones((4, 2), np.int64),  # not floating point
            np.ones((4, 2), bool),
            np.ones((4, 2), np.complex64),
        ]
    )
)
def test_malformed_item_emb_refused(emb):
    expect_data_error(lambda: load_with({"item_emb.npy": emb}), "item_emb.npy")


@st.composite
def valid_pair_lists(draw):
    """A random consistent DiffRec dataset: no duplicates, no leakage, no empty split, and train
    holds the largest user and item id (which define n_users and n_items), rows in random order."""
    n_users = draw(st.integers(1, 6), label="n_users")
    n_items = draw(st.integers(2, 8), label="n_items")
    cells = [(u, i) for u in range(n_users) for i in range(n_items)]
    labels = draw(st.lists(st.sampled_from([None, 0, 1, 2]), min_size=len(cells),
                           max_size=len(cells)), label="split_of_each_cell")
    labels[-1] = 0  # (n_users - 1, n_items - 1) in train
    assume(1 in labels and 2 in labels)
    out = []
    for k in range(3):
        rows = [c for c, lab in zip(cells, labels) if lab == k]
        out.append(np.array(draw(st.permutations(rows)), np.int64).reshape(-1, 2))
    return tuple(out)


@SETTINGS
@given(pairs=valid_pair_lists())
def test_valid_data_round_trips_exactly(pairs):
    """Control: consistent files load, and each user's rows come back in file order."""
    tr, va, te = pairs
    files = {FILES["train"]: tr, FILES["valid"]: va, FILES["test"]: te}
    data = load_with(files)
    assert (data.n_users, data.n_items) == (tr[:, 0].max() + 1, tr[:, 1].max() + 1)
    for name, arr in zip(("train", "valid", "test"), (tr, va, te)):
        csr = data.split(name)
        for u in range(data.n_users):
            np.testing.assert_array_equal(csr.row(u), arr[arr[:, 0] == u, 1])


# --------------------------------------------------------------------------------------------
# MovieLens text files
# --------------------------------------------------------------------------------------------

ML_ROWS = [(u, i, 1 + (u * 7 + i) % 5, 1000 + 10 * u + i) for u in range(1, 5) for i in range(1, 6)]
LETTERS = st.text(alphabet="abcxyzNOPE-_.,;!?é ", min_size=1, max_size=6).filter(
    lambda t: t.strip() and not _parses_as_number(t)
)


def _parses_as_number(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


@st.composite
def bad_ml_lines(draw, sep: str):
    """One malformed ratings line: wrong column count, non-numeric field, non-finite rating,
    or an id/timestamp outside int64."""
    kind = draw(st.sampled_from(["columns", "non_numeric", "non_finite", "overflow"]))
    fields = ["7", "3", "4", "881250949"]
    if kind == "columns":
        n = draw(st.sampled_from([1, 2, 3, 5, 6]))
        fields = [str(draw(st.integers(0, 99))) for _ in range(n)]
    elif kind == "non_numeric":
        fields[draw(st.integers(0, 3))] = draw(LETTERS)
    elif kind == "non_finite":
        fields[2] = draw(st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999"]))
    else:
        fields[draw(st.sampled_from([0, 1, 3]))] = str(draw(st.integers(2**63, 2**70)))
    return sep.join(fields)


@SETTINGS
@given(data=st.data(), fmt=st.sampled_from([("u.data", "\t"), ("ratings.dat", "::")]))
def test_malformed_movielens_line_refused(data, fmt):
    fname, sep = fmt
    lines = [sep.join(map(str, r)) for r in ML_ROWS]
    pos = data.draw(st.integers(0, len(lines)), label="line_index")
    lines.insert(pos, data.draw(bad_ml_lines(sep), label="bad_line"))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / fname
        p.write_text("\n".join(lines) + "\n")
        err = expect_data_error(lambda: load_movielens(p), fname)
    assert f"line {pos + 1}" in str(err), err


@SETTINGS
@given(
    content=st.one_of(
        st.sampled_from(["", "\n", "\n\n  \n", "\t\t\n"]),
        st.binary(max_size=200).map(lambda b: b"\xff\xfe" + b),  # not UTF-8
        st.text(alphabet="\t\n :0123456789abc", max_size=200),
    ),
    fname=st.sampled_from(["u.data", "ratings.dat"]),
)
def test_garbage_movielens_file_refused_or_consistent(content, fname):
    """Random small files: DataError naming the file, or (rarely) a valid, consistent dataset."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / fname
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        try:
            data = load_movielens(p)
        except DataError as e:
            assert fname in str(e), e
            return
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{type(e).__name__} instead of DataError: {e}")
    total = data.train.nnz + data.valid.nnz + data.test.nnz
    assert total >= 3 * data.n_users  # every kept user has >= 3 rows, >= 1 per split


# --------------------------------------------------------------------------------------------
# Config checks (cases not in tests/test_train.py)
# --------------------------------------------------------------------------------------------


def _cfg(overrides: dict):
    c = test_config.get_config()
    for path, value in overrides.items():
        node = c
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


BAD_CONFIGS = [
    ({"model.dropout": -0.1}, "config.model.dropout"),
    ({"model.dropout": 1.0}, "config.model.dropout"),
    ({"eval.batch_size": 0}, "config.eval.batch_size"),
    ({"eval.topk": ()}, "config.eval.topk"),
    ({"eval.topk": (0, 10)}, "config.eval.topk"),
    ({"eval.select_metric": "foo@10"}, "config.eval.select_metric"),
    ({"train.num_epochs": 0}, "config.train.num_epochs"),
    ({"train.eval_every_epochs": 0}, "config.train.eval_every_epochs"),
    ({"diffusion.noise_scale": -0.1}, "config.diffusion.noise_scale"),
    ({"diffusion.mean_type": "score"}, "config.diffusion.mean_type"),
    ({"diffusion.timestep_sampling": "random"}, "config.diffusion.timestep_sampling"),
    ({"sampling.noise_steps": -1}, "config.sampling.noise_steps"),
    ({"data.source": "csv"}, "config.data.source"),
    ({"data.time_weights": (0.1, 0.5, 0.9)}, "config.data.time_weights"),
    ({"diffusion.noise_scale": 200.0}, "config.diffusion.noise_scale"),
    ({"data.time_weights": (0.5, 0.1)}, "config.data.time_weights"),
    ({"diffusion.schedule": "quadratic"}, "config.diffusion.schedule"),
    ({"diffusion.noise_min": -0.001}, "config.diffusion.noise_min"),
    ({"eval.average": "median"}, "config.eval.average"),
    ({"train.patience_epochs": 0}, "config.train.patience_epochs"),
    ({"diffusion.history_size": 0}, "config.diffusion.history_size"),
    ({"diffusion.uniform_prob": 1.5}, "config.diffusion.uniform_prob"),
]


@pytest.mark.parametrize("overrides, field", BAD_CONFIGS)
def test_bad_config_refused_before_jax_work(tmp_path, monkeypatch, overrides, field):
    def no_model(*args, **kwargs):
        raise AssertionError("the config passed the checks: a model was built (JAX work)")

    monkeypatch.setattr(models, "get_model", no_model)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        training.train_and_evaluate(_cfg(overrides), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
