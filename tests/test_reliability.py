"""Reliability: SIGKILL-and-resume, corrupted checkpoints, NaN losses, hostile pickles.

1. The launcher is killed with SIGKILL at seeded points (timed, while a checkpoint is being
   written, right after a step directory is finalized) and restarted until it finishes; its
   ``results.json`` must equal an uninterrupted run's, float for float.
2. A corrupted newest checkpoint is detected with a warning and training resumes from the step
   before, ending with the uninterrupted results.
3. A NaN loss stops training with FloatingPointError naming epoch, batch and the last good
   checkpoint; nothing is checkpointed after the fault.
4. The restricted unpickler refuses code-executing pickles (and the code does not run), loads
   plain data, converts the DiffuRec pickle to the shipped ``.npz``, and refuses pandas pickles.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import test as test_config  # noqa: E402
from diffrec_jax.checkpointing import CheckpointError, Checkpointer  # noqa: E402
from diffrec_jax.data import DataError  # noqa: E402
from diffrec_jax.data.safe_pickle import (  # noqa: E402
    UnsafePickleError,
    convert_diffurec_pickle,
    safe_load,
    safe_loads,
)
from diffrec_jax import training  # noqa: E402
from diffrec_jax.training import interactions  # noqa: E402

SHARED = ROOT.parent / "shared"
DIFFUREC = SHARED / "data" / "diffurec"
DREAMREC = SHARED / "data" / "dreamrec"
TMP_MARK = ".orbax-checkpoint-tmp"

# Orbax's asyncio helpers print "Event loop is closed" after a restore that failed; harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _cfg(**overrides):
    c = test_config.get_config()
    for path, value in overrides.items():
        node = c
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def _comparable(results: dict) -> dict:
    """``results`` without wall-clock entries (any key containing 'time')."""
    if isinstance(results, dict):
        return {k: _comparable(v) for k, v in results.items() if "time" not in k}
    return results


def _steps(d: Path) -> list[int]:
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _train_epochs(workdir: Path) -> list[int]:
    recs = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in recs if "train/loss" in r]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """An uninterrupted in-process run (checkpoints at epochs 4 and 6) and its results."""
    d = tmp_path_factory.mktemp("finished")
    res = training.train_and_evaluate(_cfg(), str(d))
    assert _steps(d / "checkpoints") == [4, 6]
    return d, res


# ----------------------------------------------------------------------------------------------
# 1. SIGKILL and resume
# ----------------------------------------------------------------------------------------------


def _launch(workdir: Path, log_path: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "main.py"),
        f"--config={ROOT / 'configs' / 'test.py'}",
        f"--workdir={workdir}",
    ]
    log = open(log_path, "wb")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()  # the child holds its own descriptor


def _ckpt_entries(workdir: Path) -> set[tuple[str, int]]:
    """``(path, inode)`` of everything in ``checkpoints/`` and ``best/`` (the inode tells a
    leftover temporary directory from a new one of the same name)."""
    out = set()
    for sub in ("checkpoints", "best"):
        try:
            out |= {(f"{sub}/{e.name}", e.inode()) for e in os.scandir(workdir / sub)}
        except FileNotFoundError:
            pass
    return out


def _watch_and_kill(proc: subprocess.Popen, workdir: Path, plan: tuple, timeout: float) -> dict:
    """Polls the checkpoint directories every ~1 ms and SIGKILLs ``proc`` when ``plan`` fires.

    Plans: ``("time", s)`` after ``s`` seconds; ``("tmp", prefix)`` as soon as a new Orbax
    temporary directory whose path starts with ``prefix`` exists (a save in progress);
    ``("step",)`` right after a new finalized step directory appears in ``checkpoints/``.
    Entries present at launch (e.g. a temporary directory left by the previous kill) do not count.
    Returns what happened.
    """
    t0 = time.monotonic()
    before = _ckpt_entries(workdir)
    while proc.poll() is None:
        now = time.monotonic() - t0
        new = {name for name, _ in _ckpt_entries(workdir) - before}
        writing = [e for e in new if TMP_MARK in e]
        fire = (
            (plan[0] == "time" and now >= plan[1])
            or (plan[0] == "tmp" and any(e.startswith(plan[1]) for e in writing))
            or (
                plan[0] == "step"
                and any(e.startswith("checkpoints/") and TMP_MARK not in e for e in new)
            )
        )
        if fire or now > timeout:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return {
                "plan": plan,
                "killed_at_s": round(now, 2),
                "timeout": not fire,
                "mid_write": bool(writing),
                "entries": sorted(name for name, _ in _ckpt_entries(workdir)),
            }
        time.sleep(0.001)
    return {"plan": plan, "finished": True, "rc": proc.returncode}


_RNG = random.Random(20261126)
KILL_PLANS = {
    # default run: one kill while checkpoints/4 is being written (step 2 exists to resume from)
    "mid_write": [("tmp", "checkpoints/4")],
    # slow: seeded times, any save in progress, right after a step is finalized
    "seeded": [
        ("time", round(_RNG.uniform(0.5, 4.0), 2)),
        ("tmp", ""),
        ("step",),
        ("tmp", ""),
        ("time", round(_RNG.uniform(0.5, 4.0), 2)),
    ],
}


@pytest.mark.parametrize(
    "plan_name", ["mid_write", pytest.param("seeded", marks=pytest.mark.slow)]
)
@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(finished_run, tmp_path, plan_name):
    """Kills at planned points; the reference is the uninterrupted run of ``finished_run``."""
    reference = json.loads((finished_run[0] / "results.json").read_text())
    plans = KILL_PLANS[plan_name]
    work = tmp_path / "killed"
    events = []
    for attempt in range(len(plans) + 2):
        log_path = tmp_path / f"attempt{attempt}.log"
        proc = _launch(work, log_path)
        if attempt < len(plans):
            ev = _watch_and_kill(proc, work, plans[attempt], timeout=120)
        else:
            ev = {"plan": ("none",), "finished": True, "rc": proc.wait(timeout=300)}
        events.append(ev)
        if ev.get("finished"):
            assert ev["rc"] == 0, f"{events}\n" + log_path.read_text()[-3000:]
            break
    else:
        pytest.fail(f"never finished: {events}")
    kills = [e for e in events if not e.get("finished")]
    print("\nSIGKILL events:", *kills, sep="\n  ")
    assert len(kills) >= len(plans) - 1 and not any(e["timeout"] for e in kills), events
    assert any(e["mid_write"] for e in kills), f"no kill landed during a checkpoint write: {events}"

    resumed = json.loads((work / "results.json").read_text())
    assert _comparable(resumed) == _comparable(reference)  # bitwise: same floats
    assert _train_epochs(work) == list(range(1, 7))  # each epoch recorded once
    leftovers = [e for e, _ in _ckpt_entries(work) if TMP_MARK in e]
    assert not leftovers, leftovers  # half-written saves were cleaned up


# ----------------------------------------------------------------------------------------------
# 2. Corrupted newest checkpoint
# ----------------------------------------------------------------------------------------------


def _data_files(step_dir: Path) -> list[Path]:
    files = sorted((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
    return [f for f in files if f.is_file()]


def _truncate_array_data(step_dir: Path) -> None:
    for f in _data_files(step_dir):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_byte_in_array_data(step_dir: Path) -> None:
    f = _data_files(step_dir)[-1]
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    f.write_bytes(bytes(raw))


def _garbage_meta_json(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text('{"epoch": 6, "best_epo')


def _delete_state_metadata(step_dir: Path) -> None:
    (step_dir / "state" / "_METADATA").unlink()


CORRUPTIONS = {
    "truncate_array_data": _truncate_array_data,
    "flip_byte_in_array_data": _flip_byte_in_array_data,
    "garbage_meta_json": _garbage_meta_json,
    "delete_state_metadata": _delete_state_metadata,
}


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_and_matches(finished_run, tmp_path, caplog):
    """End to end: the newest step's array data is truncated; the run redoes epochs 5-6."""
    base, full = finished_run
    work = tmp_path / "run"
    shutil.copytree(base, work)
    _truncate_array_data(work / "checkpoints" / "6")
    caplog.set_level(logging.INFO, logger="diffrec_jax")
    res = training.train_and_evaluate(_cfg(), str(work))

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step 6" in m and "cannot be restored" in m for m in warnings), warnings
    assert any("resumed from epoch 4" in r.getMessage() for r in caplog.records)
    assert _comparable(res) == _comparable(full)
    assert _train_epochs(work) == list(range(1, 7))
    assert _steps(work / "checkpoints") == [4, 6]  # step 6 written again, cleanly
    assert [p.name.split(".")[0] for p in (work / "checkpoints.corrupt").iterdir()] == ["6"]
    ck = Checkpointer(str(work / "checkpoints"))
    try:
        assert ck.restore_untyped(6)[1]["epoch"] == 6
    finally:
        ck.close()


def _tiny_state(x: float):
    # 64x64 random float32 (16 KiB, incompressible): TensorStore writes it as a data file
    w = jax.random.normal(jax.random.key(int(x)), (64, 64), jnp.float32) + x
    return {"w": w, "n": jnp.asarray(int(x), jnp.int32)}


def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _delete_data_dir(step_dir: Path) -> None:
    for f in _data_files(step_dir):
        f.unlink()


def _empty_step_dir(step_dir: Path) -> None:
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def _delete_meta(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").unlink()


def _garbage_array_data(step_dir: Path) -> None:
    for f in _data_files(step_dir):
        f.write_bytes(os.urandom(f.stat().st_size))


CORRUPTIONS.update(
    delete_array_data=_delete_data_dir,
    empty_step_dir=_empty_step_dir,
    delete_meta_json=_delete_meta,
    garbage_array_data=_garbage_array_data,
)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_checkpointer_skips_each_corruption_kind(tmp_path, caplog, kind):
    abstract = jax.eval_shape(lambda: _tiny_state(0.0))
    ck = Checkpointer(str(tmp_path / "ck"), max_to_keep=3)
    for s in (1, 2):
        ck.save(s, _tiny_state(s), {"epoch": s})
    ck.close()
    assert _data_files(tmp_path / "ck" / "2"), "expected array data files"
    CORRUPTIONS[kind](tmp_path / "ck" / "2")
    ck = Checkpointer(str(tmp_path / "ck"), max_to_keep=3)
    with caplog.at_level(logging.WARNING, logger="diffrec_jax"):
        step, state, meta = ck.restore_latest(abstract)
    assert step == 1 and meta == {"epoch": 1} and _same(state, _tiny_state(1.0))
    warned = [r.getMessage() for r in caplog.records if "step 2" in r.getMessage()]
    assert warned, caplog.records
    if kind == "flip_byte_in_array_data":  # decompresses fine; only the digest notices
        assert "digest" in warned[0], warned
    assert _steps(tmp_path / "ck") == [1]  # step 2 moved aside ...
    ck.save(2, _tiny_state(2.0), {"epoch": 2})  # ... so that training can write it again
    ck.wait()
    assert ck.restore_latest(abstract)[0] == 2
    ck.close()


def test_checkpointer_fallback_all_corrupt_and_resave(tmp_path, caplog):
    abstract = jax.eval_shape(lambda: _tiny_state(0.0))
    ck = Checkpointer(str(tmp_path / "ck"), max_to_keep=3)
    assert ck.restore_latest(abstract) is None  # no checkpoint: fresh start
    for s in (1, 2, 3):
        ck.save(s, _tiny_state(s), {"epoch": s})
    ck.wait()
    # a step that already exists is replaced (an interrupted run redoing the epoch)
    ck.save(2, _tiny_state(20.0), {"epoch": 2, "again": True})
    ck.wait()
    step, state, meta = ck.restore_latest(abstract)
    assert step == 3 and meta == {"epoch": 3} and _same(state, _tiny_state(3.0))
    assert ck.restore(2, abstract)[1] == {"epoch": 2, "again": True}
    ck.close()

    for s in (1, 2, 3):
        _garbage_meta_json(tmp_path / "ck" / str(s))
    ck = Checkpointer(str(tmp_path / "ck"), max_to_keep=3)
    with caplog.at_level(logging.WARNING, logger="diffrec_jax"):
        with pytest.raises(CheckpointError, match=r"step 3.*step 2.*step 1"):
            ck.restore_latest(abstract)
    ck.close()
    assert sum("cannot be restored" in r.getMessage() for r in caplog.records) == 3
    assert _steps(tmp_path / "ck") == [1, 2, 3]  # nothing moved when nothing restores


# ----------------------------------------------------------------------------------------------
# 3. NaN loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_batch_and_last_checkpoint(tmp_path, monkeypatch):
    """The loss of global batch 9 (epoch 3, batch 1: 4 batches per epoch) is replaced by NaN."""
    real = interactions.make_train_step
    calls = {"n": 0}

    def make_train_step(*args, **kwargs):
        step = real(*args, **kwargs)

        def faulty(*a, **kw):
            state, loss = step(*a, **kw)
            calls["n"] += 1
            if calls["n"] == 10:
                loss = jnp.full_like(loss, jnp.nan)
            return state, loss

        return faulty

    monkeypatch.setattr(interactions, "make_train_step", make_train_step)
    with pytest.raises(FloatingPointError) as err:
        training.train_and_evaluate(_cfg(), str(tmp_path))
    msg = str(err.value)
    assert "epoch 3," in msg and "batch 1," in msg, msg
    assert "last good checkpoint: epoch 2" in msg and str(tmp_path / "checkpoints") in msg, msg
    assert _steps(tmp_path / "checkpoints") == [2]
    assert _steps(tmp_path / "best") == [2]
    assert max(json.loads(ln)["epoch"] for ln in (tmp_path / "metrics.jsonl").open()) == 2
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_diverging_lr_stops_before_any_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch \d+.*last good checkpoint: epoch 0"):
        training.train_and_evaluate(_cfg(**{"optim.lr": 1e30}), str(tmp_path))
    assert _steps(tmp_path / "checkpoints") == [] and _steps(tmp_path / "best") == []


# ----------------------------------------------------------------------------------------------
# 4. Restricted unpickler
# ----------------------------------------------------------------------------------------------


class _Reduce:
    """Pickles as ``func(*args)``: what a hostile file does."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile_pickles(target: Path) -> dict[str, bytes]:
    cmd = f"echo pwned > {target}"
    code = f"open({str(target)!r}, 'w').write('pwned')"
    return {
        "os.system": pickle.dumps(_Reduce(os.system, (cmd,))),
        "builtins.eval": pickle.dumps(_Reduce(builtins.eval, (code,))),
        "builtins.exec": pickle.dumps(_Reduce(builtins.exec, (code,))),
        # getattr(os, "system") would be the next step; refuse at the first global
        "builtins.getattr": pickle.dumps(_Reduce(getattr, (0, "__class__"))),
        "subprocess.Popen": pickle.dumps(_Reduce(subprocess.Popen, (["sh", "-c", cmd],))),
        "builtins.__import__": pickle.dumps(_Reduce(builtins.__import__, ("os",))),
        "builtins.open": pickle.dumps(_Reduce(open, (str(target), "w"))),
        # protocol 0, hand-written: GLOBAL opcode + REDUCE
        "builtins.eval (protocol 0)": b"cbuiltins\neval\n(V" + code.encode() + b"\ntR.",
        # a dotted name through an allowed module must not reach an attribute of an allowed type
        "builtins.dict.fromkeys": b"\x80\x04\x8c\x08builtins\x8c\rdict.fromkeys\x93)R.",
    }


@pytest.mark.parametrize("name", sorted(_hostile_pickles(Path("x"))))
def test_unpickler_refuses_code_execution(tmp_path, name):
    target = tmp_path / "pwned.txt"
    raw = _hostile_pickles(target)[name]
    path = tmp_path / "evil.pkl"
    path.write_bytes(raw)
    global_name = name.split(" ")[0].split(".")[-1]  # os.system pickles as posix.system
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refusing to unpickle global") as e:
        safe_load(path)
    assert global_name in str(e.value)
    with pytest.raises(UnsafePickleError):
        safe_loads(raw)
    assert not target.exists(), "the pickle's code ran"
    assert isinstance(e.value, DataError)


def test_unpickler_loads_plain_data(tmp_path):
    obj = {
        "train": {0: [1, 2, 3], 1: [4]},
        "t": (1, 2.5, "x", b"y", None, True),
        "s": {1, 2},
        "f": frozenset({"a"}),
        "c": complex(1, 2),
        "ba": bytearray(b"z"),
        "nan": float("nan"),
        "big": 2**80,
    }
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"ok{proto}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=proto))
        got = safe_load(path)
        assert np.isnan(got.pop("nan"))
        assert got == {k: v for k, v in obj.items() if k != "nan"}


@pytest.mark.parametrize("raw", [b"", b"\x80\x04\x95", pickle.dumps({"a": [1, 2, 3]})[:-3], b"junk"])
def test_unpickler_corrupt_file_is_data_error(tmp_path, raw):
    path = tmp_path / "bad.pkl"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=r"bad\.pkl: not a valid pickle"):
        safe_load(path)


def test_convert_small_diffurec_pickle_and_refusals(tmp_path):
    ds = {
        "train": {0: [3, 1, 2], 1: [2, 4]},
        "val": {0: [4], 1: [1]},
        "test": {0: [5], 1: [3]},
        "umap": {10: 0, 20: 1},
        "smap": {100 + k: k for k in range(1, 6)},
    }
    pkl = tmp_path / "dataset.pkl"
    pkl.write_bytes(pickle.dumps(ds, protocol=4))
    z = convert_diffurec_pickle(pkl, tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz", allow_pickle=False) as f:
        assert sorted(f.files) == sorted(z)
        off, items = f["train_offsets"], f["train_items"]
        assert [items[off[u]:off[u + 1]].tolist() for u in range(2)] == [[3, 1, 2], [2, 4]]
        assert f["val_item"].tolist() == [4, 1] and f["test_item"].tolist() == [5, 3]
        assert int(f["num_users"]) == 2 and int(f["num_items"]) == 5
        assert f["smap_raw"].tolist() == [101, 102, 103, 104, 105]
    # a reference that differs is reported
    ds2 = dict(ds, test={0: [5], 1: [2]})
    (tmp_path / "other.pkl").write_bytes(pickle.dumps(ds2))
    convert_diffurec_pickle(tmp_path / "other.pkl", tmp_path / "other.npz")
    with pytest.raises(DataError, match=r"differs from .*other\.npz.*test_item: 1 value"):
        convert_diffurec_pickle(pkl, tmp_path / "again.npz", reference=tmp_path / "other.npz")
    # malformed content and hostile files
    bad = dict(ds, val={0: [4, 5], 1: [1]})
    (tmp_path / "bad.pkl").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"bad\.pkl: 'val'\[0\] must hold exactly one item"):
        convert_diffurec_pickle(tmp_path / "bad.pkl", tmp_path / "bad.npz")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Reduce(os.system, ("true",))))
    with pytest.raises(UnsafePickleError):
        convert_diffurec_pickle(tmp_path / "evil.pkl", tmp_path / "evil.npz")
    assert not (tmp_path / "bad.npz").exists() and not (tmp_path / "evil.npz").exists()


@pytest.mark.realdata
@pytest.mark.parametrize("name", ["amazon_beauty", "ml-1m"])
def test_convert_real_diffurec_pickle_equals_shipped_npz(tmp_path, name):
    d = DIFFUREC / name
    if not (d / "dataset.pkl").is_file():
        pytest.skip(f"real data not found: {d} (expects ../shared beside the project)")
    arrays = convert_diffurec_pickle(d / "dataset.pkl", tmp_path / "x.npz", reference=d / "dataset.npz")
    with np.load(d / "dataset.npz", allow_pickle=False) as ref:
        assert sorted(ref.files) == sorted(arrays)
        for k in ref.files:
            assert ref[k].dtype == arrays[k].dtype and np.array_equal(ref[k], arrays[k]), k


@pytest.mark.realdata
@pytest.mark.parametrize("rel", ["yc/data_statis.df", "yc/test_data.df", "ks/test_data.df"])
def test_pandas_pickles_refused_with_npz_hint(rel):
    path = DREAMREC / rel
    if not path.is_file():
        pytest.skip(f"real data not found: {path} (expects ../shared beside the project)")
    with pytest.raises(UnsafePickleError) as e:
        safe_load(path)
    msg = str(e.value)
    assert path.name in msg and "pandas" in msg and ".npz" in msg, msg
