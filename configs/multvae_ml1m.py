"""Mult-VAE (Liang et al., WWW 2018) on ML-1M clean with the paper's architecture and training.

    python experiments/main.py --config=configs/multvae_ml1m.py --workdir=runs/multvae_ml1m

[I -> 600 -> 2x200] tanh encoder, [200 -> 600 -> I] decoder, input dropout 0.5, Adam lr 1e-3,
no weight decay, batch 500 users, up to 200 epochs, evaluation every 5 epochs and early stopping
after 20 epochs without a better validation Recall@20. The KL weight follows the reference,
``beta = min(anneal_cap, step / total_anneal_steps)`` with cap 0.2 and 200000 steps; with 12 steps
per epoch on ML-1M it stays below 0.012, so the grid is over ``model.total_anneal_steps`` (runs
capped at 60 epochs, ``--config.train.num_epochs=60``; selection by validation Recall@20 only):

    total_anneal_steps   best epoch   valid R@20   test R@20   test N@20
    200000 (chosen)      35           0.1104       0.1704      0.1059   (early stop at epoch 55)
    2000 (cap at 400)    60           0.1101       0.1730      0.1066   (still rising at 60)
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.source = "diffrec_npy"
    c.data.dir = "../shared/data/diffrec/ml-1m_clean"
    c.model.name = "multvae"
    c.model.enc_dims = (600, 200)  # encoder widths, latent last (decoder mirrors them)
    c.model.dropout = 0.5  # input dropout after L2-normalising the row
    c.model.anneal_cap = 0.2  # maximum KL weight beta
    c.model.total_anneal_steps = 200000  # optimizer steps for beta to grow linearly from 0 to 1
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.train.batch_size = 500
    c.train.num_epochs = 200
    c.train.eval_every_epochs = 5
    c.train.patience_epochs = 20
    return c
