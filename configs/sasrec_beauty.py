"""SASRec baseline on Amazon Beauty, in DiffuRec's harness (same data, split and metrics).

    python experiments/main.py --config=configs/sasrec_beauty.py --workdir=/work/runs/sasrec_beauty

Same leave-one-out examples as ``configs/diffurec_beauty.py`` (every train prefix, L = 50, left
padding), full ranking, HR/NDCG@{5,10,20} as exact per-user means, test once on the model with the
best validation NDCG@10. Model: the SASRec-style causal encoder with learned positions (2 blocks,
1 head, d = 64, dropout 0.5 as SASRec's setting for the sparse Amazon data), full-softmax
cross-entropy (``model.loss="bce"`` gives SASRec's one-negative BCE), Adam lr 1e-3, batch 256.
"""

import os

import ml_collections

from configs import default

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "diffurec", "amazon_beauty")


def get_config():
    c = default.get_config()
    c.task = "sequential"
    c.seed = 1
    c.data = ml_collections.ConfigDict()
    c.data.source = "diffurec_npz"
    c.data.dir = os.path.normpath(_DATA)
    c.data.max_len = 50
    c.data.on_long = "truncate"

    c.model = ml_collections.ConfigDict()
    c.model.name = "sasrec"
    c.model.hidden = 64
    c.model.num_blocks = 2
    c.model.num_heads = 1
    c.model.dropout = 0.5
    c.model.loss = "ce"  # ce | bce
    c.model.pos_emb = True

    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0

    c.train.batch_size = 256
    c.train.num_epochs = 200
    c.train.eval_every_epochs = 2
    c.train.patience_epochs = 11  # stop once 11 epochs (5 evaluations) passed without a better one
    c.train.sampling = "permutation"
    c.train.scan_steps = 103  # 514 steps per epoch = 5 calls
    c.train.max_to_keep = 2

    c.eval = ml_collections.ConfigDict()
    c.eval.topk = (5, 10, 20)
    c.eval.select_metric = "ndcg@10"
    c.eval.select_rule = "metric"
    c.eval.select_digits = 6
    c.eval.batch_size = 1024
    c.eval.protocol = "exact"
    c.eval.score_padding = False
    c.eval.drop_remainder_of = 0
    c.eval.batch_mean_of = 512
    c.eval.test_at_end = True
    return c
