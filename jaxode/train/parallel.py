"""Data parallelism with `jax.sharding`: over the local devices of one process, or over
every device of a multi-process run under `jax.distributed` (multi-host GPU/TPU, or
several CPU processes).

A 1-D mesh with axis ``"data"`` spans the devices; batches are split along their
leading axis (``NamedSharding(mesh, P("data"))``) and the model, optimiser state and
EMA are replicated (``P()``).  The jitted step is written as if for one device: XLA
inserts the all-reduce of the gradients (and, for a joint-batch adaptive ODE solve,
of the error norm, so every device takes the same steps and the loss equals the
single-device loss up to summation order).

**Several processes** (``jax.distributed.initialize(...)`` called first, in every
process; `initialize_distributed` below does it for CPU processes):

- the mesh spans ``jax.devices()``, all processes' devices, in process order;
- each process passes only *its* rows of every batch to `fit` (`process_shard` takes
  them from a batch that every process can build; a loader of a large dataset should
  read just those rows): `shard_batch` assembles the global batch with
  `jax.make_array_from_process_local_data`, so process p holds rows
  ``[p * n, (p + 1) * n)`` of a global batch of ``n * jax.process_count()``;
- only process 0 writes (run folder, metrics, TensorBoard, checkpoints:
  `is_writer`); every process reads checkpoints on resume, so the run folder must
  be on a file system that all of them see;
- evaluation runs whole in every process on its local devices (`local_mesh`), with
  the replicated weights: the same metrics everywhere, at the cost of repeating it.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator: str, num_processes: int, process_id: int, *,
                           cpu_collectives: str = "gloo") -> None:
    """`jax.distributed.initialize` for a run of several processes; on the CPU, first
    selects the cross-process collectives (``gloo``) that the gradient all-reduce
    needs.  Call it before any other JAX call of the process."""
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)  # CPU only
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def is_writer() -> bool:
    """True in the process that writes files: process 0 (the only one when not
    distributed)."""
    return jax.process_index() == 0


def data_mesh(enabled: bool = True, devices=None) -> Mesh:
    """A 1-D mesh over `devices`.  Default: all devices of a multi-process run (every
    process must take part in each step); else the local devices, or one device when
    `enabled` is False."""
    if devices is None:
        if jax.process_count() > 1:
            devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        else:
            devices = jax.local_devices()
            if not enabled:
                devices = devices[:1]
    return Mesh(np.asarray(list(devices)), (DATA_AXIS,))


def spans_processes(mesh: Mesh) -> bool:
    """Whether `mesh` holds devices of other processes."""
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def local_mesh(mesh: Mesh) -> Mesh:
    """`mesh` itself within one process; else the mesh of this process's devices in it."""
    if not spans_processes(mesh):
        return mesh
    return Mesh(np.asarray([d for d in mesh.devices.flat
                            if d.process_index == jax.process_index()]), (DATA_AXIS,))


def _host_value(x):
    """A local copy of an array (a replicated array of a multi-process run is read from
    this process's shard)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            raise ValueError("only replicated arrays can be copied to one process; got "
                             f"an array sharded as {x.sharding}.")
        return np.asarray(x.addressable_data(0))
    return x


def replicate(tree, mesh: Mesh):
    """Place every array of `tree` on all devices of `mesh` (non-arrays untouched).
    Every process of a multi-process mesh must pass the same values."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        if not eqx.is_array(x):
            return x
        x = _host_value(x)
        if spans_processes(mesh):
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
        return jax.device_put(x, sharding)

    return jtu.tree_map(put, tree)


def shard_batch(batch, mesh: Mesh):
    """Split every array of `batch` along axis 0 over the mesh's ``data`` axis.  In a
    multi-process mesh, `batch` is this process's rows and the result is the global
    batch (all processes' rows, in process order)."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    n = len(local)
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    multi = spans_processes(mesh)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.shape[0] % n:
            raise ValueError(
                f"a batch of {x.shape[0]} examples cannot be split over {n} devices; use a "
                f"batch size divisible by {n} or turn data parallelism off."
            )
        if multi:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jtu.tree_map(put, batch)


class process_shard:
    """This process's rows of each batch of `batches`: rows ``[p * n, (p + 1) * n)`` of
    every batch, with ``n = batch size / jax.process_count()`` and p this process (all
    rows in a single-process run).  Keeps ``len``."""

    def __init__(self, batches, process_index: int | None = None,
                 process_count: int | None = None):
        self.batches = batches
        self.index = jax.process_index() if process_index is None else process_index
        self.count = jax.process_count() if process_count is None else process_count

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            size = jtu.tree_leaves(batch)[0].shape[0]
            if size % self.count:
                raise ValueError(
                    f"a batch of {size} examples cannot be split over {self.count} "
                    f"processes; use a batch size divisible by {self.count}.")
            rows = slice(self.index * (size // self.count), (self.index + 1) * (size // self.count))
            yield jtu.tree_map(lambda x, rows=rows: x[rows], batch)
