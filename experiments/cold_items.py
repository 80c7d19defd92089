"""Cold target items and what a trained sequential model ranks first (a diagnosis).

    python experiments/cold_items.py --config=configs/dreamrec_yc.py:corrected --workdir=runs/dreamrec_yc

Reads the run's best checkpoint (``workdir/best``) and prints, and writes to
``workdir/cold_items.json``:

* per split, the fraction of rows whose target never occurs in the train split ("cold" targets:
  their embeddings get no training signal as targets and keep their initial values);
* for models with an item table (DreamRec, SASRec, DiffuRec), the median embedding norm of warm
  and cold items;
* on the first ``--rows`` test rows: the share of cold items in each row's top 20, and HR/NDCG@20
  on all rows, on the rows with a warm target and on the rows with a cold target (exact protocol,
  padding not ranked);
* how alike the rows' top-20 lists are (distinct items, overlap with the most common 20 items)
  and the HR@20 that one fixed list (that consensus) would get.

On YooChoose 66.8 % of the test targets (30.9 % of the validation targets) are cold, and DreamRec's
ranking puts its cold items first (their N(0, 1) initial embeddings are 40x longer than the trained
ones), so its hits come from the cold rows; see the README's DreamRec notes.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffrec_jax.data import load  # noqa: E402
from diffrec_jax.training import sequences  # noqa: E402


def _define_flags():
    """Flags exist only when this file runs as a script, so tests can import it beside others."""
    config_flags.DEFINE_config_file("config", None, "The run's config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "A trained run directory (holds best/).")
    flags.DEFINE_integer("rows", 5000, "Test rows scored (from the first).")
    flags.mark_flags_as_required(["config", "workdir"])


def _metrics(rank: np.ndarray) -> dict:
    hit = rank < 20
    return {"n": int(rank.size), "hr@20": float(hit.mean()) if rank.size else 0.0,
            "ndcg@20": float((hit / np.log2(rank + 2)).mean()) if rank.size else 0.0}


def analyse(config, workdir: str, rows: int) -> dict:
    data = load(config.data)
    model, params, model_state, step = sequences.restore_best(config, data, workdir)
    warm = data.train_items()
    out = {"epoch": step, "cold_target_fraction": data.cold_target_fraction()}
    net = getattr(model, "net", None)
    if net is not None and hasattr(net(params), "item_emb"):
        norms = np.linalg.norm(np.asarray(net(params).item_emb[...]), axis=1)
        items = np.arange(data.num_embeddings) != data.pad_id
        cold = ~warm & items
        out["median_norm"] = {"warm": float(np.median(norms[warm])),
                               "cold": float(np.median(norms[cold])) if cold.any() else None}
    arrays = sequences.split_arrays(data.test)
    n = min(rows, len(data.test))
    score = jax.jit(lambda p, b, k: model.score(p, model_state, b, k))
    ranks, cold_top, tops = [], [], []
    for s in range(0, n, 1000):
        idx = jnp.arange(s, min(n, s + 1000))
        batch = sequences.gather(arrays, idx)
        keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(int(config.seed)), r))(idx)
        sc = np.array(score(params, batch, keys))
        sc[:, data.pad_id] = -np.inf
        ranks.append(np.asarray(sequences.target_rank(jnp.asarray(sc), batch["target"])))  # the evaluator's rank
        top = np.argpartition(-sc, 20, axis=1)[:, :20]
        cold_top.append((~warm[top]).mean(1))
        tops.append(top)
    rank = np.concatenate(ranks)
    cold_row = ~warm[data.test.targets[:n]]
    out["test_rows"] = n
    out["cold_share_of_top20"] = float(np.concatenate(cold_top).mean())
    out["test"] = {"all": _metrics(rank), "warm_target_rows": _metrics(rank[~cold_row]),
                   "cold_target_rows": _metrics(rank[cold_row])}
    out["top20_lists"] = top20_consensus(np.concatenate(tops), data.test.targets[:n])
    return out


def top20_consensus(top: np.ndarray, targets: np.ndarray) -> dict:
    """How alike the rows' top-20 lists are, and how many hits one fixed list would get.

    Args:
      top: int ``[R, 20]`` each row's top-20 items.
      targets: int ``[R]``.

    Returns:
      ``distinct_items`` in all lists; the ``consensus`` list = the 20 items most often in a
      top 20, ``overlap_with_consensus`` = mean share of a row's top 20 that is in it, and
      ``consensus_hr@20`` = HR@20 if every row were shown the consensus list; for scale,
      ``best_fixed_list_hr@20`` = the share of rows whose target is one of the 20 most frequent
      targets (an oracle: the best any single list could do).
    """
    items, counts = np.unique(top, return_counts=True)
    consensus = items[np.argsort(-counts, kind="stable")[:20]]
    t_items, t_counts = np.unique(targets, return_counts=True)
    return {"distinct_items": int(items.size),
            "overlap_with_consensus": float(np.isin(top, consensus).mean()),
            "consensus_hr@20": float(np.isin(targets, consensus).mean()),
            "best_fixed_list_hr@20": float(np.sort(t_counts)[::-1][:20].sum() / targets.size)}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    res = analyse(cfg, workdir, flags.FLAGS.rows)
    print(json.dumps(res, indent=1))
    with open(os.path.join(workdir, "cold_items.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
