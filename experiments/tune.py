"""Hyperparameter search with selection on validation only, several seeds per configuration.

    python experiments/tune.py --config=configs/diffrec_ml1m.py --workdir=runs/tune_diffrec \
        --space='diffusion.noise_scale=0.001|0.005|0.01' --space='model.dims=(200,600)|(1000,)' \
        --trials=8 --num_seeds=3

Each ``--space`` is ``path=value|value|...`` (values are Python literals; ``|`` separates them so
that tuples can hold commas). ``--search=grid`` runs the whole Cartesian product in order;
``--search=random`` (default) draws ``--trials`` distinct points of it with a fixed seed, the config
as given always first. Every trial trains ``--num_seeds`` seeds (``seed, seed+1, ...``): vmapped in
one program for interaction models, one after another for sequential ones.

The trial with the best **validation** mean of ``config.eval.select_metric`` is selected; its test
metrics (mean ± std over seeds) are what the search reports. Test numbers of the other trials are
listed for transparency only. ``--shard=i/n`` runs every n-th trial (several processes or machines
share one workdir); any process rebuilds the summary from the finished trials
(``<workdir>/trial_XXX/results.json``). Writes ``tune.md``, ``tune.csv`` and ``tune.json``.
"""

import ast
import csv
import itertools
import json
import logging as std_logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the trials and the summary.")
_SPACE = flags.DEFINE_multi_string("space", [], "path=v1|v2|... (Python literals).")
_SEARCH = flags.DEFINE_enum("search", "random", ["random", "grid"], "Search strategy.")
_TRIALS = flags.DEFINE_integer("trials", 8, "Trials of the random search (the base config included).")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Seeds per trial (config.seed, config.seed+1, ...).")
_SHARD = flags.DEFINE_string("shard", "0/1", "i/n: run trials with index % n == i.")
_SEARCH_SEED = flags.DEFINE_integer("search_seed", 0, "Seed of the random search's draws.")
_SUMMARY_ONLY = flags.DEFINE_bool("summary_only", False, "Only rebuild the summary.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_space(specs: list[str]) -> dict[str, list]:
    """``["a.b=1|2", ...]`` -> ``{"a.b": [1, 2], ...}``; raises ValueError naming a bad spec."""
    space: dict[str, list] = {}
    for spec in specs:
        if "=" not in spec:
            raise ValueError(f"--space {spec!r}: expected path=value|value|...")
        path, vals = spec.split("=", 1)
        try:
            values = [ast.literal_eval(v.strip()) for v in vals.split("|")]
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"--space {spec!r}: values must be Python literals ({e})") from None
        if not values or path.strip() in space:
            raise ValueError(f"--space {spec!r}: empty or repeated path")
        space[path.strip()] = values
    return space


def make_trials(space: dict[str, list], search: str, trials: int, seed: int) -> list[dict]:
    """The list of override dicts; random search starts with ``{}`` (the config as given)."""
    keys = list(space)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    if search == "grid":
        return points or [{}]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(points)) if points else []
    out = [{}]
    for i in order:
        if len(out) >= trials:
            break
        out.append(points[int(i)])
    return out


def apply(cfg, overrides: dict):
    from diffrec_jax import cli

    return cli.override(cfg, overrides)


def run_trial(cfg, workdir: str, num_seeds: int) -> dict:
    """Trains ``num_seeds`` seeds; returns ``{"valid": mean, "test": mean, "test_std": ..., ...}``."""
    from diffrec_jax import training
    from diffrec_jax.training.loop import mean_std

    path = os.path.join(workdir, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if cfg.get("task", "interactions") == "interactions":
        with cfg.unlocked():
            cfg.num_seeds = num_seeds
        return training.train_and_evaluate(cfg, workdir)  # one seed: no *_std keys (the summary reads them as 0)
    runs = []
    for s in range(num_seeds):
        c = apply(cfg, {"seed": int(cfg.seed) + s})
        runs.append(training.train_and_evaluate(c, os.path.join(workdir, f"seed_{int(cfg.seed) + s}")))
    out = {"per_seed": [{"seed": int(cfg.seed) + s, "test": r["test"], "valid": r["valid"],
                         "best_epoch": r["best_epoch"]} for s, r in enumerate(runs)]}
    for split in ("test", "valid"):
        out[split], out[f"{split}_std"] = mean_std([r[split] for r in runs])
    out["train_time_s"] = float(sum(r["train_time_s"] for r in runs))
    out["eval_time_s"] = float(sum(r["eval_time_s"] for r in runs))
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    return out


def summarize(trials: list[dict], results: dict[int, dict], select: str, workdir: str,
              command: str) -> dict:
    """Writes tune.md / tune.csv / tune.json; returns the summary (``selected`` is a trial index)."""
    done = sorted(results, key=lambda i: -results[i]["valid"][select])
    show = [k for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "hr@10", "hr@20")
            if done and k in results[done[0]]["test"]]
    lines = [f"Search: `{command}`", "",
             f"{len(done)} of {len(trials)} trials finished; selected on validation {select} "
             "(mean over seeds); test columns are for reading only.", "",
             "| trial | overrides | valid " + select + " | " + " | ".join(f"test {k}" for k in show) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in show) + " |"]
    rows = []
    for rank, i in enumerate(done):
        r = results[i]
        sel = " (selected)" if rank == 0 else ""
        ov = ", ".join(f"{k}={v}" for k, v in trials[i].items()) or "(config as given)"
        cells = [f"{r['test'][k]:.4f} ± {r.get('test_std', {}).get(k, 0.0):.4f}" for k in show]
        lines.append(f"| {i}{sel} | {ov} | {r['valid'][select]:.4f} | " + " | ".join(cells) + " |")
        rows.append({"trial": i, "overrides": json.dumps(trials[i], default=str),
                     f"valid_{select}": r["valid"][select],
                     **{f"test_{k}": r["test"][k] for k in show},
                     **{f"test_{k}_std": r.get("test_std", {}).get(k, 0.0) for k in show}})
    summary = {"command": command, "select_metric": select, "trials": trials,
               "selected": done[0] if done else None,
               "results": {str(i): results[i] for i in done}}
    with open(os.path.join(workdir, "tune.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if rows:
        with open(os.path.join(workdir, "tune.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    with open(os.path.join(workdir, "tune.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    print("\n".join(lines))
    return summary


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("diffrec_jax").setLevel(std_logging.INFO)
    base = _CONFIG.value
    space = parse_space(_SPACE.value)
    trials = make_trials(space, _SEARCH.value, _TRIALS.value, _SEARCH_SEED.value)
    for t in trials:  # fail on a bad path before any training
        apply(base, t)
    shard, n_shards = (int(x) for x in _SHARD.value.split("/"))
    if not 0 <= shard < n_shards:
        raise ValueError(f"--shard {_SHARD.value!r}: need 0 <= i < n")
    os.makedirs(_WORKDIR.value, exist_ok=True)
    with open(os.path.join(_WORKDIR.value, "trials.json"), "w") as f:
        json.dump(trials, f, indent=2, default=str)
    if not _SUMMARY_ONLY.value:
        for i, ov in enumerate(trials):
            if i % n_shards != shard:
                continue
            logging.warning("trial %d/%d: %s", i, len(trials), ov or "(config as given)")
            run_trial(apply(base, ov), os.path.join(_WORKDIR.value, f"trial_{i:03d}"), _NUM_SEEDS.value)
    results = {}
    for i in range(len(trials)):
        p = os.path.join(_WORKDIR.value, f"trial_{i:03d}", "results.json")
        if os.path.exists(p):
            with open(p) as f:
                results[i] = json.load(f)
    summarize(trials, results, base.eval.select_metric, _WORKDIR.value, " ".join(sys.argv))


if __name__ == "__main__":
    from diffrec_jax import cli

    cli.refuse_repeated_overrides(sys.argv[1:])  # before absl parses (and concatenates) them
    app.run(main)
