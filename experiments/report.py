"""Render a run directory to ``report.md`` + PNG plots, or compare the runs below a folder.

    python experiments/report.py --path=runs/diffrec_ml1m
    python experiments/report.py --path=runs/repro_diffrec_ml1m           # folder of runs
    python experiments/report.py --path=runs/sweep --metrics=recall@20,ndcg@20 --out_dir=/tmp/rep
    python experiments/report.py --path=runs/diffrec_ml1m --tensorboard   # + TensorBoard events

A run directory (it holds ``results.json``) gets ``report.md``, ``learning_curve.png`` and
``metrics_by_k.png``. A folder of runs gets ``comparison.{md,csv,png}`` (one row per run, then
mean ± std over runs that differ only in the seed) and a report per run. ``--tensorboard``
writes ``<run>/tensorboard/`` event files when ``tensorboardX`` or ``tensorboard`` is installed.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from diffrec_jax import report  # noqa: E402

_PATH = flags.DEFINE_string("path", None, "A run directory, or a folder with runs below it.")
_OUT = flags.DEFINE_string("out_dir", None, "Where to write (default: next to the runs).")
_METRICS = flags.DEFINE_list("metrics", None, "Comparison columns, e.g. recall@20,ndcg@20.")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "valid"], "Split of the comparison table.")
_PLOTS = flags.DEFINE_bool("plots", True, "Draw the PNG plots (needs matplotlib).")
_TB = flags.DEFINE_bool("tensorboard", False, "Also write TensorBoard event files per run.")
flags.mark_flags_as_required(["path"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    out = report.render(_PATH.value, _OUT.value, plots=_PLOTS.value, metrics=_METRICS.value,
                        split=_SPLIT.value)
    if _TB.value:
        runs = report.find_runs(_PATH.value) or [_PATH.value]
        logdirs = [
            report.write_tensorboard(
                d, None if _OUT.value is None
                else os.path.join(_OUT.value, os.path.relpath(d, _PATH.value), "tensorboard"))
            for d in runs
        ]
        out["tensorboard"] = [d for d in logdirs if d is not None] or "not installed: skipped"
    for k, v in out.items():
        for p in v if isinstance(v, list) else [v]:
            print(f"{k}: {p}")


if __name__ == "__main__":
    app.run(main)
