"""Export top-K recommendations of a trained run: one row per (user, rank), CSV or Parquet.

    python experiments/recommend.py --run=runs/quickstart --users=all --k=20 --out=recs.parquet
    python experiments/recommend.py --run=runs/x --users=users.txt --k=10 --out=recs.csv --exclude_seen=all

``--users``: ``all`` or a file with one user id per line (the dataset's own ids; a first line
``user`` is a header). Columns: ``user, rank, item, score`` (ranks from 1). Users are scored in
batches of ``--batch_size`` and each batch is written before the next is scored, so no
users x items score matrix is held. The run directory is only read.
"""

import logging as std_logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

_RUN = flags.DEFINE_string("run", None, "Run directory written by experiments/main.py.")
_USERS = flags.DEFINE_string("users", "all", "'all' or a file with one user id per line.")
_K = flags.DEFINE_integer("k", 20, "List length.")
_OUT = flags.DEFINE_string("out", None, "Output file: .csv or .parquet.")
_EXCLUDE = flags.DEFINE_enum("exclude_seen", "train", ["train", "all", "none"],
                             "Items never recommended: the user's training items (the evaluation's "
                             "masking; sequential models default to none), also their valid/test "
                             "items (all), or none.")
_SEED = flags.DEFINE_integer("seed", None, "Sampler seed (default: the run's evaluation key).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Users per scoring batch.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The dataset folder, if it moved since training.")
_STEPS = flags.DEFINE_integer("sampling_steps", None, "Override config.sampling.steps (DiffRec family).")
flags.mark_flags_as_required(["run", "out"])


def read_users(path: str):
    """User ids from a file: one per line, blank lines skipped, an optional ``user`` header."""
    import numpy as np

    if not os.path.isfile(path):
        raise SystemExit(f"error: --users={path}: no such file (give 'all' or a file of user ids)")
    with open(path, encoding="utf-8") as f:
        ids = [ln.strip() for ln in f if ln.strip()]
    if ids and ids[0].lower() == "user":
        ids = ids[1:]
    if not ids:
        raise SystemExit(f"error: --users={path}: the file holds no user ids")
    try:
        return np.asarray([int(i) for i in ids], np.int64)
    except ValueError:
        return np.asarray(ids)


class _Writer:
    """Streams column batches to a CSV or Parquet file (written to ``path.tmp``, then renamed)."""

    def __init__(self, path: str):
        self.path, self.tmp = path, path + ".tmp"
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".csv", ".parquet"):
            raise SystemExit(f"error: --out={path}: use a .csv or .parquet file name")
        self.kind, self._pq, self._csv = ext[1:], None, None
        if self.kind == "parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise SystemExit("error: Parquet output needs pyarrow (pip install pyarrow), or use .csv") from None

    def write(self, cols: dict) -> None:
        if self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table(cols)
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.tmp, table.schema)
            self._pq.write_table(table)
        else:
            import csv

            if self._csv is None:
                self._fh = open(self.tmp, "w", newline="", encoding="utf-8")
                self._csv = csv.writer(self._fh)
                self._csv.writerow(list(cols))
            self._csv.writerows(zip(*(c.tolist() for c in cols.values())))

    def close(self, ok: bool) -> None:
        if self._pq is not None:
            self._pq.close()
        if self._csv is not None:
            self._fh.close()
        if ok and os.path.exists(self.tmp):
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.remove(self.tmp)


def export(rec, users, k: int, out: str, *, exclude_seen, seed=None, batch_size: int = 256,
           sampling=None, progress: bool = True) -> dict:
    """Writes ``rec``'s top-``k`` lists for ``users`` to ``out``; returns counts and seconds."""
    from tqdm.auto import tqdm

    rec.check_k(k)  # a bad k or an unknown user is refused before anything is written
    rows = rec.user_index(users)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    w = _Writer(out)
    t0, n, ok = time.perf_counter(), 0, False
    bar = tqdm(total=len(rows), unit="user", disable=not progress, file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    try:
        for part in rec.iter_recommend(users, k, exclude_seen=exclude_seen, seed=seed, sampling=sampling,
                                       batch_size=batch_size):
            w.write(part.columns())
            n += len(part)
            bar.update(len(part))
            bar.set_postfix(users_s=f"{n / (time.perf_counter() - t0):.0f}", refresh=False)
        ok = True
    finally:
        bar.close()
        w.close(ok)
    dt = time.perf_counter() - t0
    return {"users": n, "rows": n * k, "seconds": dt, "users_per_s": n / dt if dt else float("inf")}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.ERROR)  # Orbax's read-only notices
    std_logging.getLogger("absl").setLevel(std_logging.ERROR)
    from diffrec_jax import inference

    try:
        rec = inference.load(_RUN.value, data_dir=_DATA_DIR.value, batch_size=_BATCH.value)
        users = "all" if _USERS.value == "all" else read_users(_USERS.value)
        exclude = {"train": True, "all": "all", "none": False}[_EXCLUDE.value]
        if rec.task == "sequential" and _EXCLUDE.value == "train" and not any(
                a.startswith("--exclude_seen") for a in sys.argv):
            exclude = False
        sampling = None if _STEPS.value is None else {"steps": _STEPS.value}
        res = export(rec, users, _K.value, _OUT.value, exclude_seen=exclude, seed=_SEED.value,
                     batch_size=_BATCH.value, sampling=sampling)
    except inference.InferenceError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{res['users']} users x {_K.value} items -> {_OUT.value} ({res['seconds']:.1f} s, "
          f"{res['users_per_s']:.0f} users/s)")


if __name__ == "__main__":
    app.run(main)
