"""FlowCF accuracy against the number of sampling steps, on a trained run (evaluation only).

    python experiments/flowcf_steps.py --run=runs/flowcf_ml1m --steps=1,2,5,9 \
        --out=results/flowcf_ml1m/steps.json

Restores every seed of the run (``diffrec_jax.inference.load(run, seed=s)``), rebuilds the model
with ``sampling.steps = n`` for each ``n`` (``1 <= n <= diffusion.steps``; the parameters are shared)
and runs the trainer's own full-ranking evaluation (``diffrec_jax.train.evaluate``: validation
masks the train rows, test masks train and validation), so ``n`` equal to the run's
``sampling.steps`` reproduces its ``results.json``. Writes validation and test metrics per seed,
their mean and sample std (ddof 1, as the trainer's), and the evaluation seconds (the first call
per ``n`` and seed compiles; the second, timed, call does not).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffrec_jax import inference, models  # noqa: E402
from diffrec_jax.training.interactions import DeviceData, evaluate  # noqa: E402
from diffrec_jax.training.steps import TrainState  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--steps", default="1,2,5,9")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    steps = [int(s) for s in a.steps.split(",")]
    cfg0 = inference._load_config(a.run)
    seeds = [int(cfg0.seed) + i for i in range(int(cfg0.get("num_seeds", 1) or 1))]
    recs = [inference.load(a.run, seed=s) for s in seeds]
    data = recs[0].data
    dd = DeviceData.from_data(data)
    out = {"run": a.run, "trained_sampling_steps": int(cfg0.sampling.steps), "n_steps": int(cfg0.diffusion.steps),
           "seeds": seeds, "epochs": [int(r.epoch) for r in recs], "rows": []}
    for n in steps:
        cfg = cfg0.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.sampling.steps = n
        model = models.get_model(cfg, data)
        model.init(jax.random.key(0))
        per_seed, secs = [], []
        for s, rec in zip(seeds, recs):
            st = TrainState(jnp.zeros((), jnp.int32), rec.params, None, rec.model_state)
            key = jax.random.split(jax.random.key(s), 3)[2]
            evaluate(model, st, dd, data.n_users, cfg.eval, key)  # compile
            t0 = time.perf_counter()
            res = evaluate(model, st, dd, data.n_users, cfg.eval, key)
            secs.append(time.perf_counter() - t0)
            per_seed.append(res)
        row = {"steps": n, "eval_s": float(np.mean(secs)), "ms_per_user": 1e3 * float(np.mean(secs)) / data.n_users}
        for split in ("valid", "test"):
            for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
                v = [r[split][m] for r in per_seed]
                row[f"{split}/{m}"] = float(np.mean(v))
                row[f"{split}/{m}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # as training.loop.mean_std
                row[f"{split}/{m}_per_seed"] = [float(x) for x in v]
        out["rows"].append(row)
        print(f"steps={n}: valid R@20 {row['valid/recall@20']:.4f}  test R@10 {row['test/recall@10']:.4f} "
              f"R@20 {row['test/recall@20']:.4f} ± {row['test/recall@20_std']:.4f}  N@10 {row['test/ndcg@10']:.4f} "
              f"N@20 {row['test/ndcg@20']:.4f}  eval {row['eval_s']:.2f}s", flush=True)
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
