"""Benchmark suite of diffrec_jax: every model's speed and memory, reverse steps, scaling, top-k.

A script, never a timed unit test. Run from the repository root::

    python experiments/bench_suite.py --quick --out=/tmp/bench_suite_quick     # < 2 min, tiny sizes
    python experiments/bench_suite.py --out=results/bench_suite                  # the full suite
    python experiments/bench_suite.py --parts=steps,topk                         # some parts only

One module per part, ``part_<name>(...)`` in each; the launcher ``experiments/bench_suite.py``
holds the flags and runs the parts in order. Each part appends its results to ``bench_suite.json``
and ``bench_suite.md`` in ``--out`` as soon as it ends, with PNG plots beside them:

1. ``models`` (:mod:`bench.model_speed`): for every registered interaction model with a
   ``configs/<name>_ml1m.py`` (variants such as T-DiffRec included): compile time of the train
   step (fit time for closed-form models), steady-state training throughput (users/s over timed
   steps after a warm-up; a full epoch in the full suite), full-ranking evaluation latency per
   user, peak memory (the process's resident-set high-water mark, reset before each model; GPU
   peak bytes when a GPU is present), parameters, and achieved GFLOP/s from XLA's cost analysis
   beside a float32 matmul ceiling measured in the same run. DiffRec's reverse chain is also
   counted by hand (XLA counts a scan body once) and its epoch and evaluation are set against
   the PyTorch reference's figures. A model whose module is missing or that fails is listed with
   the reason.
2. ``steps`` (:mod:`bench.reverse_steps`): test Recall@20 / NDCG@20 and evaluation time of a
   trained DiffRec (loaded from ``--diffrec_run``, else trained for a few epochs) against the
   number ``n`` of reverse steps run from the user's row (``t = n-1 .. 0``), with the projected
   fast path and the generic sampler, plus the plain x0 prediction at ``t = 0``. Plot
   ``steps.png``.
3. ``scaling`` (:mod:`bench.scaling`): per-user training-step and evaluation cost of a
   DiffRec-shaped model on random sparse data, along an items axis and a users axis from 1k to 1M
   (log-spaced), with the cost exponent fitted by least squares on log-log axes. A size whose
   estimated memory does not fit (``--mem_budget_gb`` or the memory available now, whichever is
   smaller) is reported and ends its axis. Evaluation uses the chunked exact top-k above
   ``--chunk_size`` items. Plot ``scaling.png``.
4. ``topk`` (:mod:`bench.topk`): for 1e4 .. 1e6 items, ``jax.lax.top_k`` against the library's
   exact chunked top-k (several chunk sizes), ``jax.lax.approx_max_k`` (recall target 0.95, with
   its measured recall against the exact top-k) and a streamed top-k that never materialises the
   ``[B, I]`` score matrix (scan over item chunks of an output layer). Plot ``topk.png``.
5. ``seeds`` (:mod:`bench.seeds`): the cost of K seeds in one vmapped program
   (``config.num_seeds = K``) against K separate runs, for DiffRec on ML-1M clean: seconds per
   training epoch (steady state, after the compiling epoch) and per evaluation of all replicas,
   for K = 1 and K = 3 (``--seeds_k``).

Shared helpers (environment probes, timing, memory, XLA FLOP counting, data loading, the
evaluation plumbing, the trainer functions the parts use) are in :mod:`bench.common`; the
markdown report and the plots in :mod:`bench.report`.

Speed is reported as measured in this run and as ratios of numbers measured in this same run
(achieved / ceiling GFLOP/s, method / ``lax.top_k`` time, generic / projected sampler time);
load averages are recorded at the start and end of every part, because the machine may be shared.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The repository root (holds ``configs/`` and ``diffrec_jax/``); put on ``sys.path``."""
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
