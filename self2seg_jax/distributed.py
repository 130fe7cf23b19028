"""Many processes (hosts) as one job: a thin layer over :mod:`jax.distributed`.

:func:`initialize` joins this process to the job (JAX's coordinator service; on CPU with gloo
collectives); afterwards ``jax.devices()`` lists every process's devices, so
:func:`self2seg_jax.segment_batch` with its default mesh shards a batch over all of them (a
*global* batch: every process passes the same images and gets the same result).
:func:`assign` splits a list of files between processes deterministically and
:func:`gather` collects one JSON-able value per process (the command line's summary).

One node with several GPUs needs none of this (one process sees them all); a SLURM job with N
tasks runs ``self2seg segment ... --distributed`` in each task (see the README).
"""

from __future__ import annotations

import json

import numpy as np


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None) -> None:
    """Join this process to a multi-process JAX job (call before any other JAX work).

    With the three arguments ``None`` the cluster's environment is read, as
    :func:`jax.distributed.initialize` does (SLURM, Open MPI, ...). On CPU the cross-process
    collectives use gloo.

    Args:
      coordinator_address: ``"host:port"`` of process 0's coordinator service.
      num_processes: number of processes in the job.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      local_device_ids: restrict this process to these local accelerators.

    Raises:
      ValueError: some but not all of the three given, or an out-of-range ``process_id``.
    """
    check_arguments(coordinator_address, num_processes, process_id)
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids)


def check_arguments(coordinator_address, num_processes, process_id) -> None:
    """``ValueError`` unless the three are all ``None`` or all valid (see :func:`initialize`)."""
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("give all three of coordinator_address, num_processes and process_id, "
                         "or none (then the cluster's environment is read)")
    if all(given):
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id!r}")
        if ":" not in str(coordinator_address):
            raise ValueError(f"coordinator_address must be 'host:port', got "
                             f"{coordinator_address!r}")


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def assign(n_items: int, num_processes: int, process_id: int) -> list[int]:
    """The items of process ``process_id``: ``i`` with ``i mod num_processes == process_id``
    (every item exactly once over the processes, the same answer in every process)."""
    return [i for i in range(n_items) if i % num_processes == process_id]


def gather(value) -> list:
    """Every process's JSON-able ``value``, in process order (a collective: every process
    must call it). One process: ``[value]``."""
    import jax

    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    allb = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(allb, sizes)]


def global_array(a: np.ndarray, sharding):
    """A host array that is the same in every process as one global ``jax.Array`` of
    ``sharding`` (each process places only the shards of its own devices; one process: a plain
    placement)."""
    import jax

    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def replicate(tree, mesh):
    """Every leaf of ``tree`` (host arrays, scalars or PRNG keys, the same in every process)
    replicated over ``mesh``, as committed global arrays."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    rep = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, rep)

    def put(x):
        if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = global_array(np.asarray(jax.random.key_data(x)), rep)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return global_array(np.asarray(x), rep)

    return jax.tree.map(put, tree)


def fetch(tree):
    """The arrays of ``tree`` on the host, whole: gathered from every process when the job has
    several (a collective: every process must call it), else ``jax.device_get``. PRNG-key
    leaves must be converted to key data first."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.device_get(tree)
