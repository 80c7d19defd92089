"""LightGCN item embeddings for L-DiffRec's clustering: train LightGCN, keep its best items."""

from __future__ import annotations

import os

import numpy as np

from diffrec_jax.checkpointing import Checkpointer
from diffrec_jax.data import load
from diffrec_jax.models.lightgcn import LightGCN
from diffrec_jax.training import train_and_evaluate


def pretrain_item_embeddings(config, data, workdir: str) -> np.ndarray:
    """Trains LightGCN with the standard trainer and returns its best item embeddings.

    Runs :func:`diffrec_jax.training.train_and_evaluate` (resuming any run in ``workdir``), restores
    the best validation parameters from ``workdir/best`` (``workdir/best/seed_<seed>``, the first
    replica's, when ``config.num_seeds > 1``) and saves the final propagated item embeddings to
    ``workdir/item_emb.npy`` (the file L-DiffRec clusters items with).

    Args:
      config: a config with ``model.name == "lightgcn"``.
      data: the dataset (an :class:`~diffrec_jax.data.InteractionData`), or None to load
        ``config.data``.
      workdir: run directory.

    Returns:
      float32 ``[I, emb_dim]`` item embeddings.
    """
    if config.model.name != "lightgcn":
        raise ValueError(
            f"config.model.name must be 'lightgcn' to pretrain item embeddings, got {config.model.name!r}"
        )
    if data is None:
        data = load(config.data)
    train_and_evaluate(config, workdir, data=data)
    best_dir = os.path.join(workdir, "best")
    if int(config.get("num_seeds", 1)) > 1:  # several replicas: the first seed's best parameters
        best_dir = os.path.join(best_dir, f"seed_{int(config.seed)}")
    best = Checkpointer(best_dir, max_to_keep=1)
    try:
        params, _ = best.restore_untyped()
    finally:
        best.close()
    emb = LightGCN(config, data).item_embeddings(params)
    np.save(os.path.join(workdir, "item_emb.npy"), emb)
    return emb
