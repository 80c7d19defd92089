"""FlowCF (Liu et al., KDD 2025) on ML-1M clean with the authors' ML-1M settings.

    python experiments/main.py --config=configs/flowcf_ml1m.py --workdir=runs/flowcf_ml1m

(``--config.num_seeds=3`` trains three seeds vmapped in one program; ``--config.sampling.steps=S``
picks the number of sampling steps, 1 <= S <= ``diffusion.steps``.)

Behaviour-guided prior (each item Bernoulli(popularity)), discrete interpolation on the grid
``t = k / N`` with ``N = diffusion.steps = 9``, an MLP ``I + 10 -> 300 -> 300 -> I`` predicting the
clean row, and ``sampling.steps = 2`` discrete Euler steps from the user's own row
(``diffrec_jax/models/flowcf.py``). The item count and popularity come from the data. Adam lr 1e-3,
no weight decay, batch 4096, up to 500 epochs, validation every epoch and early stopping after 10
epochs without a better validation Recall@20 (the authors' ``flowcf.yaml``; their selection
metric was NDCG@10).

``configs/flowcf_ml1m.py:selected`` is the setting our 4-configuration search chose on
**validation** Recall@20 (one seed, 240 s of training + evaluation each; batch 4096 as above,
batch 400, batch 400 with lr 1e-4, batch 400 with dropout 0.5; ``results/flowcf_ml1m/README.md``):
batch 400 (15 updates an epoch instead of 2), validation every 2 epochs, the rest as above::

    python experiments/main.py --config=configs/flowcf_ml1m.py:selected --config.num_seeds=3 \
        --workdir=runs/flowcf_ml1m
"""

from configs import default


def get_config(variant: str = "reference"):
    if variant not in ("reference", "selected"):
        raise ValueError(f"variant must be 'reference' or 'selected', got {variant!r}")
    c = default.get_config()
    c.data.source = "diffrec_npy"
    c.data.dir = "../shared/data/diffrec/ml-1m_clean"
    c.model.name = "flowcf"
    c.diffusion.steps = 9  # discretisation steps N of the time grid t = k / N
    c.model.dims = (300, 300)  # hidden widths of the MLP (I + emb -> dims -> I)
    c.model.emb_size = 10  # timestep embedding width
    c.model.dropout = 0.1  # dropout before every linear layer
    c.model.act = "tanh"
    c.sampling.steps = 2  # network calls at inference: start at t = (N - steps) / N
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.train.batch_size = 4096
    c.train.num_epochs = 500
    c.train.eval_every_epochs = 1
    c.train.patience_epochs = 10
    c.eval.batch_size = 2048
    if variant == "selected":
        c.train.batch_size = 400
        c.train.eval_every_epochs = 2
    return c
