"""Shared pytest configuration for the diffrec_jax test suite.

It asks XLA for four host (CPU) devices *before* JAX is imported, so that tests can exercise
sharding and multi-device code on a single CPU machine, and it provides a few tiny, generic
fixtures (PRNG keys and a NumPy random generator). JAX's rank-promotion checks are left at their
default on purpose: the library broadcasts ``[B, 1, ...]`` coefficients against ``[B, ...]`` data.
"""

import os

_DEVICE_FLAG = "--xla_force_host_platform_device_count=4"
if _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICE_FLAG).strip()

import jax  # noqa: E402  (must come after XLA_FLAGS is set)
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
    """A fixed raw ``uint32[2]`` PRNG key."""
    return jax.random.PRNGKey(0)


@pytest.fixture
def np_rng():
    """A seeded NumPy random generator for building test inputs."""
    return np.random.default_rng(1234)
