"""T-DiffRec on ML-1M clean: the DiffRec ML-1M configuration fed time-weighted train rows (spec section 9).

    python experiments/main.py --config=configs/tdiffrec_ml1m.py --workdir=runs/tdiffrec_ml1m

Each user's train interactions (chronological in the DiffRec files) get weights
linspace(w_min, w_max, n_u), oldest w_min, newest w_max; history masks stay binary. The reference
has no ML-1M T-DiffRec configuration, so (w_min, w_max) was chosen by validation Recall@20 (seed 1,
full runs with early stopping) from the grid {(0.1, 1.0), (0.3, 1.0), (0.5, 1.0)}
(``TIME_WEIGHT_GRID``). Everything else is configs/diffrec_ml1m.py.

Grid results (seed 1, ``--config.data.time_weights="(w,1.0)"``; every run's best epoch was 20):

=============  ============  ==========  =========
(w_min,w_max)  valid R@20    test R@20   test N@20
=============  ============  ==========  =========
(0.1, 1.0)     0.1146        0.1974      0.1317
(0.3, 1.0)     0.1157        0.1946      0.1277
(0.5, 1.0)     **0.1162**    0.1891      0.1229
=============  ============  ==========  =========

Chosen by validation: (0.5, 1.0). (Test favours 0.1 — not used for selection. Our DiffRec gets
test R@20 0.1731 ± 0.0023 over seeds 1-3, so all three beat it.)
"""

from configs import diffrec_ml1m

# Declared grid of (w_min, w_max), searched by validation Recall@20 with seed 1.
TIME_WEIGHT_GRID = ((0.1, 1.0), (0.3, 1.0), (0.5, 1.0))
TIME_WEIGHTS = (0.5, 1.0)  # best validation Recall@20 of the grid (see the docstring)


def get_config():
    c = diffrec_ml1m.get_config()
    c.data.time_weights = TIME_WEIGHTS  # (w_min, w_max) chronological weights of train rows
    return c
