"""What a run writes: ``config.json``, ``metrics.jsonl`` (JSON lines), an atomic ``results.json``,
and the progress bar."""

from __future__ import annotations

import json
import os
import sys

import jax


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically (every process writes the same text)."""
    write_atomic(path, json.dumps(obj, indent=2))


def save_config(config, workdir: str) -> None:
    """``workdir/config.json``: the run's whole configuration (what inference reloads)."""
    os.makedirs(workdir, exist_ok=True)
    write_atomic(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


class MetricWriter:
    """Appends JSON lines to ``metrics.jsonl`` (plot with any JSON-lines reader).

    With several processes (hosts) only process 0 writes; the others' calls do nothing.
    """

    def __init__(self, path: str):
        self.path = path
        self.enabled = jax.process_index() == 0

    def truncate_after(self, epoch: int) -> None:
        """Drops records of epochs after ``epoch`` (written before an interruption).

        A line cut short by a kill is dropped too; the file is replaced atomically.
        """
        if not self.enabled or not os.path.exists(self.path):
            return
        keep = []
        with open(self.path) as f:
            for ln in f:
                try:
                    rec = json.loads(ln)
                except json.JSONDecodeError:
                    continue  # a partial line from an interrupted write
                if isinstance(rec, dict) and rec.get("epoch", 0) <= epoch:
                    keep.append(json.dumps(rec) + "\n")
        write_atomic(self.path, "".join(keep))

    def write(self, record: dict) -> None:
        """Appends one JSON record (one line)."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def progress(total: int, initial: int = 0):
    """A tqdm bar on stderr (refreshed every second on a terminal, every 30 s in a log file)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
