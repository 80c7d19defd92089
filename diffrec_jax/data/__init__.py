"""Host-side data: interaction datasets, loaders, validation and synthetic data.

Public names:

* :class:`CSR`, :class:`InteractionData`, :class:`DataError`
* :func:`load_diffrec_npy`, :func:`load_movielens`, :func:`validate`, :func:`split_counts`
* :func:`make_synthetic`
"""

from diffrec_jax.data.interactions import (
    CSR,
    DataError,
    InteractionData,
    load_diffrec_npy,
    load_movielens,
    split_counts,
    validate,
)
from diffrec_jax.data.synthetic import make_synthetic

__all__ = [
    "CSR",
    "DataError",
    "InteractionData",
    "load_diffrec_npy",
    "load_movielens",
    "make_synthetic",
    "split_counts",
    "validate",
]
