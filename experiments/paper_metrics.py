"""Re-scores a finished run under both Recall@K conventions, to compare with papers that differ.

    python experiments/paper_metrics.py --workdir=runs/giffcf_ml1m

The library (as DiffRec) divides a user's hits in the top K by ``|G_u|``; GiffCF's evaluator (and
many graph-CF papers) divide by ``min(K, |G_u|)``, which is larger whenever a user has more than K
held-out items (common on ML-1M). This script reads ``<workdir>/config.json``, refits a closed-form
model or restores the best parameters of each seed (``best/`` or ``best/seed_<s>/``), ranks every
user with history masked as the trainer does, and writes ``<workdir>/paper_metrics.json`` with
``recall@K`` (``|G_u|``), ``recall_minK@K`` (``min(K, |G_u|)``) and ``ndcg@K`` on validation and
test, per seed, averaged over users with a non-empty ground truth.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from diffrec_jax import metrics  # noqa: E402
from diffrec_jax import models  # noqa: E402
from diffrec_jax.data import load  # noqa: E402
from diffrec_jax.training.interactions import DeviceData  # noqa: E402
from diffrec_jax.checkpointing import Checkpointer  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run (config.json, best/ or closed form).")
_KS = flags.DEFINE_list("ks", ["10", "20"], "Cut-offs.")
flags.mark_flags_as_required(["workdir"])


def both_recalls(scores, seen, truth, ks):
    """Per-user sums of recall (|G|), recall (min(K, |G|)) and NDCG for each K; and the user count."""
    top = metrics.topk_indices(metrics.mask_scores(scores, seen), max(ks))
    hits = metrics.hits_from_topk(top, truth)
    n = jnp.sum(truth > 0, axis=1).astype(jnp.float32)
    valid = n > 0
    disc = 1.0 / jnp.log2(jnp.arange(max(ks), dtype=jnp.float32) + 2.0)
    out = {}
    for k in ks:
        h = jnp.sum(hits[:, :k], axis=1)
        idcg = jnp.cumsum(disc)[jnp.clip(jnp.minimum(n, k).astype(jnp.int32) - 1, 0, None)]
        vals = {
            f"recall@{k}": h / jnp.maximum(n, 1.0),
            f"recall_minK@{k}": h / jnp.maximum(jnp.minimum(n, k), 1.0),
            f"ndcg@{k}": jnp.sum(hits[:, :k] * disc[:k], axis=1) / idcg,
        }
        out.update({name: float(jnp.sum(jnp.where(valid, v, 0.0))) for name, v in vals.items()})
    return out, float(jnp.sum(valid))


def evaluate_params(model, params, model_state, data, ks, batch=500):
    dd = DeviceData.from_data(data)
    score = jax.jit(lambda x: model.score(params, model_state, x, jax.random.key(0)))
    acc = {"valid": {}, "test": {}}
    counts = {"valid": 0.0, "test": 0.0}
    for start in range(0, data.n_users, batch):
        idx = jnp.arange(start, min(start + batch, data.n_users))
        x, tv, tt = dd.x_train[idx], dd.truth_valid[idx], dd.truth_test[idx]
        s = score(x)
        for split, seen, truth in (("valid", x > 0, tv), ("test", (x > 0) | (tv > 0), tt)):
            sums, n = both_recalls(s, seen, truth, ks)
            counts[split] += n
            for k, v in sums.items():
                acc[split][k] = acc[split].get(k, 0.0) + v
    return {sp: {k: v / max(counts[sp], 1.0) for k, v in acc[sp].items()} for sp in acc}


def main(argv):
    del argv
    wd = _WORKDIR.value
    with open(os.path.join(wd, "config.json")) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    ks = [int(k) for k in _KS.value]
    data = load(cfg.data)
    model = models.get_model(cfg, data)
    out = {"workdir": wd, "model": cfg.model.name, "per_seed": []}
    if getattr(model, "closed_form", False):
        params, st = model.fit(jax.random.key(int(cfg.seed)))
        out["per_seed"].append({"seed": int(cfg.seed), **evaluate_params(model, params, st, data, ks)})
    else:
        _, _, st = model.init(jax.random.key(0))
        best = os.path.join(wd, "best")
        dirs = sorted(d for d in os.listdir(best) if d.startswith("seed_"))
        for d in dirs or [""]:
            ck = Checkpointer(os.path.join(best, d))
            params, meta = ck.restore_untyped()
            ck.close()
            seed = int(d.split("_")[1]) if d else int(cfg.seed)
            rec = {"seed": seed, "epoch": int(meta.get("epoch", -1))}
            rec.update(evaluate_params(model, params, st, data, ks))
            out["per_seed"].append(rec)
    for split in ("valid", "test"):
        keys = out["per_seed"][0][split].keys()
        arr = {k: np.array([r[split][k] for r in out["per_seed"]]) for k in keys}
        out[f"{split}_mean"] = {k: float(v.mean()) for k, v in arr.items()}
        out[f"{split}_std"] = {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in arr.items()}
    with open(os.path.join(wd, "paper_metrics.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps({"test_mean": out["test_mean"], "test_std": out["test_std"]}, indent=2))


if __name__ == "__main__":
    app.run(main)
