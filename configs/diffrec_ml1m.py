"""DiffRec on ML-1M clean with the reference's best hyperparameters (spec section 10).

    python experiments/main.py --config=configs/diffrec_ml1m.py \
        --config.data.dir=../shared/data/diffrec/ml-1m_clean --workdir=runs/diffrec_ml1m

lr 1e-3, dims [200, 600], emb 10, T=40, noise_scale 0.005, noise_min 0.005, noise_max 0.01,
x0 prediction, reweight, sampling_steps 0, no sampling noise, batch 400, up to 1000 epochs with
evaluation every 5 and early stopping after 20 epochs without a better validation Recall@20.

``configs/diffrec_ml1m.py:tuned`` is the same model with the hyperparameters our search selected on
**validation** Recall@20 (``experiments/tune.py``, 17 finished trials of a 30-trial random search over
lr, dims, T, noise_scale, noise_max and patience, 3 seeds each; README "DiffRec reproduction"):
lr 1e-4, T = 100, noise_scale 0.01 and early stopping after 50 epochs without improvement.
"""

from configs import default


def get_config(variant: str = "reference"):
    if variant not in ("reference", "tuned"):
        raise ValueError(f"variant must be 'reference' or 'tuned', got {variant!r}")
    c = default.get_config()
    c.data.source = "diffrec_npy"
    c.data.dir = "../shared/data/diffrec/ml-1m_clean"
    c.model.name = "diffrec"
    c.model.dims = (200, 600)
    c.model.emb_size = 10
    c.diffusion.steps = 40
    c.diffusion.noise_scale = 0.005
    c.diffusion.noise_min = 0.005
    c.diffusion.noise_max = 0.01
    c.diffusion.mean_type = "x0"
    c.diffusion.reweight = True
    c.sampling.noise_steps = 0
    c.sampling.noise = False
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.train.batch_size = 400
    c.train.num_epochs = 1000
    c.train.eval_every_epochs = 5
    c.train.patience_epochs = 20
    if variant == "tuned":
        c.optim.lr = 1e-4
        c.diffusion.steps = 100
        c.diffusion.noise_scale = 0.01
        c.train.patience_epochs = 50
    return c
