"""SASRec baseline on YooChoose, in DreamRec's harness (same rows, splits and metrics).

    python experiments/main.py --config=configs/sasrec_yc.py --workdir=/work/runs/sasrec_yc

DreamRec's ``SASRec.py`` settings where they apply: d = 64, 1 block, 1 head, dropout 0.1, lr 1e-3,
batch 256, L = 10, learned positions; the same (history, next) rows as DreamRec, full ranking of the
9,514 items (padding row removed), HR/NDCG@{10,20,50} over every row. The reference trains with
BCE against one uniform negative (``model.loss="bce"``, weight decay 1e-6); the default here is
full-softmax cross-entropy, the stronger and standard objective.
"""

import os

import ml_collections

from configs import default

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "dreamrec", "yc")


def get_config():
    c = default.get_config()
    c.task = "sequential"
    c.seed = 100
    c.data = ml_collections.ConfigDict()
    c.data.source = "dreamrec_npz"
    c.data.dir = os.path.normpath(_DATA)
    c.data.max_len = 10
    c.data.on_long = "error"

    c.model = ml_collections.ConfigDict()
    c.model.name = "sasrec"
    c.model.hidden = 64
    c.model.num_blocks = 1
    c.model.num_heads = 1
    c.model.dropout = 0.1
    c.model.loss = "ce"  # ce | bce
    c.model.pos_emb = True

    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0

    c.train.batch_size = 256
    c.train.num_epochs = 100
    c.train.eval_every_epochs = 1
    c.train.patience_epochs = 6  # stop once 6 epochs passed without a better one
    c.train.sampling = "permutation"
    c.train.scan_steps = 209  # 1,669 steps per epoch
    c.train.max_to_keep = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.topk = (10, 20, 50)
    c.eval.select_metric = "hr@20"
    c.eval.select_rule = "metric"
    c.eval.select_digits = 5
    c.eval.batch_size = 2000
    c.eval.protocol = "exact"
    c.eval.score_padding = False
    c.eval.drop_remainder_of = 100
    c.eval.batch_mean_of = 0
    c.eval.test_at_end = False
    return c
