"""Export at scale: every user's top-K for 100,000 users x 100,000 items, streamed, with peak memory.

    python experiments/bench_export_scale.py --out=results/bench_export_scale

A small DiffRec (dims ``--dims``, ``--steps`` diffusion steps) is trained for one epoch on
``--train_users`` users of a seeded popularity catalogue of ``--items`` items (the model's
shapes depend on the item count only), then the run is loaded with a ``--users``-user dataset
of the same catalogue and every user's top-``--k`` is written to Parquet by
:func:`diffrec_jax.export.export`. A dense ``users x items`` float32 score matrix would take
``users * items * 4`` bytes (40 GB here); the process's peak resident memory is reported beside
it. Writes ``bench.json`` and ``bench.md``.
"""

import json
import os
import resource
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

_OUT = flags.DEFINE_string("out", "results/bench_export_scale", "Output folder.")
_USERS = flags.DEFINE_integer("users", 100_000, "Users exported.")
_ITEMS = flags.DEFINE_integer("items", 100_000, "Items in the catalogue.")
_TRAIN_USERS = flags.DEFINE_integer("train_users", 2_000, "Users the model is trained on.")
_DIMS = flags.DEFINE_string("dims", "64", "DiffRec hidden dims, comma-separated.")
_STEPS = flags.DEFINE_integer("steps", 2, "Diffusion steps.")
_K = flags.DEFINE_integer("k", 20, "List length.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Users per scoring batch.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/diffrec_bench_export_scale", "Scratch folder the run is trained in "
                                "(deleted first).")


def popularity_catalogue(n_users: int, n_items: int, per_user: int = 12, seed: int = 0):
    """Users with ``per_user`` distinct items drawn from a Zipf(1) popularity, split 10/1/1 in
    draw order: the shape of an export, at the cost of 1.2 M draws (``make_synthetic`` scores
    every user against every item, 10^10 products at this size)."""
    import numpy as np

    from diffrec_jax.data import CSR, InteractionData

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1)
    p /= p.sum()
    items = rng.choice(n_items, size=(n_users, 3 * per_user), p=p)
    rows = []
    for u in range(n_users):
        _, first = np.unique(items[u], return_index=True)
        rows.append(items[u][np.sort(first)][:per_user])
    users = np.repeat(np.arange(n_users), [len(r) for r in rows])
    flat = np.concatenate(rows)
    pos = np.concatenate([np.arange(len(r)) for r in rows])
    n_last = np.repeat([len(r) for r in rows], [len(r) for r in rows])
    part = np.where(pos < n_last - 2, 0, np.where(pos == n_last - 2, 1, 2))
    csr = [CSR.from_pairs(users[part == k], flat[part == k], n_users, n_items) for k in range(3)]
    return InteractionData("popularity_catalogue", n_users, n_items, *csr)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # Linux: kB


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    from configs import test as test_config
    from diffrec_jax import export, inference, training
    os.makedirs(_OUT.value, exist_ok=True)
    shutil.rmtree(_WORKDIR.value, ignore_errors=True)  # a scratch run: never resume another size
    load0 = [round(x, 2) for x in os.getloadavg()]
    full = popularity_catalogue(_USERS.value, _ITEMS.value, seed=0)
    c = test_config.get_config()
    c.model.dims = tuple(int(d) for d in _DIMS.value.split(","))
    c.diffusion.steps = _STEPS.value
    c.train.update(num_epochs=1, eval_every_epochs=1, batch_size=256)
    c.eval.batch_size = 256
    t0 = time.perf_counter()
    small = popularity_catalogue(_TRAIN_USERS.value, _ITEMS.value, seed=1)
    training.train_and_evaluate(c, _WORKDIR.value, data=small)
    train_s = time.perf_counter() - t0
    rss_after_train = _peak_rss_gb()
    rec = inference.load(_WORKDIR.value, data=full, batch_size=_BATCH.value)
    path = os.path.join(_OUT.value, "recs.parquet")
    res = export.export(rec, "all", _K.value, path, exclude_seen=True, batch_size=_BATCH.value)
    size = os.path.getsize(path)
    os.remove(path)
    out = {
        "users": _USERS.value, "items": _ITEMS.value, "k": _K.value, "dims": c.model.dims,
        "diffusion_steps": _STEPS.value, "batch_size": _BATCH.value, "train_s": train_s,
        "export": res, "parquet_bytes": size,
        "dense_score_matrix_gb": _USERS.value * _ITEMS.value * 4 / 1e9,
        "peak_rss_gb": _peak_rss_gb(), "peak_rss_gb_after_training": rss_after_train,
        "load_start": load0, "load_end": [round(x, 2) for x in os.getloadavg()], "cores": os.cpu_count(),
    }
    with open(os.path.join(_OUT.value, "bench.json"), "w") as f:
        json.dump(out, f, indent=2)
    md = (f"# Export at scale\n\n`python experiments/bench_export_scale.py --out={_OUT.value}`\n\n"
          f"{_USERS.value:,} users x {_ITEMS.value:,} items, top-{_K.value}, DiffRec dims {c.model.dims}, "
          f"T = {_STEPS.value}: {res['users_per_s']:.0f} users/s ({res['seconds']:.0f} s), "
          f"peak RSS {out['peak_rss_gb']:.2f} GB (a dense score matrix: {out['dense_score_matrix_gb']:.0f} GB), "
          f"Parquet {size / 1e6:.0f} MB. {out['cores']} cores, load average {load0} -> {out['load_end']}.\n")
    with open(os.path.join(_OUT.value, "bench.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    app.run(main)
