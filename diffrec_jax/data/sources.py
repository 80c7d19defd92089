"""The data sources a config names: ``load(config.data)`` dispatches on ``config.data.source``.

Every trainer reads its dataset through :func:`load`; each source is one loader function of the
``config.data`` group and one line in :data:`SOURCES` (adding a source is one function and one
line). :func:`sources` lists the names.

Sources, and the other ``config.data`` fields each reads:

* ``synthetic``: :func:`~diffrec_jax.data.make_synthetic` with ``synthetic`` (seeded);
* ``diffrec_npy``: DiffRec's ``*_list.npy`` in ``dir`` (:func:`~diffrec_jax.data.load_diffrec_npy`);
* ``movielens``: ``u.data`` / ``ratings.dat`` at ``path`` or in ``dir``, ``min_rating``, per-user
  temporal ``split`` (:func:`~diffrec_jax.data.load_movielens`);
* ``lastfm_kgcn``: the KGCN Last.FM files in ``dir``, seeded per-user random ``split`` (default
  ``(0.7, 0.1, 0.2)``) with ``split_seed`` (default 0); the interactions only (the model reads
  the KG itself);
* ``synthetic_seq``: :func:`~diffrec_jax.data.sequences.make_synthetic_sequences` with
  ``synthetic_seq`` and ``max_len`` (default 10);
* ``dreamrec_npz``: DreamRec's ``.npz`` in ``dir``, ``max_len`` (default: the file's),
  ``on_long`` (default ``"error"``);
* ``diffurec_npz``: DiffuRec's ``dataset.npz`` (or ``dataset.pkl``) in ``dir``, ``max_len``
  (default 50), ``on_long`` (default ``"truncate"``);
* ``rerank_synthetic``: :func:`~diffrec_jax.data.rerank_synthetic.make_rerank_world` with the
  group's ``n_users``, ``n_items``, ``n_cats``, ``dim``, ``history_len``, ``n``, ``m``,
  ``n_train``, ``n_valid``, ``n_test``, ``swaps_mean``, ``init_noise``, ``seed`` fields that are
  set and not None (the others: the function's defaults).

The interaction sources give an :class:`~diffrec_jax.data.InteractionData`; with
``config.data.time_weights = (w_min, w_max)`` set, its train rows are T-DiffRec-weighted
(:func:`~diffrec_jax.data.temporal.with_time_weights`). The sequence sources give a
:class:`~diffrec_jax.data.sequences.SequenceData`, ``rerank_synthetic`` a
:class:`~diffrec_jax.data.rerank_synthetic.RerankWorld`.
"""

from __future__ import annotations

from typing import Any, Callable

from diffrec_jax.data import rerank_synthetic
from diffrec_jax.data.containers import InteractionData
from diffrec_jax.data.diffrec_npy import load_diffrec_npy
from diffrec_jax.data.kg import load_lastfm_kgcn
from diffrec_jax.data.movielens import load_movielens
from diffrec_jax.data.sequences import (
    SequenceData,
    load_diffurec_npz,
    load_dreamrec_npz,
    make_synthetic_sequences,
)
from diffrec_jax.data.synthetic import make_synthetic
from diffrec_jax.data.temporal import with_time_weights

__all__ = ["SOURCES", "load", "sources"]

Dataset = InteractionData | SequenceData | rerank_synthetic.RerankWorld

# Fields of config.data passed to make_rerank_world (when set and not None).
_RERANK_KEYS = ("n_users", "n_items", "n_cats", "dim", "history_len", "n", "m", "n_train",
                "n_valid", "n_test", "swaps_mean", "init_noise", "seed")


# --------------------------------------------------------------------------- #
# Interaction sources
# --------------------------------------------------------------------------- #


def _synthetic(dcfg) -> InteractionData:
    return make_synthetic(**dict(dcfg.synthetic))


def _diffrec_npy(dcfg) -> InteractionData:
    return load_diffrec_npy(dcfg.dir)


def _movielens(dcfg) -> InteractionData:
    return load_movielens(
        dcfg.get("path") or dcfg.dir, min_rating=dcfg.get("min_rating"), split=tuple(dcfg.split)
    )


def _lastfm_kgcn(dcfg) -> InteractionData:
    data, _ = load_lastfm_kgcn(dcfg.dir, split=tuple(dcfg.get("split", (0.7, 0.1, 0.2))),
                               seed=int(dcfg.get("split_seed", 0)))
    return data


# --------------------------------------------------------------------------- #
# Sequence sources
# --------------------------------------------------------------------------- #


def _synthetic_seq(dcfg) -> SequenceData:
    return make_synthetic_sequences(**dict(dcfg.synthetic_seq), max_len=dcfg.get("max_len") or 10)


def _dreamrec_npz(dcfg) -> SequenceData:
    return load_dreamrec_npz(dcfg.dir, max_len=dcfg.get("max_len"),
                             on_long=dcfg.get("on_long") or "error")


def _diffurec_npz(dcfg) -> SequenceData:
    return load_diffurec_npz(dcfg.dir, max_len=dcfg.get("max_len") or 50,
                             on_long=dcfg.get("on_long") or "truncate")


# --------------------------------------------------------------------------- #
# Re-ranking sources
# --------------------------------------------------------------------------- #


def _rerank_synthetic(dcfg) -> rerank_synthetic.RerankWorld:
    kw = {k: dcfg[k] for k in _RERANK_KEYS if k in dcfg and dcfg[k] is not None}
    return rerank_synthetic.make_rerank_world(**kw)


# --------------------------------------------------------------------------- #
# Registry and entry point
# --------------------------------------------------------------------------- #

SOURCES: dict[str, Callable[[Any], Dataset]] = {
    "synthetic": _synthetic,
    "diffrec_npy": _diffrec_npy,
    "movielens": _movielens,
    "lastfm_kgcn": _lastfm_kgcn,
    "synthetic_seq": _synthetic_seq,
    "dreamrec_npz": _dreamrec_npz,
    "diffurec_npz": _diffurec_npz,
    "rerank_synthetic": _rerank_synthetic,
}
"""``config.data.source`` name -> loader of the ``config.data`` group."""


def sources() -> list[str]:
    """Names of every ``config.data.source`` :func:`load` knows, in registry order."""
    return list(SOURCES)


def _time_weights(data: InteractionData, dcfg) -> InteractionData:
    """``config.data.time_weights = (w_min, w_max)``: T-DiffRec-weighted train rows."""
    tw = dcfg.get("time_weights")
    if tw:
        if len(tw) != 2 or not 0 < float(tw[0]) <= float(tw[1]):
            raise ValueError(
                f"config.data.time_weights must be (w_min, w_max) with 0 < w_min <= w_max, got {tw}"
            )
        data = with_time_weights(data, float(tw[0]), float(tw[1]))
    return data


def load(dcfg) -> Dataset:
    """Loads the dataset a ``config.data`` group describes (sources: the module docstring).

    Args:
        dcfg: the ``config.data`` group (an ``ml_collections.ConfigDict``); ``dcfg.source`` names
            the source.

    Returns:
        :class:`~diffrec_jax.data.InteractionData` (time-weighted if ``time_weights`` is set),
        :class:`~diffrec_jax.data.sequences.SequenceData` or
        :class:`~diffrec_jax.data.rerank_synthetic.RerankWorld`, by source.

    Raises:
        ValueError: an unknown source (naming ``config.data.source`` and listing the sources),
            or bad ``time_weights``.
        DataError: bad data, from the source's loader.
    """
    source = dcfg.source
    try:
        loader = SOURCES[source]
    except (KeyError, TypeError):  # TypeError: an unhashable value
        names = sources()
        raise ValueError(
            f"config.data.source: unknown source {source!r}; choose {', '.join(names[:-1])} "
            f"or {names[-1]}"
        ) from None
    data = loader(dcfg)
    if isinstance(data, InteractionData):
        data = _time_weights(data, dcfg)
    return data
