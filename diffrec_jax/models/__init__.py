"""Recommendation models. ``get_model(config, data)`` builds the one a config names.

Every interaction model is a class ``Model(config, data)`` following one contract (see
:class:`diffrec_jax.models.diffrec.DiffRec`), used by :func:`diffrec_jax.train.train_and_evaluate`:

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

# name -> "module:Class"; modules are imported when a config asks for the model. A class may
# define a static ``validate_config(config)`` that refuses bad settings naming the field.
_REGISTRY: dict = {
    "diffrec": "diffrec_jax.models.diffrec:DiffRec",
    "ldiffrec": "diffrec_jax.models.ldiffrec:LDiffRec",
    "ease": "diffrec_jax.models.baselines:EASE",
    "itemknn": "diffrec_jax.models.baselines:ItemKNN",
    "rp3beta": "diffrec_jax.models.baselines:RP3beta",
    "multvae": "diffrec_jax.models.multvae:MultVAE",
    "lightgcn": "diffrec_jax.models.lightgcn:LightGCN",
    "diffkg": "diffrec_jax.models.diffkg:DiffKG",
    "dcdr": "diffrec_jax.models.dcdr:DCDR",
    "bspm": "diffrec_jax.models.bspm:BSPM",
    "giffcf": "diffrec_jax.models.giffcf:GiffCF",
    "flowcf": "diffrec_jax.models.flowcf:FlowCF",
}


def available() -> list[str]:
    """Names of the registered models (values of ``config.model.name``)."""
    return sorted(_REGISTRY)


def validate_config(config) -> None:
    """Checks the model-specific fields of ``config`` (raises ValueError naming the field)."""
    cls = get_class(config.model.name)
    if hasattr(cls, "validate_config"):
        cls.validate_config(config)


def get_model(config, data):
    """Instantiates ``config.model.name`` for a dataset (an :class:`InteractionData`)."""
    validate_config(config)
    return get_class(config.model.name)(config, data)


def register(name: str, cls) -> None:
    """Registers a model class ``cls(config, data)`` (or a ``"module:Class"`` string) under ``name``."""
    _REGISTRY[name] = cls


def get_class(name: str):
    """The model class registered under ``name``."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"config.model.name: unknown model {name!r}; available: {available()}") from None
    if isinstance(entry, str):
        module, cls = entry.split(":")
        entry = getattr(importlib.import_module(module), cls)
    return entry


__all__ = ["DiffRec", "DiffRecDenoiser", "available", "count_params", "get_model", "timestep_embedding"]
