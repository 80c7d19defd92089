"""Runs each task's small configurations and writes their metrics, to hold a refactor to "no number
changed".

    python experiments/check_numbers.py --out=results/redesign/after.json
    python experiments/check_numbers.py --out=/tmp/now.json --against=results/redesign/before.json

Every run is a real training (synthetic data the library generates, plus ML-100K from
``../shared/data/movielens/ml-100k`` when it is there), seed 1, one process; ``--against`` prints
each metric beside the file's and exits 1 when one differs by more than ``--atol``. The runs
are the small configurations of the tests: DiffRec, L-DiffRec, T-DiffRec, EASE, Mult-VAE, LightGCN
(``configs/test.py``), SASRec, DreamRec, DiffuRec (``configs/seq_test.py``), DiffKG (a small
random knowledge graph written into the run folder), DCDR (``configs/dcdr_synthetic.py:tiny``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_string("out", None, "JSON file to write (metrics of every run).")
flags.DEFINE_string("against", None, "A JSON file written by this script to compare with.")
flags.DEFINE_float("atol", 1e-6, "Largest absolute difference accepted by --against.")
flags.DEFINE_string("only", "", "Comma-separated run names (default: all).")
flags.DEFINE_string("md", None, "With --against: also write the before/after table (markdown) here.")
FLAGS = flags.FLAGS

ML100K = os.path.join(os.path.dirname(ROOT), "shared", "data", "movielens", "ml-100k")


def _run_fn():
    try:
        from diffrec_jax.training import train_and_evaluate  # the one-loop layout
    except ImportError:
        from diffrec_jax.train import run as train_and_evaluate  # before the redesign
    return train_and_evaluate


def _interaction_cfgs(workroot):
    from configs import default, ldiffrec_ml1m, lightgcn_ml1m, multvae_ml1m
    from configs import test as test_cfg

    out = {"diffrec": test_cfg.get_config()}
    c = ldiffrec_ml1m.add_ldiffrec_fields(test_cfg.get_config())
    c.model.in_dims, c.model.mlp_dims = (12,), (16,)
    c.diffusion.steps, c.diffusion.noise_max = 5, 0.02
    out["ldiffrec"] = c
    c = test_cfg.get_config()
    c.data.time_weights = (0.1, 1.0)
    out["tdiffrec"] = c
    c = test_cfg.get_config()
    c.model.name, c.model.l2 = "ease", 50.0
    out["ease"] = c
    for name, mod in (("multvae", multvae_ml1m), ("lightgcn", lightgcn_ml1m)):
        c = mod.get_config()
        t = test_cfg.get_config()
        c.data, c.train, c.eval = t.data, t.train, t.eval
        if name == "lightgcn":
            c.model.emb_dim, c.model.samples_per_user = 16, 8
        else:
            c.model.enc_dims = (32, 16)
        out[name] = c
    # the later models (README "Later models") on the same tiny data
    c = test_cfg.get_config()
    c.model.name, c.model.embed_dim, c.diffusion.steps = "giffcf", 16, 3
    out["giffcf"] = c
    c = test_cfg.get_config()
    c.model.name, c.model.dims, c.model.dropout = "flowcf", (16, 16), 0.1
    c.diffusion.steps, c.sampling.steps = 5, 2
    out["flowcf"] = c
    c = test_cfg.get_config()
    c.model.name = "bspm"
    out["bspm"] = c
    # DiffKG on a random knowledge graph over the synthetic items
    c = test_cfg.get_config()
    n_items, n_ent = c.data.synthetic.n_items, c.data.synthetic.n_items + 40
    rng = np.random.default_rng(0)
    tr = np.stack([rng.integers(0, n_items, 300), rng.integers(0, 3, 300), rng.integers(n_items, n_ent, 300)], 1)
    kg = os.path.join(workroot, "kg.txt")
    np.savetxt(kg, tr, fmt="%d")
    c.model.name = "diffkg"
    c.model.kg_path = kg
    c.model.emb_dim, c.model.dims = 8, (16,)
    c.model.diff_batch, c.model.samples_per_user, c.model.triplet_num, c.model.keep_rate = 16, 3, 2, 1.0
    c.diffusion.noise_scale, c.diffusion.noise_min, c.diffusion.noise_max = 0.1, 1e-4, 0.02
    c.train.batch_size, c.train.num_epochs = 16, 2
    c.train.eval_every_epochs = 1  # DiffKG validates every epoch (its own loop did, whatever this said)
    out["diffkg"] = c
    if os.path.isdir(ML100K):
        for name in ("diffrec", "ease"):
            c = default.get_config()
            c.data.source, c.data.dir = "movielens", ML100K
            c.train.num_epochs, c.train.eval_every_epochs = 3, 1
            if name == "ease":
                c.model.name, c.model.l2 = "ease", 300.0
            out[f"{name}_ml100k"] = c
    return out


def _other_cfgs():
    from configs import dcdr_synthetic, seq_test

    out = {m: seq_test.get_config(m) for m in ("sasrec", "dreamrec", "diffurec")}
    out["dcdr"] = dcdr_synthetic.get_config("tiny")
    return out


def _summary(res: dict) -> dict:
    keep = {k: res[k] for k in ("best_epoch", "epochs_run") if k in res}
    for split in ("valid", "test"):
        if isinstance(res.get(split), dict):
            keep[split] = {k: float(v) for k, v in res[split].items()}
    return keep


HEADLINE = ("recall@20", "ndcg@20", "hr@10", "ndcg@10", "expected_clicks/dcdr", "ratio_to_optimum/dcdr")


def _table(ref: dict, out: dict, worst: float) -> str:
    """Markdown: each run's headline test metrics and epochs, before and after."""
    rows = ["| run | metric | before | after | best epoch (before / after) | epochs run (before / after) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, r in out.items():
        b = ref.get(name, {})
        for m in [m for m in HEADLINE if m in r.get("test", {})][:2]:
            rows.append(f"| {name} | test {m} | {b.get('test', {}).get(m, float('nan')):.6f} | {r['test'][m]:.6f} | "
                        f"{b.get('best_epoch')} / {r.get('best_epoch')} | {b.get('epochs_run')} / {r.get('epochs_run')} |")
    rows.append(f"\nLargest absolute difference over every valid/test metric of the {len(out)} runs: {worst:.3g}.\n")
    return "\n".join(rows) + "\n"


def main(argv):
    del argv
    import logging as std_logging

    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    std_logging.getLogger("diffrec_jax").setLevel(std_logging.WARNING)
    run = _run_fn()
    only = {s for s in FLAGS.only.split(",") if s}
    out = {}
    with tempfile.TemporaryDirectory() as root:
        cfgs = {**_interaction_cfgs(root), **_other_cfgs()}
        for name, cfg in cfgs.items():
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            res = run(cfg, os.path.join(root, name))
            out[name] = _summary(res)
            print(f"{name:16s} {time.perf_counter() - t0:6.1f}s  test {out[name].get('test')}", flush=True)
    if FLAGS.out:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
        with open(FLAGS.out, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
    if FLAGS.against:
        with open(FLAGS.against) as f:
            ref = json.load(f)
        worst, bad = 0.0, []
        for name, r in out.items():
            if name not in ref:
                print(f"{name}: not in {FLAGS.against}")
                continue
            for split in ("valid", "test"):
                for k, v in r.get(split, {}).items():
                    w = ref[name].get(split, {}).get(k)
                    d = abs(v - w) if w is not None else float("inf")
                    worst = max(worst, d)
                    if d > FLAGS.atol:
                        bad.append(f"{name} {split}/{k}: {v:.6f} vs {w}")
            for k in ("best_epoch", "epochs_run"):
                if r.get(k) != ref[name].get(k):
                    bad.append(f"{name} {k}: {r.get(k)} vs {ref[name].get(k)}")
        print(f"largest difference {worst:.3g} over {len(out)} runs")
        if FLAGS.md:
            with open(FLAGS.md, "w") as f:
                f.write(_table(ref, out, worst))
        for b in bad:
            print("DIFFERS:", b)
        if bad:
            raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
