"""Benchmark suite of diffrec_jax: every model's speed and memory, reverse steps, scaling, top-k.

A script, never a timed unit test. Run from the repository root::

    python experiments/bench_suite.py --quick --out=/tmp/bench_suite_quick     # < 2 min, tiny sizes
    python experiments/bench_suite.py --out=results/bench_suite                  # the full suite
    python experiments/bench_suite.py --parts=steps,topk                         # some parts only

This file holds the flags and runs the parts; each part lives in its own module of
``experiments/bench/`` (the package docstring lists them and what each measures):

    models  -> bench/model_speed.py     steps -> bench/reverse_steps.py   scaling -> bench/scaling.py
    topk    -> bench/topk.py            seeds -> bench/seeds.py
    shared helpers -> bench/common.py   markdown report and plots -> bench/report.py
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/, for ``bench``

from bench.common import environment, gpu_note, loadavg, short_error  # noqa: E402
from bench.model_speed import part_models  # noqa: E402
from bench.report import markdown, write_outputs  # noqa: E402
from bench.reverse_steps import part_steps  # noqa: E402
from bench.scaling import part_scaling  # noqa: E402
from bench.seeds import part_seeds  # noqa: E402
from bench.topk import part_topk  # noqa: E402

PARTS = ("models", "steps", "scaling", "topk", "seeds")


def define_flags():
    """Defines the absl flags (only when run as a script, so importing this module defines none)."""
    from absl import flags

    flags.DEFINE_string("out", "results/bench_suite", "Output folder (JSON, markdown, PNG).")
    flags.DEFINE_bool("quick", False, "Tiny sizes: the whole suite in about 2 minutes.")
    flags.DEFINE_string("data_dir", "../shared/data/diffrec/ml-1m_clean",
                        "DiffRec-format ML-1M clean folder (synthetic data of its shape if absent).")
    flags.DEFINE_list("parts", list(PARTS), f"Parts to run, among {','.join(PARTS)}.")
    flags.DEFINE_string("diffrec_run", "/work/runs/repro_diffrec_ml1m/seed_1",
                        "Run folder of a trained DiffRec (its best/ checkpoint is read, never written).")
    flags.DEFINE_integer("fallback_epochs", 10, "Epochs to train DiffRec when --diffrec_run has none.")
    flags.DEFINE_list("models", [], "Subset of model labels for part 1 (default: every config).")
    flags.DEFINE_integer("scaling_hidden", 64, "Hidden width of the scaling model [I -> H -> I].")
    flags.DEFINE_float("mem_budget_gb", 24.0, "Memory a scaling point may use (also capped by "
                       "MemAvailable at that moment).")
    flags.DEFINE_integer("chunk_size", 131072, "Items per chunk of the exact top-k in scaling.")
    flags.DEFINE_integer("seed", 0, "Seed of every random draw.")
    flags.DEFINE_list("seeds_k", ["1", "3"], "Part 5: numbers of vmapped seeds to time (1 first).")
    return flags.FLAGS


def run_suite(*, out: str, quick: bool, parts: Sequence[str], data_dir: str, diffrec_run: str,
              fallback_epochs: int, model_names: Sequence[str], scaling_hidden: int,
              mem_budget_gb: float, chunk_size: int, seed: int, command: str = "",
              seeds_k: Sequence[int] = (1, 3)) -> dict:
    """Runs the requested parts, writing the outputs after each; returns the results."""
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ValueError(f"--parts: unknown part(s) {bad}; choose among {list(PARTS)}")
    run_part = {
        "models": lambda: part_models(data_dir, quick, model_names, seed),
        "steps": lambda: part_steps(data_dir, diffrec_run, quick, 1 if quick else fallback_epochs, seed),
        "scaling": lambda: part_scaling(quick, scaling_hidden, mem_budget_gb, chunk_size, seed),
        "topk": lambda: part_topk(quick, seed),
        "seeds": lambda: part_seeds(data_dir, quick, seeds_k, seed),
    }
    res: dict = {"quick": quick, "command": command, "environment": environment(), "errors": {}}
    print(f"[env] {res['environment']['devices']}, {res['environment']['cpu_count']} cores, "
          f"load {res['environment']['loadavg_start']}; {gpu_note()}", flush=True)
    for part in PARTS:
        if part not in parts:
            continue
        start_load, t0 = loadavg(), time.perf_counter()
        try:
            out_part = run_part[part]()
            out_part["loadavg"] = {"start": start_load, "end": loadavg()}
            out_part["wall_s"] = time.perf_counter() - t0
            res[part] = out_part
        except Exception as e:  # noqa: BLE001  (report and go on with the other parts)
            res["errors"][part] = short_error(e, 400)
            print(f"[{part}] FAILED: {short_error(e, 400)}", flush=True)
        print(f"[{part}] done in {time.perf_counter() - t0:.1f}s", flush=True)
        res["loadavg_end"] = loadavg()
        write_outputs(res, out)
    return res


def main(argv):
    """absl entry point."""
    del argv
    from absl import flags

    f = flags.FLAGS
    res = run_suite(
        out=f.out, quick=f.quick, parts=f.parts, data_dir=f.data_dir, diffrec_run=f.diffrec_run,
        fallback_epochs=f.fallback_epochs, model_names=f.models, scaling_hidden=f.scaling_hidden,
        mem_budget_gb=f.mem_budget_gb, chunk_size=f.chunk_size, seed=f.seed,
        command=" ".join(sys.argv), seeds_k=[int(k) for k in f.seeds_k],
    )
    print(markdown(res))
    print(f"wrote {os.path.join(f.out, 'bench_suite.json')} and bench_suite.md")


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(main)
