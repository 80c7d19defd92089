"""Export at scale: every user's top-K for 100,000 users x 100,000 items, streamed, with peak memory.

    python experiments/bench_export_scale.py --out=results/bench_export_scale

A small DiffRec (dims ``--dims``, ``--steps`` diffusion steps) is trained for one epoch on
``--train_users`` users of a seeded synthetic catalogue of ``--items`` items (the model's shapes
depend on the item count only), then the run is loaded with the full ``--users``-user dataset of
the same catalogue and every user's top-``--k`` is written to Parquet by
:func:`diffrec_jax.export.export`. A dense ``users x items`` float32 score matrix would take
``users * items * 4`` bytes (40 GB here); the process's peak resident memory is reported beside
it. Writes ``bench.json`` and ``bench.md``.
"""

import json
import os
import resource
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
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/diffrec_bench_export_scale", "Where the run is trained.")


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # Linux: kB


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    from configs import test as test_config
    from diffrec_jax import export, inference, train
    from diffrec_jax.data import make_synthetic

    os.makedirs(_OUT.value, exist_ok=True)
    load0 = [round(x, 2) for x in os.getloadavg()]
    full = make_synthetic(n_users=_USERS.value, n_items=_ITEMS.value, mean_items_per_user=12, seed=0)
    c = test_config.get_config()
    c.data.synthetic.update(n_users=_TRAIN_USERS.value, n_items=_ITEMS.value, mean_items_per_user=12, seed=1)
    c.model.dims = tuple(int(d) for d in _DIMS.value.split(","))
    c.diffusion.steps = _STEPS.value
    c.train.update(num_epochs=1, eval_every_epochs=1, batch_size=256)
    c.eval.batch_size = 256
    t0 = time.perf_counter()
    small = make_synthetic(**dict(c.data.synthetic))
    train.train_and_evaluate(c, _WORKDIR.value, data=small)
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
