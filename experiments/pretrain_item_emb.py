"""Pretrain the item embeddings L-DiffRec clusters items with: LightGCN on a config's dataset.

    python experiments/pretrain_item_emb.py --config=configs/ldiffrec_ml1m.py \
        --config.data.source=movielens --config.data.dir=../shared/data/movielens/ml-100k \
        --workdir=runs/lightgcn_ml100k

then train L-DiffRec on the same data with the embeddings:

    python experiments/main.py --config=configs/ldiffrec_ml1m.py \
        --config.data.source=movielens --config.data.dir=../shared/data/movielens/ml-100k \
        --config.model.item_emb_path=runs/lightgcn_ml100k/item_emb.npy --workdir=runs/ldiffrec_ml100k

``--config`` is any config (usually the L-DiffRec one you will train): only its ``data`` group
(any data source), ``seed`` and ``eval`` group are used, so the embedding rows are the same items,
in the same order, as L-DiffRec's. The model, optimizer and schedule come from ``--lightgcn.*``
(defaults as ``configs/lightgcn_ml1m.py``: 64 dimensions, 3 layers, L2 1e-4, Adam 1e-3, steps of
1024 users x 64 BPR pairs), e.g. ``--lightgcn.emb_dim=32 --lightgcn.num_epochs=50``. Training is
the standard trainer (resumable with the same ``--workdir``, best validation epoch kept); the best
epoch's propagated item
embeddings are written to ``<workdir>/item_emb.npy`` (float32 ``[n_items, emb_dim]``), and
copied to ``--out`` if given: ``--out=<dir of a diffrec_npy dataset>/item_emb.npy`` makes the
dataset carry them (``load_diffrec_npy`` reads ``item_emb.npy`` beside the splits).
"""

import logging as std_logging
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffrec_jax.training.pretrain import pretrain_item_embeddings  # noqa: E402


def lightgcn_defaults() -> ml_collections.ConfigDict:
    """LightGCN settings (``--lightgcn.<field>``), each commented."""
    c = ml_collections.ConfigDict()
    c.emb_dim = 64  # embedding width d (the width of item_emb.npy)
    c.n_layers = 3  # propagation layers K; the output is the mean of layers 0..K
    c.reg = 1e-4  # L2 weight on the batch's layer-0 embeddings
    c.samples_per_user = 64  # BPR (positive, negative) pairs per user and epoch
    c.init_std = 0.1  # N(0, init_std^2) initialisation
    c.lr = 1e-3  # Adam learning rate
    c.batch_size = 1024  # users per step (every step propagates the whole graph)
    c.num_epochs = 400  # maximum epochs (early stopping usually ends sooner)
    c.eval_every_epochs = 5  # evaluate (and checkpoint) every this many epochs
    c.patience_epochs = 20  # stop after this many epochs without a better validation metric
    return c


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config whose data group (and seed, eval) to use.", lock_config=True
)
_LGCN = config_flags.DEFINE_config_dict("lightgcn", lightgcn_defaults(), "LightGCN settings.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of the LightGCN training.")
_OUT = flags.DEFINE_string("out", None, "Also copy item_emb.npy to this path.")
flags.mark_flags_as_required(["config", "workdir"])


def make_config(base: ml_collections.ConfigDict, lg: ml_collections.ConfigDict):
    """``base`` with its model, optimizer and schedule replaced by LightGCN's.

    Args:
        base: any interaction config (its ``data``, ``seed`` and ``eval`` are kept).
        lg: :func:`lightgcn_defaults` with overrides.

    Returns:
        A new ConfigDict training ``lightgcn`` on ``base``'s data with one seed.
    """
    if base.get("task", "interactions") != "interactions":
        raise ValueError(
            f"--config has task={base.task!r}; item embeddings are pretrained on interaction data "
            "(user x item rows), not sequences"
        )
    c = ml_collections.ConfigDict(base.to_dict())
    c.num_seeds = 1
    c.model = ml_collections.ConfigDict({
        "name": "lightgcn", "emb_dim": lg.emb_dim, "n_layers": lg.n_layers, "reg": lg.reg,
        "samples_per_user": lg.samples_per_user, "init_std": lg.init_std,
    })
    c.optim.name = "adam"
    c.optim.lr = lg.lr
    c.optim.weight_decay = 0.0
    c.train.batch_size = lg.batch_size
    c.train.num_epochs = lg.num_epochs
    c.train.eval_every_epochs = lg.eval_every_epochs
    c.train.patience_epochs = lg.patience_epochs
    c.data.time_weights = ()  # T-DiffRec row weights do not apply to BPR
    return c


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    std_logging.getLogger("diffrec_jax").setLevel(std_logging.INFO)
    config = make_config(_CONFIG.value, _LGCN.value)
    emb = pretrain_item_embeddings(config, None, _WORKDIR.value)
    path = os.path.join(_WORKDIR.value, "item_emb.npy")
    if _OUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
        shutil.copyfile(path, _OUT.value)
        path = _OUT.value
    print(f"item embeddings {emb.shape[0]} x {emb.shape[1]} -> {path}\n"
          f"use them with: --config.model.item_emb_path={path}")


if __name__ == "__main__":
    app.run(main)
