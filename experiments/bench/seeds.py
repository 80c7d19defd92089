"""Part 5, ``seeds``: K seeds in one vmapped program (``config.num_seeds = K``) against K
separate runs of DiffRec: seconds per steady-state training epoch and per evaluation."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Sequence

import numpy as np

from .common import load_ml1m, override, quick_data, train_and_evaluate


def part_seeds(data_dir: str, quick: bool, ks: Sequence[int], seed: int) -> dict:
    """Part 5: one vmapped program of K seeds against K separate runs (DiffRec)."""
    from configs import diffrec_ml1m, test as test_config

    if quick:
        data, note = quick_data()
        base = test_config.get_config()
        epochs = 3
    else:
        data, note = load_ml1m(data_dir)
        base = diffrec_ml1m.get_config()
        epochs = 4
    rows = []
    for k in ks:
        cfg = override(base, {
            "seed": seed + 1, "num_seeds": int(k), "train.num_epochs": epochs,
            "train.eval_every_epochs": epochs, "train.patience_epochs": 10 * epochs, "train.num_devices": 1,
        })
        with tempfile.TemporaryDirectory() as wd:
            t0 = time.perf_counter()
            train_and_evaluate(cfg, wd, data=data)
            wall = time.perf_counter() - t0
            with open(os.path.join(wd, "metrics.jsonl")) as f:
                recs = [json.loads(line) for line in f]
        ep = [r["train/epoch_s"] for r in recs if "train/epoch_s" in r]
        ev = [r["eval/time_s"] for r in recs if "eval/time_s" in r]
        rows.append({"k": int(k), "first_epoch_s": ep[0], "epoch_s": float(np.median(ep[1:])),
                     "eval_s": float(ev[0]), "wall_s": wall})
        print(f"[seeds] K={k}: {rows[-1]['epoch_s']:.3f} s/epoch, eval {rows[-1]['eval_s']:.2f} s", flush=True)
    one = next((r for r in rows if r["k"] == 1), None)
    if one is not None:
        for r in rows:
            r["epoch_ratio_vs_separate"] = r["epoch_s"] / (r["k"] * one["epoch_s"])
            r["eval_ratio_vs_separate"] = r["eval_s"] / (r["k"] * one["eval_s"])
    return {"data": note, "epochs": epochs, "rows": rows}
