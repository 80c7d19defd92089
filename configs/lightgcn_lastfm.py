"""Our LightGCN on the KGCN Last.FM data (``../shared/data/lastfm_kgcn``): the baseline of DiffKG.

Same data, split (seeded per-user random 70/10/20, ``data.split_seed``), evaluation and epoch
budget as ``configs/diffkg_lastfm.py``; no KG.

    python experiments/main.py --config=configs/lightgcn_lastfm.py --workdir=runs/lightgcn_lastfm
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.source = "lastfm_kgcn"
    c.data.dir = "../shared/data/lastfm_kgcn"
    c.data.split = (0.7, 0.1, 0.2)
    c.data.split_seed = 0

    c.model.name = "lightgcn"
    c.model.emb_dim = 64
    c.model.n_layers = 2  # as DiffKG's gnn_layers
    c.model.reg = 1e-4
    c.model.samples_per_user = 8  # ~ nnz(train) / users, as DiffKG
    c.model.init_std = 0.1

    c.optim.name = "adam"
    c.optim.lr = 5e-3  # tuned on validation over {1e-3, 5e-3} (the budget DiffKG got too)
    c.train.batch_size = 128  # users per step (x 8 triples)
    c.train.num_epochs = 100
    c.train.eval_every_epochs = 1
    c.train.patience_epochs = 20
    c.eval.topk = (10, 20)
    c.eval.select_metric = "recall@20"
    c.eval.average = "nonempty"
    c.train.num_devices = 1
    return c
