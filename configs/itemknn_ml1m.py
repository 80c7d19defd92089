"""ItemKNN (shrunk cosine item-item similarity, top-k neighbours per item) on ML-1M clean.

    python experiments/main.py --config=configs/itemknn_ml1m.py --workdir=runs/itemknn_ml1m

Closed form (seconds on CPU), evaluated once. Selection by validation Recall@20 only, grid
``model.topk`` x ``model.shrink`` in {20, 50, 100, 200, 500} x {0, 10, 100}:

    topk   shrink=0   shrink=10   shrink=100
    20     0.1022     0.1022      0.1028
    50     0.1086     0.1089      0.1074
    100    0.1100 *   0.1099      0.1067
    200    0.1082     0.1078      0.1036
    500    0.1073     0.1065      0.1020

The chosen fit (topk 100, shrink 0) gives test Recall@20 0.1702 / NDCG@20 0.1136.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.source = "diffrec_npy"
    c.data.dir = "../shared/data/diffrec/ml-1m_clean"
    c.model.name = "itemknn"
    c.model.topk = 100  # neighbours kept per (target) item (grid above)
    c.model.shrink = 0.0  # shrinkage added to the cosine denominator ||x_i|| ||x_j||
    return c
