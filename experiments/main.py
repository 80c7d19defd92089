"""Launcher for every model: train, evaluate, write ``results.json``.

    python experiments/main.py --config=configs/diffrec_ml1m.py --workdir=runs/diffrec_ml1m \
        --config.data.dir=../shared/data/diffrec/ml-1m_clean --config.optim.lr=1e-3

Any config field can be overridden with ``--config.<group>.<field>=value`` (each at most once: ml_collections
would concatenate repeated tuple values, so the launcher refuses repeats). Re-running with the same
``--workdir`` resumes from the latest checkpoint.

Several hosts: run the same command on every host with ``--distributed`` (TPU pods and SLURM are
detected by ``jax.distributed.initialize``), or name the coordinator yourself::

    python experiments/main.py ... --distributed --coordinator=host0:1234 --num_processes=2 --process_id=0
    python experiments/main.py ... --distributed --coordinator=host0:1234 --num_processes=2 --process_id=1

The mesh then spans every host's devices; each process loads the same data, and only process 0
writes ``metrics.jsonl``; the workdir must be on a file system that every host sees.
"""

import logging as std_logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffrec_jax import cli, training  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, results).")
_DIST = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (several hosts).")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 (else auto-detected).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (else auto-detected).")
_PID = flags.DEFINE_integer("process_id", None, "This process's id (else auto-detected).")
_CPU_GLOO = flags.DEFINE_bool("cpu_collectives", False, "CPU-only clusters: gloo collectives across processes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Orbax logs every save at INFO through absl; keep the library's own progress lines only.
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("diffrec_jax").setLevel(std_logging.INFO)
    if _DIST.value:
        import jax

        if _CPU_GLOO.value:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
    # bad data or settings: one line, no traceback (DIFFREC_TRACEBACK=1 shows it)
    results = cli.one_line_errors(training.train_and_evaluate, _CONFIG.value, _WORKDIR.value)
    keys = [k for k in ("recall@10", "recall@20", "ndcg@10", "ndcg@20") if k in results["test"]]
    print(
        f"best epoch {results['best_epoch']}: test "
        + "  ".join(f"{k}={results['test'][k]:.4f}" for k in keys)
        + f"  -> {os.path.join(_WORKDIR.value, 'results.json')}"
    )


if __name__ == "__main__":
    cli.refuse_repeated_overrides(sys.argv[1:])  # before absl parses (and concatenates) them
    app.run(main)
