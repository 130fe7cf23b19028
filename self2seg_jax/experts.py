r"""Expert denoisers and their region-restricted self-supervised training (the W-step).

Three kinds of expert (paper Example 1):

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

Shapes: ``f`` is ``(*s)`` or ``(L, *s)`` (channel-first), a region weight ``w`` is ``(*s)``;
every fit returns ``(params, output D(f) shaped like f, Adam steps)``. Params are pytrees, so
experts of one kind stack along a leading axis (:func:`fit_group`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from self2seg_jax import ops

KINDS = ("n2f", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static options of the experts (hashable; part of the compiled program's key).

    Attributes:
      width, depth: CNN channels and number of 3x3 conv + ReLU layers.
      linear_size: odd filter size of the linear expert.
      max_steps: Adam step cap per W-step; min_steps: steps before early stopping may trigger.
      patience: stop when the validation score has not improved for this many steps.
      val_every: steps between validations (each is one full-image forward pass).
      n_average: number of last validation outputs averaged into the expert's output.
      conv_impl: ``"lax"`` or ``"loopsafe"`` (see :func:`self2seg_jax.ops.conv_loopsafe`).
      ndim: spatial dimensions (2 or 3); channels: 0 for ``(*s)`` images, ``L`` for ``(L, *s)``.
    """

    width: int = 32
    depth: int = 4
    linear_size: int = 15
    max_steps: int = 400
    min_steps: int = 100
    patience: int = 100
    val_every: int = 10
    n_average: int = 10
    conv_impl: str = "loopsafe"
    ndim: int = 2
    channels: int = 0


class _Conv(nn.Module):
    features: int
    impl: str
    ndim: int

    @nn.compact
    def __call__(self, x):
        k = (3,) * self.ndim
        w = self.param("kernel", nn.initializers.lecun_normal(), k + (x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return ops.conv(x, w, impl=self.impl) + b


class N2FNet(nn.Module):
    """Expert CNN: ``depth`` x [3x3 conv, ReLU] -> 1x1 conv -> sigmoid.

    Zero ("SAME") padding (the authors reflect-pad, which doubles XLA:CPU's forward cost).
    Maps ``(*b, *s)`` to ``(*b, *s)`` (``channels = 0``) or ``(*b, L, *s)`` to ``(*b, L, *s)``.
    """

    width: int = 32
    depth: int = 4
    impl: str = "lax"
    ndim: int = 2
    channels: int = 0

    @nn.compact
    def __call__(self, x):
        nd, nc = self.ndim, self.channels
        if nc:
            lead, core = x.shape[: -(nd + 1)], x.shape[-(nd + 1):]
            h = jnp.moveaxis(x.reshape((-1,) + core), 1, -1)
        else:
            lead, core = x.shape[:-nd], x.shape[-nd:]
            h = x.reshape((-1,) + core + (1,))
        for _ in range(self.depth):
            h = nn.relu(_Conv(self.width, self.impl, nd)(h))
        h = nn.sigmoid(nn.Dense(max(nc, 1))(h))
        if nc:
            return jnp.moveaxis(h, -1, 1).reshape(lead + core)
        return h[..., 0].reshape(lead + core)


def _net(cfg: TrainConfig) -> N2FNet:
    return N2FNet(width=cfg.width, depth=cfg.depth, impl=cfg.conv_impl, ndim=cfg.ndim,
                  channels=cfg.channels)


def init_params(key: jax.Array, kind: str, cfg: TrainConfig) -> Any:
    """Fresh parameters of an expert of ``kind`` (``key`` is used by ``"n2f"`` only)."""
    if kind == "n2f":
        dummy = jnp.zeros(((cfg.channels,) if cfg.channels else ()) + (8,) * cfg.ndim, jnp.float32)
        return _net(cfg).init(key, dummy)["params"]
    if kind == "linear":
        k = cfg.linear_size
        w = jnp.zeros((k, k), jnp.float32).at[k // 2, k // 2].set(1.0)
        return {"kernel": w, "bias": jnp.zeros((), jnp.float32)}
    if kind == "constant":
        return {"c": jnp.zeros((cfg.channels,) if cfg.channels else (), jnp.float32)}
    raise ValueError(f"unknown expert kind {kind!r}; expected one of {KINDS}")


def apply(params: Any, f: jax.Array, kind: str, cfg: TrainConfig) -> jax.Array:
    """Expert output ``D(f)``, shaped like ``f``."""
    if kind == "n2f":
        return _net(cfg).apply({"params": params}, f)
    if kind == "linear":
        out = ops.conv(f[None, :, :, None], params["kernel"][:, :, None, None])[0, :, :, 0]
        return out + params["bias"]
    if kind == "constant":
        c = params["c"]
        c = c.reshape(c.shape + (1,) * (f.ndim - c.ndim))
        return jnp.broadcast_to(c, f.shape).astype(f.dtype)
    raise ValueError(f"unknown expert kind {kind!r}; expected one of {KINDS}")


def blind_spot_output(params: Any, f: jax.Array, kind: str, cfg: TrainConfig, den: jax.Array):
    """The expert's blind-spot prediction (:func:`self2seg_jax.ops.blind_spot`): the trained map
    applied to the checkerboard halves, as in training, so the value at a pixel never depends
    on that pixel's noise. A constant expert is already blind (returns ``den``, which also
    fills pixels an odd size crops away)."""
    if kind == "constant":
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


class _N2FCarry(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array
    best: jax.Array
    since_best: jax.Array
    buf: jax.Array  # (n_average, *f.shape) ring buffer of validation outputs
    n_buf: jax.Array


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
        g = lax.switch(step % len(pairs), grad_fns, params)
        upd, opt_state = tx.update(g, opt_state, params)
        return jax.tree.map(lambda a, b: a - lr * b, params, upd), opt_state

    def cond(c: _N2FCarry):
        return (c.step < cfg.max_steps) & ((c.step < cfg.min_steps) | (c.since_best < cfg.patience))

    def body(c: _N2FCarry):
        params, opt_state = lax.fori_loop(c.step, c.step + cfg.val_every, train_step,
                                          (c.params, c.opt_state))
        out = net.apply({"params": params}, f)
        score = _weighted_mse(out, f, w)
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


def fit(params: Any, f: jax.Array, w: jax.Array, lr, kind: str, cfg: TrainConfig):
    """The W-step of one expert of ``kind``: ``(params, output, steps)``."""
    if kind == "n2f":
        return fit_n2f(params, f, w, lr, cfg)
    if kind == "linear":
        return fit_linear(f, w, cfg)
    if kind == "constant":
        return fit_constant(f, w)
    raise ValueError(f"unknown expert kind {kind!r}; expected one of {KINDS}")


def fit_group(params: Any, f: jax.Array, w: jax.Array, lr, kind: str, cfg: TrainConfig, *,
              batch: str = "map"):
    """W-step of ``n`` experts of one kind stacked along a leading axis.

    Args:
      params: stacked params (leading axis ``n``); w: ``(n, *s)`` region weights.
      batch: ``"vmap"`` (one batched program: accelerators) or ``"map"`` (one after the other
        with ``lax.map``: XLA:CPU, where batched convolutions inside loops are slower).

    Returns:
      ``(params, outputs (n, *f.shape), steps (n,))``.
    """
    one = lambda p, wi: fit(p, f, wi, lr, kind, cfg)  # noqa: E731
    if w.shape[0] == 1:  # no batching machinery for a single expert
        out = one(jax.tree.map(lambda a: a[0], params), w[0])
        return jax.tree.map(lambda a: a[None], out)
    if batch == "vmap":
        return jax.vmap(one)(params, w)
    return lax.map(lambda a: one(*a), (params, w))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _denoise_whole(params, f, lr, cfg: TrainConfig):
    return fit_n2f(params, f, jnp.ones(f.shape[f.ndim - cfg.ndim:], f.dtype), lr, cfg)[1]


def denoise(key: jax.Array, f: jax.Array, lr, cfg: TrainConfig) -> jax.Array:
    """Noise2Fast on the whole normalised image ``f`` (one CNN expert, no regions; jitted):
    the paper's denoiser for the threshold start and the sequential baseline."""
    return _denoise_whole(init_params(key, "n2f", cfg), jnp.asarray(f), jnp.float32(lr), cfg)
