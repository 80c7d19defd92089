"""Devices: the ``("data",)`` mesh batches are sharded over, and host arrays made global when
several processes (hosts) share it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def make_mesh(num_devices: int = 0):
    """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (0: all of them)."""
    devices = jax.devices()
    n = len(devices) if num_devices in (0, None) else int(num_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(
            f"config.train.num_devices={num_devices} but {len(devices)} devices are visible"
        )
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(
            f"config.train.num_devices={num_devices}: with {jax.process_count()} processes the mesh "
            f"must span all {len(devices)} devices of every process (use 0)"
        )
    return jax.sharding.Mesh(np.asarray(devices[:n]), ("data",))


def shardings(mesh, replicas: bool):
    """(replicated, batch-sharded) NamedShardings; batches are ``[B]`` or ``[K, B]``."""
    if mesh is None:
        return None, None
    P = jax.sharding.PartitionSpec
    rep = jax.sharding.NamedSharding(mesh, P())
    batch = jax.sharding.NamedSharding(mesh, P(None, "data") if replicas else P("data"))
    return rep, batch


# Multi-process rule (several processes, CPU collectives): never launch a multi-device program
# while one with collectives is still running. XLA:CPU runs each process's share of a collective
# on its client thread pool, sized max(cores, local devices) ("enough threads for one collective"),
# and the same pool runs the launch tasks of every newly dispatched multi-device program, which
# can block there. On a 2-core host with 2 devices per process, a launch task queued behind a
# running eval step took the thread the other local device's half of that step's all-gather
# needed, and both processes waited in gloo forever (the "first Orbax save" deadlock: the first
# evaluation just before it). So the distributed paths wait for each collective step before
# dispatching the next program (the train loop already does: ``fold`` reads ``state.step``).
def to_global(x, sharding):
    """``x`` as an array of ``sharding`` when several processes (hosts) share the mesh.

    With one process this is the identity (jit places host arrays itself). With several, every
    process holds the same host value (data order and keys are functions of the seed), and the
    global array is assembled from each process's addressable shards
    (``jax.make_array_from_callback``); PRNG key arrays keep their key type.
    """
    if sharding is None or jax.process_count() == 1:
        return x
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(to_global(jax.random.key_data(x), sharding), impl=impl)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
