"""RP3beta (Paudel et al., ACM TiiS 2017) on ML-1M clean: a closed-form random-walk item-item model.

    python experiments/main.py --config=configs/rp3beta_ml1m.py --workdir=runs/rp3beta_ml1m

Closed form (seconds on CPU), evaluated once. Selection by validation Recall@20 only. Grid
(topk x alpha x beta), valid Recall@20:

    topk 50/100/200, alpha 0.5, beta 0/0.2/0.4/0.6: best 0.1073 / 0.1075 / 0.1091 at beta 0.6
    topk 50/100/200, alpha 1.0, beta 0/0.2/0.4/0.6: best 0.1014 / 0.1045 / 0.1091
    topk 100/200, alpha 0.5, beta 0.7/0.8/1.0: 0.1096/0.0932/0.0162, 0.1128/0.0991/0.0179
    topk 100/200, alpha 1.0, beta 0.7/0.8/1.0: 0.0919/0.0611/0.0148, 0.1007/0.0724/0.0165
    alpha 0.5, beta 0.7, topk 500/1000/2810 (all): 0.1157 / 0.1163 * / 0.1159 (beta 0.6 at 500: 0.1095)

The chosen fit (topk 1000, alpha 0.5, beta 0.7) gives test Recall@20 0.1750 / NDCG@20 0.1163.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.source = "diffrec_npy"
    c.data.dir = "../shared/data/diffrec/ml-1m_clean"
    c.model.name = "rp3beta"
    c.model.topk = 1000  # entries kept per row (source item) of W (grid above)
    c.model.alpha = 0.5  # exponent of the transition probabilities P_ui, P_iu
    c.model.beta = 0.7  # popularity penalty: W_ij divided by popularity_j ** beta
    return c
