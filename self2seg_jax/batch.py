"""Batches of same-shape images, sharded over the devices of a mesh.

:func:`segment_batch` validates, normalises and starts every image on the host exactly as
:func:`self2seg_jax.segment` does (image ``i`` with key ``jax.random.split(key, B)[i]``), then
runs the one alternating scheme over the batch, its batch axis sharded over a 1-D device mesh
(axis ``"batch"``; default: every device, of every process in a
:mod:`self2seg_jax.distributed` job). Each device runs its share image after image (``lax.map``
under ``shard_map`` with several devices; on a single device one compiled run per image, which
measured faster on XLA:CPU than a ``lax.map``, from a pool of host threads on a CPU backend
(:func:`run_local`), where one run leaves part of the cores idle). Not ``vmap``: on an H200 a
vmapped batch of 16 patches took 16.8 s against 4.3 s for the loop and 4.5 s for ``lax.map``
(``benchmarks/results/batch/batch_modes_gpu_16.json``) — the vmapped ``while_loop`` runs every
member until the slowest stops, and vmapping the CNN over per-image weights batches the
convolutions' kernels. :func:`run_batch` keeps ``mode="vmap"`` for callers who want it. A batch
whose size is not a multiple of the device count is padded with copies of its last image and
unpadded on return.

Under ``vmap`` the outer ``while_loop`` (and each W-step's training loop) runs until the
slowest member has stopped; members that stopped earlier keep their state (JAX's batching rule
selects it), so each image's result is that of its own run, but the compute of the extra
iterations is spent. Under ``lax.map`` every image stops on its own.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from self2seg_jax import alternating, api, backend, distributed
from self2seg_jax.config import Self2SegConfig

AXIS = "batch"


def batch_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"batch"`` over ``devices`` (default: ``jax.devices()``)."""
    devs = np.asarray(jax.devices() if devices is None else list(devices))
    return Mesh(devs.reshape(-1), (AXIS,))


@backend.jit(static_argnames=("spec", "mode", "mesh"))
def run_batch(keys, f, w0, labels0, hyper: alternating.Hyper, spec: alternating.Spec,
              mode: str = "vmap", mesh: Mesh | None = None):
    """:func:`self2seg_jax.alternating.run` over a leading batch axis of ``keys`` ``(B,)``
    (typed keys or their ``uint32`` key data), ``f`` ``(B, ...)``, ``w0`` ``(B, C, *s)``,
    ``labels0`` ``(B, *s)``; ``hyper`` with scalar leaves (shared) or ``(B,)`` leaves (one per
    image, e.g. each image's ``lam="auto"`` value).

    ``mode="vmap"``: one batched program (accelerators; the batched ``while_loop`` runs until
    its slowest member stops); ``"map"``: the images one after the other inside the program
    (CPU, where batched convolutions are slower than a loop), each with its own stopping. With
    a ``mesh`` of several devices every device runs its own shard of the batch (``shard_map``
    over the ``"batch"`` axis): no communication between devices while the scheme runs, and a
    device whose images stop early does not wait for another device's slowest image. Returns
    the batched final :class:`~self2seg_jax.alternating.State`."""

    per_image = jnp.ndim(hyper.lam) == 1

    def local(keys, f, w0, labels0, hyper):
        if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
            keys = jax.random.wrap_key_data(keys)
        hypers = hyper if per_image else jax.tree.map(
            lambda a: jnp.broadcast_to(a, keys.shape), hyper)
        one = lambda a: alternating.run(a[0], a[1], a[2], a[3], a[4], spec)  # noqa: E731
        if mode == "map":
            return lax.map(one, (keys, f, w0, labels0, hypers))
        return jax.vmap(lambda *a: one(a))(keys, f, w0, labels0, hypers)

    if mesh is not None and mesh.size > 1:
        b = PartitionSpec(AXIS)
        return jax.shard_map(local, mesh=mesh,
                             in_specs=(b, b, b, b, b if per_image else PartitionSpec()),
                             out_specs=b, check_vma=False)(keys, f, w0, labels0, hyper)
    return local(keys, f, w0, labels0, hyper)


def image_keys(key, b: int) -> jax.Array:
    """The ``(b,)`` keys of a batch: ``jax.random.split(key, b)`` for one key, or ``key`` itself
    when it already holds ``b`` keys (one per image)."""
    try:
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == (b,):
            return key
    except AttributeError:
        pass
    return jax.random.split(api.check_key(key), b)


def segment_batch(key, images, *, init="otsu", config: Self2SegConfig = Self2SegConfig(),
                  num_classes: int = 2, channel_axis: int | None = None, volume: bool = False,
                  spacing=None, class_experts=None, mesh: Mesh | None = None,
                  threads: int | None = None) -> api.Self2SegResult:
    """Self2Seg on ``B`` same-shape images (one compiled call per device share; no recompiles).

    Args:
      key: ``jax.random.key``; image ``i`` uses ``jax.random.split(key, B)[i]`` and gets the
        result of ``segment(keys[i], images[i], ...)`` (up to float rounding: a pixel or two
        of a mask may differ). A ``(B,)`` array of keys gives each image its own.
      images: ``(B, *image)`` array or a sequence of ``B`` arrays of one shape; each image as
        :func:`self2seg_jax.segment` takes it (``channel_axis`` counts the image's axes).
      init: one start for every image (``"otsu"``, ``"otsu_dark"``, a threshold,
        :class:`Boxes`, ...) or a list of ``B`` starts.
      mesh: a 1-D :class:`jax.sharding.Mesh` with axis ``"batch"`` (default:
        :func:`batch_mesh` over every device — of every process after
        :func:`self2seg_jax.distributed.initialize`, where each process must pass the same
        images and gets the whole result).
      threads: on a single device, how many images run at once, each from its own host
        thread (default :func:`default_threads`: the CPU cores available to this process on
        a CPU backend, fewer where the runs would not fit in memory; 1 on accelerators).
        Results do not depend on it.
      Other arguments: as :func:`self2seg_jax.segment` (no progress callback).

    Returns:
      :class:`~self2seg_jax.Self2SegResult` with ``batched=True`` (a leading batch axis).

    Raises:
      ValueError: an empty batch, images of different shapes, a mesh without a ``"batch"``
        axis, or any error :func:`self2seg_jax.segment` raises for one image (named by index).
    """
    imgs = _as_batch(images)
    b = len(imgs)
    inits = list(init) if isinstance(init, (list, tuple)) else [init] * b
    if len(inits) != b:
        raise ValueError(f"init: got {len(inits)} starts for {b} images")
    if threads is not None and (isinstance(threads, bool) or int(threads) != threads
                                or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    keys = image_keys(key, b)
    prepared = []
    for i, (img, ini) in enumerate(zip(imgs, inits)):
        try:
            prepared.append(api.prepare(keys[i], img, init=ini, config=config,
                                        num_classes=num_classes, channel_axis=channel_axis,
                                        volume=volume, spacing=spacing,
                                        class_experts=class_experts))
        except ValueError as e:
            raise ValueError(f"image {i}: {e}") from None
    spec = prepared[0].spec
    mesh = batch_mesh() if mesh is None else mesh
    if AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {AXIS!r}, got {mesh.axis_names}")
    n_dev = mesh.shape[AXIS]
    if n_dev == 1 and jax.process_count() == 1:
        # one device: each image through segment's own compiled scheme (on XLA:CPU a lax.map
        # over whole schemes measured slower than a loop of them; on an H200 vmap was 3.9x
        # slower and lax.map as fast: benchmarks/results/batch/), from a pool of host threads
        # on a CPU, where one run leaves cores idle
        n_threads = default_threads(b, prepared[0].f.size) if threads is None else int(threads)
        return _stack_results(run_local(prepared, config, n_threads), spec.max_outer)
    configs = [api.resolve_lam(p, config) for p in prepared]  # lam="auto": one per image
    pad = -b % n_dev  # a multiple of the device count
    padded, pconf = prepared + [prepared[-1]] * pad, configs + [configs[-1]] * pad
    arrays = (np.stack([np.asarray(jax.random.key_data(p.k_run)) for p in padded]),
              np.stack([p.f for p in padded]), np.stack([p.start.weights for p in padded]),
              np.stack([p.start.labels for p in padded]))
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    arrays = tuple(distributed.global_array(a, sharding) for a in arrays)
    if config.lam == "auto":
        hyper = jax.tree.map(lambda *leaves: distributed.global_array(np.stack(leaves), sharding),
                             *[c.hyper() for c in pconf])
    else:
        hyper = distributed.replicate(config.hyper(), mesh)
    state = run_batch(*arrays, hyper, spec, "map", mesh)
    host = distributed.fetch(state._replace(key=jax.random.key_data(state.key)))
    return _stack_results([api.finish(jax.tree.map(lambda x, i=i: x[i], host), p, c)
                           for i, (p, c) in enumerate(zip(prepared, configs))], spec.max_outer)


BYTES_PER_PIXEL = 400
"""Rough working set of one run per image pixel (peak RSS above the ~0.9 GiB of an idle
process: 360 B at 1024², 280 B at 2048², 106 B at 4096² with tiled passes —
``benchmarks/results/scaling_s6``, ``scaling_4096``); bounds :func:`default_threads`."""


def default_threads(b: int, pixels: int = 0) -> int:
    """Images run at once on a single device: on a CPU backend the cores this process may use
    (at most ``b``), and no more runs of ``pixels``-pixel images than fit in half the
    available memory at :data:`BYTES_PER_PIXEL`; 1 on accelerators, whose one device runs
    one program at a time."""
    if jax.default_backend() != "cpu":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = min(b, cores or 1)
    if pixels > 0:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 0
        if avail > 0:
            n = min(n, int(avail // 2 // (BYTES_PER_PIXEL * pixels)))
    return max(1, n)


def run_local(prepared: list[api.Prepared], config: Self2SegConfig,
              threads: int = 1) -> list[api.Self2SegResult]:
    """The result of every prepared image on this process's default device, each its own
    compiled run (:func:`self2seg_jax.api.run_prepared`; ``lam="auto"`` picks per image).

    With ``threads > 1`` the runs come from a pool of host threads (XLA releases the GIL while
    a program runs): on XLA:CPU one run of the scheme keeps about 1.6 of 2 cores busy, so two
    at once finish sooner (``benchmarks/results/batch/``). The first image runs alone, so
    that its call compiles the programs the others reuse. Each run is the one ``segment``
    makes; the results do not depend on ``threads``.
    """
    def one(p):
        st, c = api.run_prepared(p, config)
        return api.finish(jax.device_get(st), p, c)

    if threads <= 1 or len(prepared) <= 1:
        return [one(p) for p in prepared]
    first = one(prepared[0])
    with ThreadPoolExecutor(min(threads, len(prepared) - 1)) as pool:
        return [first] + list(pool.map(one, prepared[1:]))


def _as_batch(images) -> list[np.ndarray]:
    if isinstance(images, (list, tuple)):
        imgs = [np.asarray(x) for x in images]
    else:
        arr = np.asarray(images)
        if arr.ndim < 3:
            raise ValueError(f"images must be (B, *image) with a batch axis, got shape "
                             f"{arr.shape}")
        imgs = list(arr)
    if not imgs:
        raise ValueError("images: empty batch")
    shapes = {x.shape for x in imgs}
    if len(shapes) > 1:
        raise ValueError(f"images must all have one shape, got {sorted(shapes)}")
    return imgs


def _pad_rows(a: np.ndarray, n: int, fill) -> np.ndarray:
    out = np.full((n,) + a.shape[1:], fill, a.dtype)
    out[: len(a)] = a
    return out


def _stack_results(rs: list[api.Self2SegResult], max_outer: int) -> api.Self2SegResult:
    def rows(name, fill):
        return np.stack([_pad_rows(getattr(r, name), max_outer, fill) for r in rs])

    return api.Self2SegResult(
        labels=np.stack([r.labels for r in rs]),
        probabilities=np.stack([r.probabilities for r in rs]),
        denoised=np.stack([r.denoised for r in rs]),
        expert_outputs=np.stack([r.expert_outputs for r in rs]),
        energies=rows("energies", np.nan), num_outer=np.array([r.num_outer for r in rs]),
        status=tuple(r.status for r in rs), mask_changes=rows("mask_changes", 0.0),
        pd_iterations=rows("pd_iterations", 0), train_steps=rows("train_steps", 0),
        init_labels=np.stack([r.init_labels for r in rs]),
        lam=np.array([r.lam for r in rs], np.float64), batched=True,
    )
