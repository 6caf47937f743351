"""Data parallelism over the local devices with `jax.sharding`.

A 1-D mesh with axis ``"data"`` spans the devices; batches are split along their
leading axis (``NamedSharding(mesh, P("data"))``) and the model, optimiser state and
EMA are replicated (``P()``).  The jitted step is written as if for one device: XLA
inserts the all-reduce of the gradients (and, for a joint-batch adaptive ODE solve,
of the error norm, so every device takes the same steps and the loss equals the
single-device loss up to summation order).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(enabled: bool = True, devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: all local devices; one device when
    `enabled` is False)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not enabled:
        devices = devices[:1]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
    """Place every array of `tree` on all devices of `mesh` (non-arrays untouched)."""
    sharding = NamedSharding(mesh, P())
    return jtu.tree_map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


def shard_batch(batch, mesh: Mesh):
    """Split every array of `batch` along axis 0 over the mesh's ``data`` axis."""
    n = mesh.devices.size
    sharding = NamedSharding(mesh, P(DATA_AXIS))

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.shape[0] % n:
            raise ValueError(
                f"a batch of {x.shape[0]} examples cannot be split over {n} devices; use a "
                f"batch size divisible by {n} or turn data parallelism off."
            )
        return jax.device_put(x, sharding)

    return jtu.tree_map(put, batch)
