r"""Expert denoisers and their region-restricted self-supervised training (the W-step).

Four kinds of expert (the first three: paper Example 1):

* ``"n2f"`` — the Noise2Fast-style CNN of the paper (Fig. 4): ``depth`` x [3x3 conv, ReLU]
  with ``width`` channels, a 1x1 conv and a sigmoid (3x3x3 convolutions on volumes; ``L``
  channels in and out for an ``L``-channel image). Trained with Adam on the checkerboard
  (input, target) pairs of :func:`self2seg_jax.ops.checkerboard_pairs`, the loss restricted to
  the expert's region at the *target* pixels (eq. (12)); early stopping on the region-masked
  score ``mean_w (D(f) - f)^2``; output = average of the last ``n_average`` validation outputs.
* ``"linear"`` — one ``k x k`` filter plus a bias (paper Fig. 1), 2-D single-channel images.
  Its Noise2Fast loss is weighted linear least squares, **solved exactly** (normal equations
  with a tiny ridge), so its W-step is an exact minimiser.
* ``"constant"`` — the region mean (per channel), the exact minimiser of ``sum w (f - c)^2``:
  with constant experts Self2Seg *is* convex Chan–Vese.
* ``"smooth"`` — the region's local mean, a background that varies slowly in space (uneven
  illumination, out-of-focus glow next to objects) at no training cost:
  ``D(f)(x) = (sum_{y in W(x), y != x} w(y) f(y) + p c) / (sum_{y in W(x), y != x} w(y) + p)``
  over a ``smooth_size^ndim`` window ``W(x)``, with ``c`` the region mean and ``p`` =
  :data:`SMOOTH_PRIOR` (far from the region the output tends to ``c``). Leaving out the pixel
  itself makes it blind (its output at ``x`` sees ``f(x)`` only through ``c``, a ``1/N``
  share damped by ``p``). Not the exact minimiser of the data term (as the CNN, it does not
  guarantee a falling energy). The window should be several times wider than the objects: an
  object left in the region by the start fills a narrower window, and the local mean then
  explains it.

Shapes: ``f`` is ``(*s)`` or ``(L, *s)`` (channel-first), a region weight ``w`` is ``(*s)``;
every fit returns ``(params, output D(f) shaped like f, Adam steps)``. Params are pytrees, so
experts of one kind stack along a leading axis (:func:`fit_group`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from self2seg_jax import backend, ops, progress

KINDS = ("n2f", "linear", "constant", "smooth")
SMOOTH_PRIOR = 1.0
"""Weight (in pixels) of the region mean in the smooth expert's local mean."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static options of the experts (hashable; part of the compiled program's key).

    Attributes:
      width, depth: CNN channels and number of 3x3 conv + ReLU layers.
      linear_size: odd filter size of the linear expert.
      smooth_size: odd window side of the smooth expert's local mean.
      max_steps: Adam step cap per W-step; min_steps: steps before early stopping may trigger.
      patience: stop when the validation score has not improved for this many steps.
      val_every: steps between validations (each is one full-image forward pass).
      n_average: number of last validation outputs averaged into the expert's output.
      conv_impl: ``"lax"`` or ``"loopsafe"`` (see :func:`self2seg_jax.ops.conv_loopsafe`).
      conv3d: volumes' CNN layers, ``"full"`` 3x3x3 or ``"factorised"`` (3x3 in-plane, then 3
        taps along the first spatial axis: :class:`self2seg_jax.nets.N2FNet`).
      ndim: spatial dimensions (2 or 3); channels: 0 for ``(*s)`` images, ``L`` for ``(L, *s)``.
      mode: ``"crops"`` (:func:`fit_n2f_crops`: each step on ``batch`` crops, cost independent
        of the image size) or ``"full"`` (:func:`fit_n2f`: each step on a whole checkerboard
        half-image, validation on the whole image, the scheme of Noise2Fast).
      crop: even side of a training crop (loss pixels; a halo of context is added).
      batch: crops per Adam step; val_crops: crops in the fixed validation set.
      tile: side of the tiles in which the whole image is denoised (:func:`apply_tiled`).
      report: after every validation send ``(steps done, validation score)`` to the host
        (``jax.debug.callback`` to :func:`self2seg_jax.progress.training_tick`). Programs with
        a host callback are never stored in JAX's persistent compilation cache.
      crop_mesh: a :class:`jax.sharding.Mesh` whose ``"space"`` axis splits the training and
        validation crops (data parallelism: each device runs the expert on its crops, the
        gradient is summed over devices) — set by :mod:`self2seg_jax.sharding` for one image
        across devices, where the crops would otherwise be computed on every device. ``None``:
        no constraint.
    """

    width: int = 32
    depth: int = 4
    linear_size: int = 15
    smooth_size: int = 15
    max_steps: int = 400
    min_steps: int = 100
    patience: int = 100
    val_every: int = 10
    n_average: int = 10
    conv_impl: str = "loopsafe"
    conv3d: str = "full"
    ndim: int = 2
    channels: int = 0
    mode: str = "full"
    crop: int = 32
    batch: int = 4
    val_crops: int = 16
    tile: int = 256
    report: bool = False
    crop_mesh: Any = None


def _net(cfg: TrainConfig):
    """The expert CNN of ``cfg`` (:class:`self2seg_jax.nets.N2FNet`). Flax is imported here, not
    with this module: a process that runs stored programs (the CLI with its export cache)
    never builds the network and skips its ~0.4 s import."""
    from self2seg_jax.nets import N2FNet

    return N2FNet(width=cfg.width, depth=cfg.depth, impl=cfg.conv_impl, ndim=cfg.ndim,
                  channels=cfg.channels, factorised=cfg.conv3d == "factorised")


def init_params(key: jax.Array, kind: str, cfg: TrainConfig) -> Any:
    """Fresh parameters of an expert of ``kind`` (``key`` is used by ``"n2f"`` only)."""
    if kind == "n2f":
        dummy = jnp.zeros(((cfg.channels,) if cfg.channels else ()) + (8,) * cfg.ndim, jnp.float32)
        return _net(cfg).init(key, dummy)["params"]
    if kind == "linear":
        k = cfg.linear_size
        w = jnp.zeros((k, k), jnp.float32).at[k // 2, k // 2].set(1.0)
        return {"kernel": w, "bias": jnp.zeros((), jnp.float32)}
    if kind in ("constant", "smooth"):
        return {"c": jnp.zeros((cfg.channels,) if cfg.channels else (), jnp.float32)}
    raise ValueError(f"unknown expert kind {kind!r}; expected one of {KINDS}")


def apply(params: Any, f: jax.Array, kind: str, cfg: TrainConfig) -> jax.Array:
    """Expert output ``D(f)``, shaped like ``f`` (not for ``"smooth"``, whose output depends on
    its region weight: it is the output of :func:`fit_smooth`)."""
    if kind == "n2f":
        return _net(cfg).apply({"params": params}, f)
    if kind == "linear":
        out = ops.conv(f[None, :, :, None], params["kernel"][:, :, None, None])[0, :, :, 0]
        return out + params["bias"]
    if kind == "constant":
        c = params["c"]
        c = c.reshape(c.shape + (1,) * (f.ndim - c.ndim))
        return jnp.broadcast_to(c, f.shape).astype(f.dtype)
    if kind == "smooth":
        raise ValueError("a smooth expert's output depends on its region weight; it is the "
                         "output of fit_smooth(f, w, cfg), not of apply")
    raise ValueError(f"unknown expert kind {kind!r}; expected one of {KINDS}")


def blind_spot_output(params: Any, f: jax.Array, kind: str, cfg: TrainConfig, den: jax.Array):
    """The expert's blind-spot prediction (:func:`self2seg_jax.ops.blind_spot`): the trained map
    applied to the checkerboard halves, as in training, so the value at a pixel never depends
    on that pixel's noise. Constant and smooth experts are already blind (return ``den``, which
    also fills pixels an odd size crops away)."""
    if kind in ("constant", "smooth"):
        return den
    return ops.blind_spot(lambda z: apply(params, z, kind, cfg), f, cfg.ndim, full=den)


def _weighted_mse(pred, target, w):
    """``mean_w (pred - target)^2``; ``w`` broadcasts over leading (channel) axes."""
    n_ch = pred.size // w.size
    return jnp.sum(w * (pred - target) ** 2) / ((jnp.sum(w) + 1e-8) * n_ch)


# ----------------------------------------------------------------------------------------
# W-step per kind
# ----------------------------------------------------------------------------------------


def fit_constant(f: jax.Array, w: jax.Array):
    """Exact minimiser of ``sum w (f - c)^2``: the weighted mean (per channel)."""
    axes = tuple(range(f.ndim - w.ndim, f.ndim))
    c = jnp.sum(w * f, axis=axes) / (jnp.sum(w) + 1e-8)
    den = jnp.broadcast_to(c.reshape(c.shape + (1,) * w.ndim), f.shape).astype(f.dtype)
    return {"c": c}, den, jnp.asarray(0, jnp.int32)


def fit_smooth(f: jax.Array, w: jax.Array, cfg: TrainConfig):
    """The smooth expert's leave-one-out local mean (module docstring); params hold the region
    mean ``c`` (per channel). ``f``: ``(*s)`` or ``(L, *s)``; ``w``: ``(*s)``."""
    params, mean, _ = fit_constant(f, w)
    wf = w * f
    num = ops.box_sum(wf, cfg.smooth_size, cfg.ndim) - wf + SMOOTH_PRIOR * mean
    den = ops.box_sum(w, cfg.smooth_size, cfg.ndim) - w + SMOOTH_PRIOR
    return params, (num / den).astype(f.dtype), jnp.asarray(0, jnp.int32)


def fit_linear(f: jax.Array, w: jax.Array, cfg: TrainConfig, ridge: float = 1e-5):
    """Exact weighted least squares for a ``k x k`` filter + bias on the Noise2Fast pairs.

    Minimises ``sum_pairs sum_i w_t[i] ((omega * x)[i] + b - y[i])^2`` over ``(omega, b)``
    (``(x, y)`` the checkerboard pairs, ``w_t`` the weight at the target pixels); a ridge
    ``ridge * trace / n`` keeps the normal equations well posed.
    """
    k = cfg.linear_size
    n = k * k + 1
    gram = jnp.zeros((n, n), jnp.float32)
    rhs = jnp.zeros((n,), jnp.float32)
    hi = lax.Precision.HIGHEST
    for (x, y), (_, wt) in zip(ops.checkerboard_pairs(f), ops.checkerboard_pairs(w)):
        # (k*k, h, w): channel a*k + b is x[i + a - k//2, j + b - k//2], which is what the
        # cross-correlation with kernel[a, b] multiplies.
        patches = lax.conv_general_dilated_patches(x[None, None], (k, k), (1, 1), "SAME",
                                                   precision=hi)[0]
        feats = jnp.concatenate([patches, jnp.ones((1,) + x.shape, x.dtype)], 0).reshape(n, -1)
        wf = feats * wt.reshape(1, -1)
        gram = gram + jnp.dot(wf, feats.T, precision=hi)
        rhs = rhs + jnp.dot(wf, y.reshape(-1), precision=hi)
    reg = ridge * jnp.trace(gram) / n + 1e-12
    theta = jnp.linalg.solve(gram + reg * jnp.eye(n, dtype=gram.dtype), rhs)
    params = {"kernel": theta[:-1].reshape(k, k), "bias": theta[-1]}
    return params, apply(params, f, "linear", cfg), jnp.asarray(0, jnp.int32)


def _adam_step(tx, grads, opt_state, params, lr):
    """One Adam step (``tx = optax.scale_by_adam()``, learning rate ``lr`` traced)."""
    upd, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(lambda a, b: a - lr * b, params, upd), opt_state


def _keep_training(step, since_best, cfg: TrainConfig):
    """Early stopping: go on below ``min_steps``, then until ``patience`` steps without a better
    validation score, never beyond ``max_steps``."""
    return (step < cfg.max_steps) & ((step < cfg.min_steps) | (since_best < cfg.patience))


class _N2FCarry(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array
    best: jax.Array
    since_best: jax.Array
    buf: jax.Array  # (n_average, *f.shape) ring buffer of validation outputs
    n_buf: jax.Array


def _report(cfg: TrainConfig, step, score) -> None:
    """Training progress to the host (only when ``cfg.report``; see :class:`TrainConfig`)."""
    if cfg.report:
        jax.debug.callback(progress.training_tick, step, score)


def fit_n2f(params: Any, f: jax.Array, w: jax.Array, lr, cfg: TrainConfig):
    """Region-masked Noise2Fast training of the CNN expert (eq. (12)) in compiled loops.

    One Adam step per training pair, cycling through the checkerboard pairs; every
    ``val_every`` steps the full image is denoised and scored by ``mean_w (D(f) - f)^2``; stop
    after ``min_steps`` once the score has not improved for ``patience`` steps, or at
    ``max_steps``. Deterministic given ``params``.

    Returns:
      ``(params, denoised, steps)``: final params, the average of the last ``n_average``
      validation outputs (shaped like ``f``) and the number of Adam steps taken.
    """
    net = _net(cfg)
    import optax  # imported when a training loop is traced (see _net)

    tx = optax.scale_by_adam()
    pairs = ops.checkerboard_pairs(f, cfg.ndim)
    wpairs = ops.checkerboard_pairs(w, cfg.ndim)
    # The loss of a pair whose target pixels carry no weight is 0 (not NaN) by construction.

    def loss_fn(p, j):
        (x, y), (_, wt) = pairs[j], wpairs[j]
        return _weighted_mse(net.apply({"params": p}, x), y, wt)

    grad_fns = [lambda p, j=j: jax.grad(loss_fn)(p, j) for j in range(len(pairs))]

    def train_step(step, carry):
        params, opt_state = carry
        return _adam_step(tx, lax.switch(step % len(pairs), grad_fns, params), opt_state, params,
                          lr)

    def cond(c: _N2FCarry):
        return _keep_training(c.step, c.since_best, cfg)

    def body(c: _N2FCarry):
        params, opt_state = lax.fori_loop(c.step, c.step + cfg.val_every, train_step,
                                          (c.params, c.opt_state))
        out = net.apply({"params": params}, f)
        score = _weighted_mse(out, f, w)
        _report(cfg, c.step + cfg.val_every, score)
        improved = score < c.best
        return _N2FCarry(
            params=params, opt_state=opt_state, step=c.step + cfg.val_every,
            best=jnp.where(improved, score, c.best),
            since_best=jnp.where(improved, 0, c.since_best + cfg.val_every),
            buf=c.buf.at[c.n_buf % cfg.n_average].set(out), n_buf=c.n_buf + 1,
        )

    init = _N2FCarry(
        params=params, opt_state=tx.init(params), step=jnp.asarray(0, jnp.int32),
        best=jnp.asarray(jnp.inf, jnp.float32), since_best=jnp.asarray(0, jnp.int32),
        buf=jnp.zeros((cfg.n_average,) + f.shape, f.dtype), n_buf=jnp.asarray(0, jnp.int32),
    )
    c = lax.while_loop(cond, body, init)
    n = jnp.minimum(c.n_buf, cfg.n_average)
    return c.params, jnp.sum(c.buf, axis=0) / jnp.maximum(n, 1).astype(f.dtype), c.step


# ----------------------------------------------------------------------------------------
# Crop training and tiled inference: cost independent of the image size
# ----------------------------------------------------------------------------------------


def _windows(x: jax.Array, ndim: int, size, starts: jax.Array) -> jax.Array:
    """``(n, *lead, *size)`` windows of ``x`` (``(*lead, *s)``) at ``starts`` ``(n, ndim)``;
    ``size`` an int (a cube) or one side per spatial axis."""
    lead = x.ndim - ndim
    size = (size,) * ndim if isinstance(size, int) else tuple(size)

    def one(st):
        return lax.dynamic_slice(x, (0,) * lead + tuple(st), x.shape[:lead] + size)

    return jax.vmap(one)(starts)


def _tiling(spatial: tuple, size: int, halo: int):
    """A grid of ``size^ndim`` tiles covering ``spatial``, each read with ``halo`` pixels of
    context: ``(counts, pads, starts)`` — tiles per axis, the zero padding (halo before, halo
    plus the ragged rest after) and the ``(prod(counts), ndim)`` int32 window corners in the
    padded array."""
    counts = tuple(-(-n // size) for n in spatial)
    pads = [(halo, c * size - n + halo) for n, c in zip(spatial, counts)]
    idx = jnp.stack(jnp.meshgrid(*(jnp.arange(c) for c in counts), indexing="ij"), -1)
    return counts, pads, (idx.reshape(-1, len(counts)) * size).astype(jnp.int32)


def apply_tiled(params: Any, f: jax.Array, kind: str, cfg: TrainConfig, tile: int | None = None):
    """Expert output on the whole image, computed in tiles of ``tile^ndim`` pixels (with a halo
    of the receptive field), so memory stays bounded; equal to :func:`apply` (the hidden
    activations are masked outside the image, as the per-layer zero padding does)."""
    tile = tile or cfg.tile
    nd = cfg.ndim
    spatial = f.shape[f.ndim - nd:]
    if kind != "n2f" or all(n <= tile for n in spatial):
        return apply(params, f, kind, cfg)
    m, lead = cfg.depth, f.ndim - nd
    counts, pads, starts = _tiling(spatial, tile, m)
    fp = jnp.pad(f, [(0, 0)] * lead + pads)
    vp = jnp.pad(jnp.ones(spatial, f.dtype), pads)
    core = (Ellipsis,) + (slice(m, m + tile),) * nd
    net = _net(cfg)

    def one(st):  # SAME convolutions (trimmed VALID ones gain nothing on large tiles)
        x = _windows(fp, nd, tile + 2 * m, st[None])[0]
        v = _windows(vp, nd, tile + 2 * m, st[None])[0]
        return net.apply({"params": params}, x, v)[core]

    out = lax.map(one, starts)  # (T, *lead, tile^nd)
    out = out.reshape(counts + out.shape[1:])  # (*counts, *lead, *tile)
    perm = [nd + i for i in range(lead)] + [a for i in range(nd) for a in (i, nd + lead + i)]
    out = out.transpose(perm).reshape(f.shape[:lead] + tuple(c * tile for c in counts))
    return out[(Ellipsis,) + tuple(slice(0, n) for n in spatial)]


class CropSampler(NamedTuple):
    """Where the training crops of :func:`fit_n2f_crops` come from (a pytree of arrays).

    The image is cut into a grid of ``crop^ndim`` tiles; a crop is one tile plus a halo of
    context (:func:`crop_halos`), read from the image zero-padded by ``2 * depth`` pixels.
    Tile ``t`` is drawn with probability ``prob[t]``.
    """

    fp: jax.Array  # (*lead, *padded) zero-padded image
    wp: jax.Array  # (*padded) zero-padded region weight
    vp: jax.Array  # (*padded) 1 inside the image, 0 in the padding
    starts: jax.Array  # (T, ndim) int32 corners of the tiles' 2*depth halos in the padded image
    prob: jax.Array  # (T,) tile probabilities (region weight + a small floor)
    total: jax.Array  # () sum of the region weight


def crop_halos(cfg: TrainConfig, axis: int | None) -> tuple[int, ...]:
    """Context pixels read around a tile, per spatial axis: the net's receptive-field radius
    ``depth`` (rounded up to even, which keeps the checkerboard colours of the crop those of
    the image), and ``2 * depth`` along the squeezed ``axis`` of a training pair (a pixel of the
    squeezed image spans two of the image there). ``axis=None``: validation crops, which the
    expert sees unsqueezed."""
    d = cfg.depth + cfg.depth % 2
    return tuple(2 * cfg.depth if b == axis else d for b in range(cfg.ndim))


def crop_sampler(f: jax.Array, w: jax.Array, cfg: TrainConfig) -> CropSampler:
    """The :class:`CropSampler` of image ``f`` (``(*lead, *s)``) and weight ``w`` (``(*s)``)."""
    nd, size, halo = cfg.ndim, cfg.crop, 2 * cfg.depth
    lead = f.ndim - nd
    spatial = f.shape[lead:]
    counts, pads, starts = _tiling(spatial, size, halo)
    wp = jnp.pad(w, pads)
    core = wp[tuple(slice(halo, halo + c * size) for c in counts)]
    mass = jnp.sum(core.reshape(sum(((c, size) for c in counts), ())),
                   axis=tuple(range(1, 2 * nd, 2))).reshape(-1)
    total = jnp.sum(w)
    prob = mass + 1e-3 * (total / mass.size + 1e-6)
    return CropSampler(jnp.pad(f, [(0, 0)] * lead + pads), wp,
                       jnp.pad(jnp.ones(spatial, f.dtype), pads), starts,
                       prob / jnp.sum(prob), total)


def crop_batch(s: CropSampler, tiles: jax.Array, cfg: TrainConfig, axis: int | None = None):
    """Crops of the tiles ``tiles`` (``(n,)`` int) with the halos of :func:`crop_halos`:
    ``(x (n, *lead, *win), weight (n, *win), valid (n, *win))``, ``win = crop + 2 halo``; the
    weight of tile ``t`` is scaled by ``1 / (prob[t] n total)`` and zero on the halo, so that
    the expected loss over tiles drawn from ``prob`` is the whole image's."""
    nd, size = cfg.ndim, cfg.crop
    halos = crop_halos(cfg, axis)
    win = tuple(size + 2 * h for h in halos)
    st = s.starts[tiles] + jnp.asarray([2 * cfg.depth - h for h in halos], jnp.int32)
    inner = jnp.zeros(win, s.wp.dtype).at[tuple(slice(h, h + size) for h in halos)].set(1.0)
    wt = _windows(s.wp, nd, win, st) * inner
    scale = s.prob[tiles] * tiles.shape[0] * s.total + 1e-12
    return (_windows(s.fp, nd, win, st), wt / scale.reshape((-1,) + (1,) * nd),
            _windows(s.vp, nd, win, st))


def shard_crops(arrays: tuple, cfg: TrainConfig, weight: int = 1) -> tuple:
    """Crop arrays (e.g. ``(x, weight, valid)`` of :func:`crop_batch`) split along their leading
    (crop) axis over ``cfg.crop_mesh``'s ``"space"`` axis; padded to a multiple of its size
    with copies of the first crops whose weight (``arrays[weight]``) is **zero**, which change
    neither the loss nor its gradient. Without a mesh, unchanged."""
    if cfg.crop_mesh is None:
        return arrays
    n = arrays[0].shape[0]
    pad = -n % cfg.crop_mesh.shape["space"]
    if pad:
        take = jnp.arange(pad) % n
        arrays = tuple(jnp.concatenate([a, jnp.zeros_like(a[take]) if i == weight else a[take]])
                       for i, a in enumerate(arrays))
    return _on_crop_mesh(arrays, cfg, "space")


def _on_crop_mesh(arrays: tuple, cfg: TrainConfig, axis: str | None) -> tuple:
    """``arrays`` constrained to ``cfg.crop_mesh``: split along their leading axis over mesh
    axis ``axis``, or replicated (``None``)."""
    from jax.sharding import NamedSharding, PartitionSpec

    sh = NamedSharding(cfg.crop_mesh, PartitionSpec(axis))
    return tuple(lax.with_sharding_constraint(a, sh) for a in arrays)


def _trim(a: jax.Array, ndim: int, m: int) -> jax.Array:
    """``a`` without ``m`` pixels on both sides of its last ``ndim`` axes."""
    return a[(Ellipsis,) + tuple(slice(m, n - m) for n in a.shape[a.ndim - ndim:])]


def _crop_error(params, x, wt, v, target, cfg: TrainConfig) -> jax.Array:
    """``sum wt (D(x) - target)^2`` over a batch of crops, the expert run with ``VALID``
    convolutions (``trim``), so only the pixels with their full context are computed."""
    out = _net(cfg).apply({"params": params}, x, v, trim=True)
    m, nd = cfg.depth, cfg.ndim
    wt = _trim(wt, nd, m)
    wt = wt.reshape(wt.shape[:1] + (1,) * (out.ndim - wt.ndim) + wt.shape[1:])
    return jnp.sum(wt * (out - _trim(target, nd, m)) ** 2)


def crop_loss(params: Any, x: jax.Array, wt: jax.Array, v: jax.Array, axis: int,
              cfg: TrainConfig) -> jax.Array:
    """Noise2Fast loss of a batch of crops (:func:`crop_batch` with this ``axis``) for the two
    checkerboard pairs squeezed along spatial ``axis``:
    ``sum_pairs sum_i wt_i (D(x)_i - y_i)^2 / channels``.

    With ``B`` tiles drawn from ``prob`` its expectation is the whole image's region-masked
    loss of that direction, ``sum_pairs sum_i w_i (D(x)_i - y_i)^2 / (sum w * channels)``
    (the crops see their full receptive field and the border padding of the whole image)."""
    nd = cfg.ndim
    pairs, wpairs, vpairs = (ops.checkerboard_pairs(a, nd, axis) for a in (x, wt, v))
    # Both pairs of every crop in one batch: one pass of the expert (half the compile time of
    # two; sharded over devices with a crop mesh).
    xs, ys, ws, vs = (jnp.concatenate([q[j] for q in qs]) for qs, j in
                      ((pairs, 0), (pairs, 1), (wpairs, 1), (vpairs, 0)))
    if cfg.crop_mesh is not None:
        xs, ws, vs, ys = shard_crops((xs, ws, vs, ys), cfg)
    return _crop_error(params, xs, ws, vs, ys, cfg) / max(cfg.channels, 1)


class _CropCarry(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array
    best: jax.Array
    since_best: jax.Array
    snaps: Any  # params at the last n_average validations, stacked (ring buffer)
    n_snaps: jax.Array


def fit_n2f_crops(key: jax.Array, params: Any, f: jax.Array, w: jax.Array, lr, cfg: TrainConfig):
    r"""Region-masked Noise2Fast training on crops: the cost of a step does not grow with the
    image.

    Each Adam step draws ``cfg.batch`` crops (:func:`crop_sampler`: tiles of ``crop^ndim``
    pixels with a halo of context, tile ``t`` with probability proportional to the region weight
    it holds plus a small floor). Step ``k`` uses the two checkerboard pairs squeezed along
    spatial axis ``k mod ndim`` (:func:`crop_loss`), an **unbiased** estimate of the
    region-masked Noise2Fast loss of eq. (12) on the whole image for that direction (the
    full-image scheme cycles through the pairs in the same way). Validation scores a fixed set
    of ``cfg.val_crops`` crops (the expert applied to them, against their noisy pixels, same
    weighting) every ``val_every`` steps; early stopping as in :func:`fit_n2f`. The output is
    the expert with the mean of the parameters at the last ``n_average`` validations, applied
    to the whole image in tiles (:func:`apply_tiled`).

    Returns:
      ``(params, output, steps)`` as :func:`fit_n2f`.
    """
    import optax  # imported when a training loop is traced (see _net)

    tx = optax.scale_by_adam()
    nd = cfg.ndim
    s = crop_sampler(f, w, cfg)
    if cfg.crop_mesh is not None:  # one gather per W-step; the crops are then local slices
        fp, wp, vp = _on_crop_mesh((s.fp, s.wp, s.vp), cfg, None)
        s = s._replace(fp=fp, wp=wp, vp=vp)
    logp = jnp.log(s.prob)

    def draw(k, n, axis):
        return crop_batch(s, jax.random.categorical(k, logp, shape=(n,)), cfg, axis)

    def grad_fn(a):
        return lambda p, k: jax.grad(crop_loss)(p, *draw(k, cfg.batch, a), a, cfg)

    kv, kt = jax.random.split(key)
    vx, vw, vv = shard_crops(draw(kv, cfg.val_crops, None), cfg)  # (training: crop_loss)

    def score(p):
        return _crop_error(p, vx, vw, vv, vx, cfg)

    def train_step(step, carry):
        p, opt_state = carry
        g = lax.switch(step % nd, [grad_fn(a) for a in range(nd)], p,
                       jax.random.fold_in(kt, step))
        return _adam_step(tx, g, opt_state, p, lr)

    def cond(c: _CropCarry):
        return _keep_training(c.step, c.since_best, cfg)

    def body(c: _CropCarry):
        p, opt_state = lax.fori_loop(c.step, c.step + cfg.val_every, train_step,
                                     (c.params, c.opt_state))
        sc = score(p)
        _report(cfg, c.step + cfg.val_every, sc)
        improved = sc < c.best
        snaps = jax.tree.map(lambda b, a: b.at[c.n_snaps % cfg.n_average].set(a), c.snaps, p)
        return _CropCarry(p, opt_state, c.step + cfg.val_every, jnp.where(improved, sc, c.best),
                          jnp.where(improved, 0, c.since_best + cfg.val_every), snaps,
                          c.n_snaps + 1)

    init = _CropCarry(
        params=params, opt_state=tx.init(params), step=jnp.asarray(0, jnp.int32),
        best=jnp.asarray(jnp.inf, jnp.float32), since_best=jnp.asarray(0, jnp.int32),
        snaps=jax.tree.map(lambda a: jnp.zeros((cfg.n_average,) + a.shape, a.dtype), params),
        n_snaps=jnp.asarray(0, jnp.int32),
    )
    c = lax.while_loop(cond, body, init)
    n = jnp.clip(c.n_snaps, 1, cfg.n_average)
    avg = jax.tree.map(lambda b, a: jnp.where(c.n_snaps > 0, jnp.sum(b, 0) / n.astype(b.dtype), a),
                       c.snaps, c.params)
    return c.params, apply_tiled(avg, f, "n2f", cfg), c.step


def fit(key: jax.Array, params: Any, f: jax.Array, w: jax.Array, lr, kind: str,
        cfg: TrainConfig):
    """The W-step of one expert of ``kind``: ``(params, output, steps)``. ``key`` draws the
    training crops of a CNN expert in ``cfg.mode == "crops"``; nothing else is random."""
    if kind == "n2f" and cfg.mode == "crops":
        return fit_n2f_crops(key, params, f, w, lr, cfg)
    if kind == "n2f":
        return fit_n2f(params, f, w, lr, cfg)
    if kind == "linear":
        return fit_linear(f, w, cfg)
    if kind == "constant":
        return fit_constant(f, w)
    if kind == "smooth":
        return fit_smooth(f, w, cfg)
    raise ValueError(f"unknown expert kind {kind!r}; expected one of {KINDS}")


def fit_group(keys: jax.Array, params: Any, f: jax.Array, w: jax.Array, lr, kind: str,
              cfg: TrainConfig, *, batch: str = "map"):
    """W-step of ``n`` experts of one kind stacked along a leading axis.

    Args:
      keys: ``(n,)`` keys; params: stacked params (leading axis ``n``); w: ``(n, *s)`` region
        weights.
      batch: ``"vmap"`` (one batched program: accelerators) or ``"map"`` (one after the other
        with ``lax.map``: XLA:CPU, where batched convolutions inside loops are slower).

    Returns:
      ``(params, outputs (n, *f.shape), steps (n,))``.
    """
    one = lambda k, p, wi: fit(k, p, f, wi, lr, kind, cfg)  # noqa: E731
    if w.shape[0] == 1:  # no batching machinery for a single expert
        out = one(keys[0], jax.tree.map(lambda a: a[0], params), w[0])
        return jax.tree.map(lambda a: a[None], out)
    if batch == "vmap":
        return jax.vmap(one)(keys, params, w)
    return lax.map(lambda a: one(*a), (keys, params, w))


@backend.jit(static_argnames=("cfg",))
def _denoise_whole(key, f, lr, cfg: TrainConfig):
    w = jnp.ones(f.shape[f.ndim - cfg.ndim:], f.dtype)
    params = init_params(key, "n2f", cfg)
    return fit(jax.random.fold_in(key, 1), params, f, w, lr, "n2f", cfg)[1]


DENOISER_MIN_STEPS = 400
"""Step cap of the stand-alone denoiser: at least this many (and a patience of at least 100)."""


def denoiser_config(cfg: TrainConfig) -> TrainConfig:
    """The schedule of the stand-alone Noise2Fast denoiser derived from the experts' ``cfg``:
    whole-image training (``mode="full"``, the scheme of Noise2Fast) with at least
    :data:`DENOISER_MIN_STEPS` steps and patience 100, whatever the experts use.

    Crop training (the experts' default W-step, made for warm-started region experts) is a poor
    stand-alone denoiser: on three 128² DSB2018 patches at noise 30 it gave 21.8–27.4 dB against
    29.8–30.9 dB for this schedule (issue 15 closing note). The denoiser's cost therefore grows
    with the image size; it only runs for ``init_denoise=True`` starts and the sequential
    baseline."""
    return dataclasses.replace(
        cfg, mode="full", max_steps=max(cfg.max_steps, DENOISER_MIN_STEPS),
        min_steps=max(cfg.min_steps, 100), patience=max(cfg.patience, 100))


def denoise(key: jax.Array, f: jax.Array, lr, cfg: TrainConfig) -> jax.Array:
    """Noise2Fast on the whole normalised image ``f`` (one CNN expert, no regions; jitted) with
    the schedule :func:`denoiser_config` derives from ``cfg``: the paper's denoiser for the
    threshold start and the sequential baseline."""
    return _denoise_whole(key, jnp.asarray(f), jnp.float32(lr), denoiser_config(cfg))
