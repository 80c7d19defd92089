"""Launcher for every model: train, evaluate, write ``results.json``.

    python experiments/main.py --config=configs/diffrec_ml1m.py --workdir=runs/diffrec_ml1m \
        --config.data.dir=../shared/data/diffrec/ml-1m_clean --config.optim.lr=1e-3

Any config field can be overridden with ``--config.<group>.<field>=value``. Re-running with the same
``--workdir`` resumes from the latest checkpoint.
"""

import logging as std_logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffrec_jax import train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, results).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Orbax logs every save at INFO through absl; keep the library's own progress lines only.
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("diffrec_jax").setLevel(std_logging.INFO)
    results = train.run(_CONFIG.value, _WORKDIR.value)
    keys = [k for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20") if k in results["test"]]
    print(
        f"best epoch {results['best_epoch']}: test "
        + "  ".join(f"{k}={results['test'][k]:.4f}" for k in keys)
        + f"  -> {os.path.join(_WORKDIR.value, 'results.json')}"
    )


if __name__ == "__main__":
    app.run(main)
