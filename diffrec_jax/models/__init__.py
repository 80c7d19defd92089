"""Recommendation models. ``get_model(config, data)`` builds the one a config names.

Every interaction model follows one contract (see :class:`diffrec_jax.models.diffrec.DiffRec`):
``init(key) -> (graphdef, params, model_state)``, ``loss(params, model_state, x_BxI, mask_B, key)
-> (loss, (model_state, aux))`` and ``score(params, model_state, x_BxI, key) -> scores_BxI``.
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
    """Instantiates ``config.model.name`` for a dataset (``data.n_items`` sizes the model)."""
    cls, validate = _lookup(config.model.name)
    validate(config)
    return cls(config, data.n_items)


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"config.model.name: unknown model {name!r}; available: {available()}") from None


__all__ = ["DiffRec", "DiffRecDenoiser", "available", "count_params", "get_model", "timestep_embedding"]
