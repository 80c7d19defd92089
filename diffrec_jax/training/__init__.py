"""Training: one loop (:mod:`~diffrec_jax.training.loop`) and each task's pieces beside it.

``train_and_evaluate(config, workdir)`` trains and evaluates the model ``config.model.name``
names, on the data ``config.data`` describes, and writes the run directory: ``config.json``,
``metrics.jsonl``, ``checkpoints/``, ``best/`` and ``results.json``. The model registry
(:mod:`diffrec_jax.models`) says which task a model belongs to:

* ``interactions`` (:mod:`~diffrec_jax.training.interactions`): user rows, full ranking;
* ``sequential`` (:mod:`~diffrec_jax.training.sequences`): next item from a history;
* ``rerank`` (:mod:`~diffrec_jax.training.rerank`): DCDR on the synthetic reranking world.

Shared pieces: :mod:`~diffrec_jax.training.steps` (train state, the one update step),
:mod:`~diffrec_jax.batching` (shared with models), :mod:`~diffrec_jax.training.optim`,
:mod:`~diffrec_jax.training.mesh`, :mod:`~diffrec_jax.training.io`.
"""

from __future__ import annotations

import logging

from diffrec_jax import data as data_lib
from diffrec_jax import models
from diffrec_jax.training import loop

log = logging.getLogger("diffrec_jax")


def build_task(config, data):
    """The task object of ``config`` on loaded ``data`` (what :func:`loop.run` trains)."""
    task = models.task_of(config.model.name)
    if task == "interactions":
        from diffrec_jax.training import interactions

        interactions.validate_config(config, data)  # every field checked before any JAX work
        models.validate_config(config)
        return interactions.InteractionTask(config, data, models.get_model(config, data))
    if task == "sequential":
        from diffrec_jax.training import sequences

        sequences.validate_config(config, data)
        models.validate_config(config)
        return sequences.SequenceTask(config, data)
    raise ValueError(f"config.model.name: {config.model.name!r} is a {task} model; it is trained by "
                     f"diffrec_jax.training.{task}")


def train_and_evaluate(config, workdir: str, *, data=None) -> dict:
    """Trains ``config.model.name`` with early stopping; returns (and writes) ``results.json``.

    Args:
      config: a ``ml_collections.ConfigDict`` as in ``configs/default.py``.
      workdir: run directory (created); an existing checkpoint there is resumed.
      data: an already loaded dataset (otherwise ``config.data`` is loaded).
    """
    task = models.task_of(config.model.name)
    declared = config.get("task")
    if declared is not None and declared != task:
        raise ValueError(f"config.task is {declared!r} but config.model.name {config.model.name!r} is a "
                         f"{task} model (diffrec_jax.models.available({task!r}))")
    loop.check_train_fields(config.train)
    if task == "rerank":
        from diffrec_jax.training import rerank

        return rerank.train_and_evaluate(config, workdir)
    data = data_lib.load(config.data) if data is None else data
    log.info("data: %s", data)
    return loop.run(build_task(config, data), config, workdir)


__all__ = ["build_task", "loop", "train_and_evaluate"]
