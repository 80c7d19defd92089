"""DiffuRec on Amazon Beauty with the reference's defaults (diffurec.md section 7).

    python experiments/main.py --config=configs/diffurec_beauty.py --workdir=/work/runs/diffurec_beauty
    python experiments/main.py --config=configs/diffurec_beauty.py:corrected --workdir=...

H = 128, 4 blocks x 4 heads, FFN 4H, dropout 0.1, embedding dropout 0.3, L = 50, T = 32 with the
``trunc_lin`` schedule, lambda ~ N(0.001, 0.001), Adam lr 1e-3 with StepLR(100 epochs, x0.1), batch
512, up to 500 epochs, validation every 20 epochs with patience 5 evaluations, test once on the
kept model. HR/NDCG@{5,10,20} on full ranking.

Variants (``:faithful``, the default, or ``:corrected``):

* faithful: padding masked on query rows (real queries attend to padding), padding row ranked,
  metrics averaged per batch of 512 (``eval.protocol="reference"``), "any metric improved" selection;
* corrected: key-padding mask, padding row removed from the ranking, exact per-user means,
  selection on validation NDCG@10; with the key mask the output ignores padding, so batches are
  built from histories of similar length and cut to widths 4/8/16/32/50 (about 4.5x fewer tokens
  on Beauty; identical results for evaluation).

* collapsed (a named variant, not the paper): the faithful model, but padding is collapsed into one
  column in training *and* evaluation (``train.collapse_padding``, ``eval.collapse_padding``), with
  length-bucketed training batches. In evaluation the collapse is exact up to the per-position
  lambda draws of the padding; in training the padding columns also share one dropout draw (see
  ``diffrec_jax.models.diffurec``). About 5x fewer tokens on Beauty.

``--config.eval.collapse_padding=True`` on the faithful config evaluates the faithful model with
the padding collapsed (same model, same training; histories batched by the width they need, from
``eval.length_buckets``).

``--config.sampling.mode=one_step`` replaces the 32-step reverse process by one Approximator call
(32x cheaper evaluation; see ``diffrec_jax.models.diffurec.measure_reverse_effect``).
"""

import os

import ml_collections

from configs import default

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "diffurec", "amazon_beauty")


# widths of the collapsed form's batches (plus L = 50): training compiles one program per width,
# evaluation cuts rows sorted by need into batches of 512, each at the smallest width holding it
TRAIN_WIDTHS = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40)
EVAL_WIDTHS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 18, 20, 24, 28, 32, 40)
VARIANTS = ("faithful", "corrected", "collapsed")


def get_config(variant: str = "faithful"):
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    collapsed = variant == "collapsed"
    faithful = variant in ("faithful", "collapsed")
    c = default.get_config()
    c.task = "sequential"
    c.seed = 1997  # the reference's seed
    c.data = ml_collections.ConfigDict()
    c.data.source = "diffurec_npz"
    c.data.dir = os.path.normpath(_DATA)
    c.data.max_len = 50
    c.data.on_long = "truncate"  # the reference keeps the last 50 items

    c.model = ml_collections.ConfigDict()
    c.model.name = "diffurec"
    c.model.hidden = 128
    c.model.num_blocks = 4
    c.model.num_heads = 4
    c.model.dropout = 0.1
    c.model.emb_dropout = 0.3
    c.model.lambda_mean = 0.001
    c.model.lambda_std = 0.001
    c.model.mask_mode = "query" if faithful else "key"
    c.model.pos_emb = False  # the reference's position table is never used

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "trunc_lin"
    c.diffusion.steps = 32

    c.sampling = ml_collections.ConfigDict()
    c.sampling.mode = "reverse"  # reverse | one_step

    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.optim.lr_decay_every_epochs = 100  # StepLR(step_size=100, gamma=0.1)
    c.optim.lr_decay_factor = 0.1

    c.train.batch_size = 512
    c.train.num_epochs = 500
    c.train.eval_every_epochs = 20
    c.train.patience_epochs = 101  # stop once 101 epochs passed without a better one: 5 evaluations
    c.train.sampling = "permutation"
    c.train.scan_steps = 16  # 257 steps per epoch
    # corrected: batches of similar history length cut to that width (exact with the key mask)
    c.train.length_buckets = (4, 8, 16, 32) if variant == "corrected" else TRAIN_WIDTHS if collapsed else ()
    # collapsed variant: one padding column with bias log(#pads) in training (not the reference)
    c.train.collapse_padding = collapsed
    c.train.max_to_keep = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.topk = (5, 10, 20)
    c.eval.select_metric = "ndcg@10"
    c.eval.select_rule = "any" if faithful else "metric"
    c.eval.select_digits = 6
    c.eval.batch_size = 512
    c.eval.protocol = "reference" if faithful else "exact"
    c.eval.score_padding = faithful
    c.eval.drop_remainder_of = 0
    c.eval.batch_mean_of = 512
    c.eval.test_at_end = True
    # exact for evaluation when the padding's lambda draws are equal (diffrec_jax.models.diffurec)
    c.eval.collapse_padding = collapsed
    c.eval.length_buckets = EVAL_WIDTHS if faithful else ()  # () -> train.length_buckets
    return c
