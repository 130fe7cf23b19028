"""One image or volume across several devices: the scheme with its spatial arrays sharded
along the first spatial axis over a device-mesh axis named ``"space"``.

:func:`self2seg_jax.segment` with ``mesh=space_mesh()`` runs :func:`run_space` (or
:func:`iterate_space` when progress is reported): the same compiled scheme as
:func:`self2seg_jax.alternating.run`, its image, region weights, relaxed mask, dual field,
labels and expert outputs constrained to ``PartitionSpec(..., "space", ...)``; XLA's SPMD
partitioner splits the work and inserts the communication (the halo rows of the grad/div
stencils, the sums of energies, gaps and means over the whole image). The experts' training
crops are split over the devices (data parallelism, :func:`self2seg_jax.experts.shard_crops`:
each device runs the expert on its crops, the gradient is summed over devices) instead of every
device computing every crop. The result equals the unsharded run up to float rounding (sums are
taken in another order): the tests allow a few pixels of the mask.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from self2seg_jax import alternating, backend, distributed

SPACE = "space"


def space_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"space"`` over ``devices`` (default: ``jax.devices()``)."""
    devs = np.asarray(jax.devices() if devices is None else list(devices))
    return Mesh(devs.reshape(-1), (SPACE,))


def check_mesh(mesh) -> Mesh:
    """``mesh`` if it is a :class:`jax.sharding.Mesh` with a ``"space"`` axis; ``ValueError``
    otherwise."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if SPACE not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {SPACE!r} (see space_mesh()), got axes "
                         f"{mesh.axis_names}")
    return mesh


def spatial_sharding(mesh: Mesh, ndim_total: int, ndim: int) -> NamedSharding:
    """The sharding of a ``(*lead, *s)`` array (``ndim_total`` axes, ``ndim`` spatial) split
    along its first spatial axis."""
    lead = ndim_total - ndim
    return NamedSharding(mesh, PartitionSpec(*([None] * lead + [SPACE])))


def _space(a, mesh: Mesh, ndim: int):
    return lax.with_sharding_constraint(a, spatial_sharding(mesh, a.ndim, ndim))


def _constrain(s: alternating.State, mesh: Mesh, ndim: int) -> alternating.State:
    """The state's spatial arrays split along the first spatial axis, everything else (expert
    parameters, key, bookkeeping) replicated."""
    rep = NamedSharding(mesh, PartitionSpec())
    s = jax.tree.map(lambda a: lax.with_sharding_constraint(a, rep), s)
    c = functools.partial(_space, mesh=mesh, ndim=ndim)
    return s._replace(u=c(s.u), p=tuple(c(q) for q in s.p), labels=c(s.labels), w=c(s.w),
                      den=c(s.den))


@backend.jit(static_argnames=("spec", "mesh"))
def _init_space(key, f, w0, labels0, spec: alternating.Spec, mesh: Mesh) -> alternating.State:
    c = functools.partial(_space, mesh=mesh, ndim=spec.ndim)
    return _constrain(alternating.init_state(key, c(f), c(w0), c(labels0), spec), mesh, spec.ndim)


def _outer(s, f, hyper, spec: alternating.Spec, mesh: Mesh) -> alternating.State:
    """One outer iteration with the spatial arrays kept split (pure)."""
    f = _space(f, mesh, spec.ndim)
    return _constrain(alternating.outer_step(_constrain(s, mesh, spec.ndim), f, hyper, spec),
                      mesh, spec.ndim)


_step_space = backend.jit(_outer, static_argnames=("spec", "mesh"))


def with_crop_mesh(spec: alternating.Spec, mesh: Mesh) -> alternating.Spec:
    """``spec`` whose experts split their training crops over ``mesh``'s ``"space"`` axis, and
    whose mask step iterates the sharded arrays whole (bands along the sharded axis would
    gather them)."""
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, crop_mesh=mesh),
                               pd_block_pixels=0)


def host_state(s: alternating.State) -> alternating.State:
    """The final state on the host, whole (gathered from every process of a multi-process job;
    its key as key data)."""
    return distributed.fetch(s._replace(key=jax.random.key_data(s.key)))


def run_space(key, f, w0, labels0, hyper: alternating.Hyper, spec: alternating.Spec,
              mesh: Mesh) -> alternating.State:
    """:func:`self2seg_jax.alternating.run` with the spatial arrays sharded over ``mesh``'s
    ``"space"`` axis (first spatial axis); arguments as there. Returns the final state, its
    spatial arrays sharded."""
    # inputs committed to every device (the compiled step then splits them as its constraints
    # say); in a multi-process job, global arrays from every process's identical host copy
    return _run_space(*distributed.replicate((key, f, w0, labels0, hyper), mesh),
                      with_crop_mesh(spec, mesh), mesh)


@backend.jit(static_argnames=("spec", "mesh"))
def _run_space(key, f, w0, labels0, hyper, spec, mesh):
    s = _init_space(key, f, w0, labels0, spec, mesh)
    s = lax.while_loop(lambda c: c.status == alternating.RUNNING,
                       lambda c: _outer(c, f, hyper, spec, mesh), s)
    return _constrain(s, mesh, spec.ndim)


def iterate_space(key, f, w0, labels0, hyper, spec, mesh: Mesh, callback) -> alternating.State:
    """:func:`run_space` driven from Python with a progress ``callback`` (as
    :func:`self2seg_jax.alternating.iterate`)."""
    key, f, w0, labels0, hyper = distributed.replicate((key, f, w0, labels0, hyper), mesh)
    spec = with_crop_mesh(spec, mesh)
    gen = alternating.drive(_init_space(key, f, w0, labels0, spec, mesh),
                            lambda s: _step_space(s, f, hyper, spec, mesh))
    return alternating.follow(alternating.events(gen), callback)
