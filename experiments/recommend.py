"""Export top-K recommendations of a trained run: one row per (user, rank), CSV or Parquet.

    python experiments/recommend.py --run=runs/quickstart --users=all --k=20 --out=recs.parquet
    python experiments/recommend.py --run=runs/x --users=users.txt --k=10 --out=recs.csv --exclude_seen=all
    python experiments/recommend.py --run=runs/x --out=recs.parquet --sampling='{"noise_steps": 10, "noise": true}' --seed=0

``--users``: ``all`` or a file with one user id per line (the dataset's own ids; a first line
``user`` is a header). Columns: ``user, rank, item, score`` (ranks from 1). Users are scored in
batches of ``--batch_size`` and each batch is written before the next is scored, so no
users x items score matrix is held. The run directory is only read.
"""

import json
import logging as std_logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

_RUN = flags.DEFINE_string("run", None, "Run directory written by experiments/main.py.")
_USERS = flags.DEFINE_string("users", "all", "'all' or a file with one user id per line.")
_K = flags.DEFINE_integer("k", 20, "List length.")
_OUT = flags.DEFINE_string("out", None, "Output file: .csv or .parquet.")
_EXCLUDE = flags.DEFINE_enum("exclude_seen", None, ["train", "all", "none"],
                             "Items never recommended: the user's training items (the evaluation's "
                             "masking; the default for interaction models), also their valid/test "
                             "items (all), or none (the default for sequential models, whose "
                             "evaluation lets items repeat).")
_SEED = flags.DEFINE_integer("seed", None, "Sampler seed (default: the run's evaluation key).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Users per scoring batch.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "The dataset folder, if it moved since training.")
_SAMPLING = flags.DEFINE_string("sampling", None, 'Sampler settings as JSON, e.g. \'{"noise_steps": 10, "noise": true}\' '
                                 "(fields of the run's config.sampling).")
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.ERROR)  # Orbax's read-only notices
    std_logging.getLogger("absl").setLevel(std_logging.ERROR)
    from diffrec_jax import export as export_lib
    from diffrec_jax import inference

    try:
        export_lib.check_path(_OUT.value)
        rec = inference.load(_RUN.value, data_dir=_DATA_DIR.value, batch_size=_BATCH.value)
        if rec.task == "rerank":
            raise SystemExit(f"error: {_RUN.value}: a DCDR run reranks candidate sets; use "
                             "diffrec_jax.inference.load(run).rerank(users, candidates)")
        users = "all" if _USERS.value == "all" else read_users(_USERS.value)
        choice = _EXCLUDE.value or ("train" if rec.task == "interactions" else "none")
        exclude = {"train": True, "all": "all", "none": False}[choice]
        sampling = None
        if _SAMPLING.value:
            try:
                sampling = json.loads(_SAMPLING.value)
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: --sampling is not JSON ({e})") from None
            if not isinstance(sampling, dict):
                raise SystemExit("error: --sampling must be a JSON object such as '{\"steps\": 10}'")
        res = export_lib.export(rec, users, _K.value, _OUT.value, exclude_seen=exclude, seed=_SEED.value,
                     batch_size=_BATCH.value, sampling=sampling)
    except inference.InferenceError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{res['users']} users x {_K.value} items -> {_OUT.value} ({res['seconds']:.1f} s, "
          f"{res['users_per_s']:.0f} users/s)")


if __name__ == "__main__":
    app.run(main)
