"""GiffCF (Zhu et al., SIGIR 2024) on ML-1M clean with the reference's ML-1M hyperparameters.

    python experiments/main.py --config=configs/giffcf_ml1m.py --config.num_seeds=3 \
        --workdir=runs/giffcf_ml1m

Forward process: the heat-equation graph filter ``F_t(x) = x + alpha (t/T) (x A - x)`` on the
normalised item-item graph (no Gaussian noise); reverse: T = 3 alternations of the two-stage
denoiser and filter steps with residual decay 0.5 (``diffrec_jax/models/giffcf.py``). The item
count comes from the data. Batch 100, Adam 1e-3 on both parameter groups (Keras eps 1e-7), up to
1000 epochs, validation every 10 and early stopping after 200 epochs without a better validation
Recall@20, as the authors' ``movielens.toml``. On our shared CPU a full run does not fit; the
results README (``results/giffcf_ml1m/README.md``) gives the time budget we ran under.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.source = "diffrec_npy"
    c.data.dir = "../shared/data/diffrec/ml-1m_clean"
    c.model.name = "giffcf"
    c.model.embed_dim = 200  # item embedding width d
    c.model.T = 3  # diffusion steps (filter strength alpha t / T, t = 0..T)
    c.model.alpha = 1.5  # filter strength at t = T (> 1: over-smoothing, as the paper's ML-1M)
    c.model.ideal_weight = 0.0  # weight of the ideal low-pass part of the graph (0 on ML-1M)
    c.model.ideal_cutoff = 200  # eigenvectors in that part
    c.model.noise_scale = 0.0  # optional Gaussian noise on z_t (0: noise-free, as on ML-1M)
    c.model.noise_decay = 0.5  # residual decay of the reverse steps (and the noise schedule)
    c.model.dropout = 0.5  # dropout of the history condition in training
    c.model.time_dim = 20  # sinusoid width of the two scalar time embeddings
    c.model.lr_mlp = None  # learning rate of the MLPs (None: optim.lr, as the reference)
    c.optim.name = "adam"
    c.optim.lr = 1e-3  # item table (and MLPs unless model.lr_mlp)
    c.optim.eps = 1e-7  # Keras' Adam epsilon
    c.optim.weight_decay = 0.0
    c.train.batch_size = 100
    c.train.num_epochs = 1000
    c.train.eval_every_epochs = 10
    c.train.patience_epochs = 200
    c.eval.batch_size = 500
    return c
