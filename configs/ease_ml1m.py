"""EASE (Steck, WWW 2019) on ML-1M clean: a closed-form fit (seconds on CPU), evaluated once.

    python experiments/main.py --config=configs/ease_ml1m.py --workdir=runs/ease_ml1m

Selection by validation Recall@20 only, grid over ``model.l2`` (lambda):
50: 0.1082, 100: 0.1115, 200: 0.1147, 300: 0.1169, 500: 0.1175, 1000: 0.1180 (chosen),
2000: 0.1167. The chosen fit gives test Recall@20 0.1816 / NDCG@20 0.1165.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.source = "diffrec_npy"
    c.data.dir = "../shared/data/diffrec/ml-1m_clean"
    c.model.name = "ease"
    c.model.l2 = 1000.0  # lambda of ||X - XB||^2 + lambda ||B||^2 s.t. diag(B) = 0 (grid above)
    return c
