"""Streams top-K lists of a loaded run to CSV or Parquet (``experiments/recommend.py``)."""

from __future__ import annotations

import os
import sys
import time

from diffrec_jax.inference import InferenceError

__all__ = ["Writer", "check_path", "export"]


def check_path(path: str) -> str:
    """The output kind (``csv`` or ``parquet``) of ``path``; InferenceError for anything else."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".parquet"):
        raise InferenceError(f"{path}: use a .csv or .parquet file name")
    if ext == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InferenceError(f"{path}: Parquet output needs pyarrow (pip install pyarrow), or use .csv") from None
    return ext[1:]


class Writer:
    """Streams column batches to a CSV or Parquet file (written to ``path.tmp``, then renamed)."""

    def __init__(self, path: str):
        self.path, self.tmp = path, path + ".tmp"
        self.kind, self._pq, self._csv = check_path(path), None, None

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


def export(rec, users, k: int, out: str, *, exclude_seen=True, seed=None, batch_size: int = 256,
           sampling=None, progress: bool = True) -> dict:
    """Writes ``rec``'s top-``k`` lists for ``users`` (raw ids or ``"all"``) to ``out``.

    One row per (user, rank): ``user, rank, item, score``. Batches of ``batch_size`` users are
    scored and written one after another; the file appears (renamed from ``out.tmp``) only when
    every batch is written. Returns ``{"users", "rows", "seconds", "users_per_s"}``.
    """
    from tqdm.auto import tqdm

    rec.check_k(k)  # a bad k or an unknown user is refused before anything is written
    rows = rec.user_index(users)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    w = Writer(out)
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
