"""Host-side data: interaction datasets, loaders, validation and synthetic data.

Public names:

* :func:`load`: the dataset a ``config.data`` group names (:mod:`diffrec_jax.data.sources`)
* :class:`CSR`, :class:`InteractionData`, :class:`DataError`
* :func:`load_diffrec_npy`, :func:`load_movielens`, :func:`load_movielens_titles`,
  :func:`validate`, :func:`split_counts`
* :func:`make_synthetic`

Modules:

* :mod:`~diffrec_jax.data.containers`: :class:`DataError`, :class:`CSR`, :class:`InteractionData`;
* :mod:`~diffrec_jax.data.validation`: duplicate, leakage and structure checks (:func:`validate`);
* :mod:`~diffrec_jax.data.splits`: the per-user temporal split rule (:func:`split_counts`);
* :mod:`~diffrec_jax.data.diffrec_npy`: DiffRec's ``*_list.npy`` files, read without pickle;
* :mod:`~diffrec_jax.data.movielens`: MovieLens ``u.data`` / ``ratings.dat`` and titles;
* :mod:`~diffrec_jax.data.tables` and :mod:`~diffrec_jax.data.tabular`: your own CSV / Parquet
  table, read, prepared and split (:mod:`~diffrec_jax.data.tfds`: MovieLens through TFDS);
* :mod:`~diffrec_jax.data.sequence_data` and :mod:`~diffrec_jax.data.sequences`: sequential
  data and its loaders; :mod:`~diffrec_jax.data.kg`: knowledge graphs;
  :mod:`~diffrec_jax.data.rerank_synthetic`: the re-ranking world;
  :mod:`~diffrec_jax.data.synthetic`: synthetic interactions;
  :mod:`~diffrec_jax.data.temporal`: T-DiffRec's time weights;
* :mod:`~diffrec_jax.data.sources`: :func:`load` and the registry of ``config.data.source`` names.
"""

from diffrec_jax.data.containers import CSR, DataError, InteractionData
from diffrec_jax.data.diffrec_npy import load_diffrec_npy
from diffrec_jax.data.movielens import load_movielens, load_movielens_titles
from diffrec_jax.data.sources import load
from diffrec_jax.data.splits import split_counts
from diffrec_jax.data.synthetic import make_synthetic
from diffrec_jax.data.validation import validate

__all__ = [
    "CSR",
    "DataError",
    "InteractionData",
    "load",
    "load_diffrec_npy",
    "load_movielens",
    "load_movielens_titles",
    "make_synthetic",
    "split_counts",
    "validate",
]
