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

from diffrec_jax.models import diffrec as _diffrec
from diffrec_jax.models.diffrec import DiffRec
from diffrec_jax.models.mlp import DiffRecDenoiser, count_params, timestep_embedding

_REGISTRY = {
    "diffrec": (DiffRec, _diffrec.validate_config),
}


def available() -> list[str]:
    return sorted(_REGISTRY)


def validate_config(config) -> None:
    """Checks the model-specific fields of ``config`` (raises ValueError naming the field)."""
    _lookup(config.model.name)[1](config)


def get_model(config, data):
    """Instantiates ``config.model.name`` for a dataset (an :class:`InteractionData`)."""
    cls, validate = _lookup(config.model.name)
    validate(config)
    return cls(config, data)


def register(name: str, cls, validate=None) -> None:
    """Registers a model class ``cls(config, data)`` under ``name`` (``validate(config)`` optional)."""
    _REGISTRY[name] = (cls, validate or (lambda config: None))


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"config.model.name: unknown model {name!r}; available: {available()}") from None


__all__ = ["DiffRec", "DiffRecDenoiser", "available", "count_params", "get_model", "timestep_embedding"]
