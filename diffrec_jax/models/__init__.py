"""Recommendation models. ``get_model(config, data)`` builds the one a config names.

One registry (``_REGISTRY``: name -> task and class) holds every model; :func:`task_of` says which
task trains it (:mod:`diffrec_jax.training`). Models never import training code.

Every interaction model is a class ``Model(config, data)`` following one contract (see
:class:`diffrec_jax.models.diffrec.DiffRec`), used by :mod:`diffrec_jax.training.interactions`:

* ``init(key) -> (graphdef, params, model_state)``: ``params`` are trained, ``model_state`` holds
  other arrays that the loss updates (e.g. DiffRec's loss history); both are checkpointed;
* ``loss(params, model_state, x_BxI, mask_B, key) -> (loss, (model_state, aux))`` on a batch of user
  rows (``mask_B`` False for padding rows);
* ``score(params, model_state, x_BxI, key) -> scores_BxI`` for ranking (history is masked later);
* optional ``optimizer(optim_config) -> optax.GradientTransformation`` to replace the default
  AdamW (e.g. separate learning rates per parameter group);
* optional ``closed_form = True`` with ``fit(key) -> (params, model_state)``: no gradient
  training; the trainer fits once, evaluates once and writes the same ``results.json``
  (EASE, ItemKNN, ...).
"""

from __future__ import annotations

import importlib

from diffrec_jax.models.diffrec import DiffRec
from diffrec_jax.models.mlp import DiffRecDenoiser, count_params, timestep_embedding

# name -> (task, "module:Class"); modules are imported when a config asks for the model. A class
# may define a static ``validate_config(config)`` that refuses bad settings naming the field.
TASKS = ("interactions", "sequential", "rerank")
_REGISTRY: dict = {
    "diffrec": ("interactions", "diffrec_jax.models.diffrec:DiffRec"),
    "ldiffrec": ("interactions", "diffrec_jax.models.ldiffrec:LDiffRec"),
    "ease": ("interactions", "diffrec_jax.models.baselines:EASE"),
    "itemknn": ("interactions", "diffrec_jax.models.baselines:ItemKNN"),
    "rp3beta": ("interactions", "diffrec_jax.models.baselines:RP3beta"),
    "multvae": ("interactions", "diffrec_jax.models.multvae:MultVAE"),
    "lightgcn": ("interactions", "diffrec_jax.models.lightgcn:LightGCN"),
    "diffkg": ("interactions", "diffrec_jax.models.diffkg:DiffKG"),
    "bspm": ("interactions", "diffrec_jax.models.bspm:BSPM"),
    "giffcf": ("interactions", "diffrec_jax.models.giffcf:GiffCF"),
    "flowcf": ("interactions", "diffrec_jax.models.flowcf:FlowCF"),
    "sasrec": ("sequential", "diffrec_jax.models.seq:SASRec"),
    "dreamrec": ("sequential", "diffrec_jax.models.dreamrec:DreamRec"),
    "diffurec": ("sequential", "diffrec_jax.models.diffurec:DiffuRec"),
    "preferdiff": ("sequential", "diffrec_jax.models.preferdiff:PreferDiff"),
    "dcdr": ("rerank", "diffrec_jax.models.dcdr:DCDR"),
}


def available(task: str | None = None) -> list[str]:
    """Names of the registered models (values of ``config.model.name``), of one task or all."""
    return sorted(n for n, (t, _) in _REGISTRY.items() if task in (None, t))


def task_of(name: str) -> str:
    """The task a registered model belongs to (``interactions``, ``sequential`` or ``rerank``)."""
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise ValueError(f"config.model.name: unknown model {name!r}; available: {available()}") from None


def validate_config(config) -> None:
    """Checks the model-specific fields of ``config`` (raises ValueError naming the field)."""
    cls = get_class(config.model.name)
    if hasattr(cls, "validate_config"):
        cls.validate_config(config)


def get_model(config, data):
    """Instantiates ``config.model.name`` for a dataset (the data object of its task)."""
    validate_config(config)
    return get_class(config.model.name)(config, data)


def register(name: str, cls, task: str = "interactions") -> None:
    """Registers a model class ``cls(config, data)`` (or a ``"module:Class"`` string) under ``name``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    _REGISTRY[name] = (task, cls)


def get_class(name: str, task: str | None = None):
    """The model class registered under ``name`` (of ``task``, when given)."""
    t = task_of(name)
    if task is not None and t != task:
        raise ValueError(f"config.model.name: {name!r} is a {t} model, not a {task} one; "
                         f"{task} models: {available(task)}")
    entry = _REGISTRY[name][1]
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = getattr(importlib.import_module(module), cls)
    return entry


__all__ = ["DiffRec", "DiffRecDenoiser", "TASKS", "available", "count_params", "get_class", "get_model",
           "register", "task_of", "timestep_embedding"]
