"""One honest comparison: every interaction model, the same data, metrics and tuning budget.

    python experiments/compare.py --workdir=runs/compare                 # everything
    python experiments/compare.py --workdir=runs/compare --datasets=ml100k --models=ease,diffrec

For each dataset and model:

1. *Tuning*: every configuration of the model's declared grid (``GRIDS``; at most
   ``--budget`` of them, the same budget for every model) is trained with the first seed and
   selected on **validation** Recall@20 only.
2. *Seeds*: the selected configuration is trained with all seeds in one program
   (``config.num_seeds``, vmapped); closed-form models are deterministic and run once.
3. *Table*: test Recall@10/20 and NDCG@10/20 as mean ± std over seeds, parameters, train and
   evaluation time, in ``compare.md`` and ``compare.csv``, and a bar plot ``compare.png``.

Finished runs (a ``results.json``) are read back, so an interrupted comparison resumes.

Datasets: ``ml1m`` is DiffRec's ``ml-1m_clean`` split; ``ml100k`` is MovieLens-100K ``u.data``
with ratings >= 4 as implicit feedback (DiffRec's "clean" setting) and a per-user temporal
70/20/10 split. Models that cluster items (L-DiffRec, LT-DiffRec) use ``item_emb.npy`` where the
dataset ships one, else item embeddings from our LightGCN, pretrained on the same train split.
"""

import csv
import importlib
import json
import logging as std_logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from diffrec_jax import cli, training  # noqa: E402
from diffrec_jax.data import load  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Output folder.")
_DATASETS = flags.DEFINE_list("datasets", ["ml1m", "ml100k"], "ml1m, ml100k")
_MODELS = flags.DEFINE_list("models", [], "Subset of models (default: all in MODELS).")
_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "3"], "Seeds of the final runs.")
_BUDGET = flags.DEFINE_integer("budget", 4, "Tuning configurations per model (same for all).")
_SHARED = flags.DEFINE_string("shared", "../shared/data", "Folder with the real datasets.")

# model name -> config module (configs/<module>.py holds the ML-1M defaults)
MODELS = {
    "diffrec": "diffrec_ml1m",
    "tdiffrec": "tdiffrec_ml1m",
    "ldiffrec": "ldiffrec_ml1m",
    "ltdiffrec": "ltdiffrec_ml1m",
    "ease": "ease_ml1m",
    "itemknn": "itemknn_ml1m",
    "rp3beta": "rp3beta_ml1m",
    "multvae": "multvae_ml1m",
    "lightgcn": "lightgcn_ml1m",
    "bspm": "bspm_ml1m",
    "giffcf": "giffcf_ml1m",
}

# Declared tuning grids: the first entry is the model's config as shipped. Values are config
# overrides ("group.field": value). Each model gets the same number of trials (--budget).
GRIDS = {
    "diffrec": [
        {},
        {"optim.lr": 5e-4},
        {"diffusion.noise_scale": 0.01},
        {"model.dims": (1000,)},
    ],
    "tdiffrec": [
        {},
        {"data.time_weights": (0.1, 1.0)},
        {"data.time_weights": (0.3, 1.0)},
        {"data.time_weights": (0.7, 1.0)},
    ],
    "ldiffrec": [{}, {"model.lamda": 0.01}, {"model.lamda": 0.05}, {"optim.lr2": 1e-3}],
    "ltdiffrec": [
        {},
        {"data.time_weights": (0.1, 1.0)},
        {"data.time_weights": (0.3, 1.0)},
        {"data.time_weights": (0.7, 1.0)},
    ],
    "ease": [{}, {"model.l2": 200.0}, {"model.l2": 500.0}, {"model.l2": 3000.0}],
    "itemknn": [{}, {"model.topk": 50}, {"model.topk": 200}, {"model.shrink": 10.0}],
    "rp3beta": [{}, {"model.alpha": 0.8}, {"model.beta": 0.5}, {"model.topk": 200}],
    "multvae": [{}, {"optim.lr": 5e-4}, {"model.anneal_cap": 0.4}, {"model.dropout": 0.3}],
    "lightgcn": [{}, {"model.n_layers": 2}, {"model.reg": 1e-3}, {"optim.lr": 5e-3}],
    # BSPM: shipped (T_s 1, no ideal term), longer sharpening, the paper's Gowalla setting, blur only
    "bspm": [
        {},
        {"model.T_s": 1.5},
        {"model.T_s": 2.5, "model.idl_beta": 0.2},
        {"model.sharpening": False},
    ],
    # GiffCF: shipped (the reference's ML-1M), MLP lr 1e-2, no over-smoothing, no residual carry
    "giffcf": [{}, {"model.lr_mlp": 1e-2}, {"model.alpha": 1.0}, {"model.noise_decay": 0.0}],
}

SHOW = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def base_config(model: str, dataset: str, shared: str):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = importlib.import_module(f"configs.{MODELS[model]}").get_config()
    with cfg.unlocked():
        if dataset == "ml1m":
            cfg.data.source = "diffrec_npy"
            cfg.data.dir = os.path.join(shared, "diffrec", "ml-1m_clean")
        elif dataset == "ml100k":
            cfg.data.source = "movielens"
            cfg.data.dir = os.path.join(shared, "movielens", "ml-100k")
            cfg.data.min_rating = 4.0
        else:
            raise ValueError(f"unknown dataset {dataset!r}")
    return cfg


def apply(cfg, overrides: dict):
    return cli.override(cfg, overrides, allow_new=True)


def run_or_load(cfg, workdir: str) -> dict:
    path = os.path.join(workdir, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return training.train_and_evaluate(cfg, workdir)


def needs_item_emb(cfg) -> bool:
    return cfg.model.name == "ldiffrec"


def ensure_item_emb(cfg, dataset: str, shared: str, root: str, seed: int):
    """Points L-DiffRec at LightGCN item embeddings when the dataset ships none."""
    data = load(cfg.data)
    if data.item_emb is not None:
        return cfg
    emb_path = os.path.join(root, dataset, "lightgcn_item_emb", "item_emb.npy")
    if not os.path.exists(emb_path):
        from diffrec_jax.training.pretrain import pretrain_item_embeddings

        lcfg = apply(base_config("lightgcn", dataset, shared), {"seed": seed})
        pretrain_item_embeddings(lcfg, data, os.path.dirname(emb_path))
    return apply(cfg, {"model.item_emb_path": emb_path})


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("diffrec_jax").setLevel(std_logging.INFO)
    root = _WORKDIR.value
    seeds = [int(s) for s in _SEEDS.value]
    models = _MODELS.value or list(MODELS)
    rows = []
    for dataset in _DATASETS.value:
        for model in models:
            base = base_config(model, dataset, _SHARED.value)
            if needs_item_emb(base):
                base = ensure_item_emb(base, dataset, _SHARED.value, root, seeds[0])
            grid = GRIDS.get(model, [{}])[: _BUDGET.value]
            trials = []
            for i, ov in enumerate(grid):
                cfg = apply(base, {**ov, "seed": seeds[0], "num_seeds": 1})
                res = run_or_load(cfg, os.path.join(root, dataset, model, f"trial_{i}"))
                trials.append((res["valid"]["recall@20"], i, ov, res))
                print(f"[{dataset}] {model} trial {i} {ov}: valid recall@20={res['valid']['recall@20']:.4f}")
            _, best_i, best_ov, best_res = max(trials, key=lambda x: (x[0], -x[1]))
            if best_res.get("closed_form") or model in ("ease", "itemknn", "rp3beta", "bspm"):
                final = dict(best_res, test_std={k: 0.0 for k in best_res["test"]}, seeds=[seeds[0]])
            else:
                cfg = apply(base, {**best_ov, "seed": seeds[0], "num_seeds": len(seeds)})
                final = run_or_load(cfg, os.path.join(root, dataset, model, "final"))
                if len(seeds) == 1:
                    final = dict(final, test_std={k: 0.0 for k in final["test"]})
            rows.append({
                "dataset": dataset,
                "model": model,
                "selected": json.dumps(best_ov, default=list) if best_ov else "as shipped",
                "params": final["params"],
                "train_s": final["train_time_s"],
                "eval_s": final["eval_time_s"],
                "seeds": len(final.get("seeds", [final.get("seed")])),
                **{k: final["test"][k] for k in SHOW},
                **{f"{k}_std": final["test_std"][k] for k in SHOW},
            })
            write_outputs(rows, root)


def write_outputs(rows: list[dict], root: str) -> None:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "compare.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == dataset]
        best = {k: max(r[k] for r in sub) for k in SHOW}
        lines += [
            f"### {dataset} (test; mean ± std over seeds; selected on validation Recall@20)",
            "",
            "| model | R@10 | R@20 | N@10 | N@20 | params | train s | eval s | selected |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in sorted(sub, key=lambda r: -r["recall@20"]):
            cells = []
            for k in SHOW:
                c = f"{r[k]:.4f} ± {r[k + '_std']:.4f}"
                cells.append(f"**{c}**" if r[k] == best[k] else c)
            lines.append(
                f"| {r['model']} | " + " | ".join(cells)
                + f" | {r['params']:,} | {r['train_s']:.0f} | {r['eval_s']:.0f} | {r['selected']} |"
            )
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(root, "compare.md"), "w") as f:
        f.write(text)
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sub = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: -r["recall@20"])
        x = np.arange(len(sub))
        for j, k in enumerate(("recall@20", "ndcg@20")):
            ax.bar(x + 0.4 * j, [r[k] for r in sub], 0.4, yerr=[r[k + "_std"] for r in sub], label=k)
        ax.set_xticks(x + 0.2, [r["model"] for r in sub], rotation=30)
        ax.set_title(dataset)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(root, "compare.png"), dpi=110)


if __name__ == "__main__":
    app.run(main)
