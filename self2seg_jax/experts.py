r"""Expert denoisers D_F, D_B and their region-restricted self-supervised training.

Three kinds of expert (paper Example 1):

* ``"n2f"`` — the Noise2Fast-style CNN of the paper (Fig. 4): ``depth`` blocks of
  3x3 conv + ReLU with ``width`` channels, a 1x1 conv and a sigmoid. Trained with Adam on the
  four checkerboard (input, target) pairs of :func:`ops.checkerboard_pairs`, with the loss
  restricted to the expert's region at the *target* pixels (eq. (12)); early stopping on the
  region-masked self-validation score ``mean_w (D(f) - f)^2``; the output is the average of the
  last ``n_average`` validation outputs (Noise2Fast output averaging).
* ``"linear"`` — one ``k x k`` filter plus a bias (paper Fig. 1). Its Noise2Fast loss is a
  weighted linear least-squares problem, so it is **solved exactly** (normal equations with a
  tiny ridge) instead of by Adam: the W-step is then an exact minimiser of its loss.
* ``"constant"`` — the region mean ``c = sum(w f) / sum(w)`` (the Chan–Vese update), the exact
  minimiser of ``sum w (f - c)^2``; with two constant experts Self2Seg *is* convex Chan–Vese.

Shapes: ``f`` and the region weight ``w`` are ``(h, w)`` float32 in ``[0, 1]``; every fit
returns ``(params, denoised (h, w), steps)``. Params are pytrees (a Flax Linen params dict for
``"n2f"``), so experts of the same kind stack along a leading axis and train under ``vmap``.

Convolution backend: see :func:`ops.conv2d_loopsafe` — on CPU the default uses a backward pass
that keeps Adam steps inside ``lax`` loops as fast as standalone steps (16x faster than
``lax.conv`` gradients there); ``conv_impl="lax"`` gives the plain XLA convolution.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from self2seg_jax import ops

EXPERT_KINDS = ("n2f", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static options of expert training (hashable; part of the jit cache key).

    Attributes:
      kind: ``"n2f"``, ``"linear"`` or ``"constant"``.
      width, depth: CNN channels and number of 3x3 conv + ReLU layers (``"n2f"``).
      linear_size: odd filter size of the ``"linear"`` expert.
      max_steps: Adam step cap per W-step (``"n2f"``).
      min_steps: steps always taken before early stopping may trigger.
      patience: stop when the validation score has not improved for this many steps.
      val_every: steps between validations (each validation is one full-image forward pass).
      n_average: number of last validation outputs averaged into the expert's output.
      conv_impl: ``"lax"`` or ``"loopsafe"`` (resolved from ``"auto"`` by the caller).
      ndim: spatial dimensions of the image (2, or 3 for volumes: 3x3x3 convolutions and the
        six 3-D checkerboard pairs).
      channels: 0 for a single-channel image ``(*s)``; ``L >= 1`` for an ``(L, *s)`` image
        (the CNN maps L channels to L channels, the constant expert has one mean per channel).
    """

    kind: str = "n2f"
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
    kernel_size: int = 3
    impl: str = "lax"
    ndim: int = 2

    @nn.compact
    def __call__(self, x):
        k = (self.kernel_size,) * self.ndim
        w = self.param("kernel", nn.initializers.lecun_normal(), k + (x.shape[-1], self.features))
        b = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return ops.conv2d(x, w, impl=self.impl) + b


class N2FNet(nn.Module):
    """Noise2Fast/Self2Seg expert CNN: ``depth`` x [3x3 conv, ReLU] -> 1x1 conv -> sigmoid.

    Zero ("SAME") padding is used (the authors use reflect padding, which doubles XLA:CPU's
    forward cost; see PERF notes). Maps ``(*b, *s)`` to ``(*b, *s)`` (``channels = 0``) or
    ``(*b, L, *s)`` to ``(*b, L, *s)`` (``channels = L``), ``len(s) == ndim``.
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
            lead, core = x.shape[: -(nd + 1)], x.shape[-(nd + 1) :]
            h = jnp.moveaxis(x.reshape((-1,) + core), 1, -1)
        else:
            lead, core = x.shape[:-nd], x.shape[-nd:]
            h = x.reshape((-1,) + core + (1,))
        for _ in range(self.depth):
            h = nn.relu(_Conv(self.width, 3, self.impl, nd)(h))
        h = nn.sigmoid(nn.Dense(max(nc, 1))(h))
        if nc:
            return jnp.moveaxis(h, -1, 1).reshape(lead + core)
        return h[..., 0].reshape(lead + core)


def make_net(cfg: TrainConfig) -> N2FNet:
    return N2FNet(
        width=cfg.width, depth=cfg.depth, impl=cfg.conv_impl, ndim=cfg.ndim, channels=cfg.channels
    )


def image_shape(cfg: TrainConfig, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of an image for ``cfg``: ``spatial`` or ``(channels, *spatial)``."""
    return ((cfg.channels,) if cfg.channels else ()) + tuple(spatial)


def init_params(key: jax.Array, cfg: TrainConfig) -> Any:
    """Fresh expert parameters for ``cfg.kind`` (a pytree; ``key`` used by ``"n2f"`` only)."""
    if cfg.kind == "n2f":
        dummy = jnp.zeros(image_shape(cfg, (8,) * cfg.ndim), jnp.float32)
        return make_net(cfg).init(key, dummy)["params"]
    if cfg.kind == "linear":
        k = cfg.linear_size
        w = jnp.zeros((k, k), jnp.float32).at[k // 2, k // 2].set(1.0)
        return {"kernel": w, "bias": jnp.zeros((), jnp.float32)}
    if cfg.kind == "constant":
        return {"c": jnp.zeros((cfg.channels,) if cfg.channels else (), jnp.float32)}
    raise ValueError(f"unknown expert kind {cfg.kind!r}; expected one of {EXPERT_KINDS}")


def apply_expert(params: Any, f: jax.Array, cfg: TrainConfig) -> jax.Array:
    """Expert output ``D(f)``, ``(h, w) -> (h, w)``."""
    if cfg.kind == "n2f":
        return make_net(cfg).apply({"params": params}, f)
    if cfg.kind == "linear":
        k = params["kernel"]
        out = ops.conv2d(f[None, :, :, None], k[:, :, None, None], impl="lax")[0, :, :, 0]
        return out + params["bias"]
    if cfg.kind == "constant":
        c = params["c"]
        return jnp.broadcast_to(c.reshape(c.shape + (1,) * (f.ndim - c.ndim)), f.shape).astype(f.dtype)
    raise ValueError(f"unknown expert kind {cfg.kind!r}")


def blind_spot_output(params: Any, f: jax.Array, cfg: TrainConfig, den: jax.Array) -> jax.Array:
    """The expert's blind-spot prediction (:func:`self2seg_jax.ops.checkerboard_blind_spot_nd`):
    the trained map applied to the checkerboard halves, as in training, so that the value at a
    pixel never depends on that pixel's noise. CNN and linear experts; a constant expert is
    already blind (returns ``den``). ``den`` fills pixels an odd size crops away. ``(*s)``."""
    if cfg.kind == "constant":
        return den
    return ops.checkerboard_blind_spot_nd(lambda z: apply_expert(params, z, cfg), f, cfg.ndim, full=den)


def _weighted_mse(pred, target, w):
    """``mean_w (pred - target)^2``; ``w`` broadcasts over leading (channel) axes."""
    n_ch = pred.size // w.size
    return jnp.sum(w * (pred - target) ** 2) / ((jnp.sum(w) + 1e-8) * n_ch)


# ----------------------------------------------------------------------------------------
# W-step for each kind
# ----------------------------------------------------------------------------------------


def fit_constant(f: jax.Array, w: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
    """Exact minimiser of ``sum w (f - c)^2``: ``c`` = weighted mean (Chan–Vese update).

    ``f`` is ``(*s)`` (scalar ``c``) or ``(L, *s)`` with ``w`` ``(*s)`` (one mean per channel).
    """
    axes = tuple(range(f.ndim - w.ndim, f.ndim))
    c = jnp.sum(w * f, axis=axes) / (jnp.sum(w) + 1e-8)
    den = jnp.broadcast_to(c.reshape(c.shape + (1,) * w.ndim), f.shape).astype(f.dtype)
    return {"c": c}, den, jnp.asarray(0, jnp.int32)


def fit_linear(f: jax.Array, w: jax.Array, cfg: TrainConfig, ridge: float = 1e-5):
    """Exact weighted least squares for a ``k x k`` filter + bias on the Noise2Fast pairs.

    Minimises ``sum_pairs sum_i w_t[i] ((omega * x)[i] + b - y[i])^2`` over ``(omega, b)``
    where ``(x, y)`` are the checkerboard (input, target) pairs and ``w_t`` the region weight
    at the target pixels; a ridge ``ridge * trace/n`` keeps the normal equations well posed.
    """
    k = cfg.linear_size
    n = k * k + 1
    gram = jnp.zeros((n, n), jnp.float32)
    rhs = jnp.zeros((n,), jnp.float32)
    for (x, y), (_, wt) in zip(ops.checkerboard_pairs(f), ops.checkerboard_pairs(w)):
        patches = lax.conv_general_dilated_patches(
            x[None, None], (k, k), (1, 1), "SAME", precision=lax.Precision.HIGHEST
        )[0]  # (k*k, h, w), channel index = row-major position in the window
        feats = jnp.concatenate([patches, jnp.ones((1,) + x.shape, x.dtype)], 0).reshape(n, -1)
        wf = feats * wt.reshape(1, -1)
        gram = gram + jnp.dot(wf, feats.T, precision=lax.Precision.HIGHEST)
        rhs = rhs + jnp.dot(wf, y.reshape(-1), precision=lax.Precision.HIGHEST)
    reg = ridge * jnp.trace(gram) / n + 1e-12
    theta = jnp.linalg.solve(gram + reg * jnp.eye(n, dtype=gram.dtype), rhs)
    # conv_general_dilated (cross-correlation) with kernel[a, b] multiplies x[i + a - k//2, ...],
    # which is exactly patch channel a*k + b.
    params = {"kernel": theta[:-1].reshape(k, k), "bias": theta[-1]}
    return params, apply_expert(params, f, cfg), jnp.asarray(0, jnp.int32)


class _N2FCarry(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array
    best: jax.Array
    since_best: jax.Array
    buf: jax.Array  # (n_average, h, w) ring buffer of validation outputs
    n_buf: jax.Array


def fit_n2f(
    params: Any,
    f: jax.Array,
    w: jax.Array,
    lr: jax.Array | float,
    cfg: TrainConfig,
) -> tuple[Any, jax.Array, jax.Array]:
    """Region-masked Noise2Fast training of the CNN expert (eq. (12)) in compiled loops.

    One Adam step per training pair, cycling through the checkerboard pairs (4 in 2-D, 6 in
    3-D); ``f`` is ``(*s)`` or ``(L, *s)`` (``cfg.channels``), ``w`` is ``(*s)``; every
    ``val_every`` steps the full image is denoised and scored by ``mean_w (D(f) - f)^2``; stop
    after ``min_steps`` once the score has not improved for ``patience`` steps, or at
    ``max_steps``. Deterministic given ``params`` (no randomness inside).

    Returns:
      ``(params, denoised, steps)``: final params, the average of the last ``n_average``
      validation outputs ``(h, w)``, and the number of Adam steps taken.
    """
    net = make_net(cfg)
    tx = optax.scale_by_adam()
    pairs = ops.checkerboard_pairs_nd(f, cfg.ndim)
    wpairs = ops.checkerboard_pairs_nd(w, cfg.ndim)
    n_pairs = len(pairs)
    # The loss of a pair whose target pixels carry no weight is 0 (not NaN) by construction.

    def loss_fn(p, j):
        (x, y), (_, wt) = pairs[j], wpairs[j]
        return _weighted_mse(net.apply({"params": p}, x), y, wt)

    grad_fns = [lambda p, j=j: jax.grad(loss_fn)(p, j) for j in range(n_pairs)]

    def train_step(step, carry):
        params, opt_state = carry
        g = lax.switch(step % n_pairs, grad_fns, params)
        upd, opt_state = tx.update(g, opt_state, params)
        params = jax.tree.map(lambda a, b: a - lr * b, params, upd)
        return params, opt_state

    def cond(c: _N2FCarry):
        return (c.step < cfg.max_steps) & ((c.step < cfg.min_steps) | (c.since_best < cfg.patience))

    def body(c: _N2FCarry):
        params, opt_state = lax.fori_loop(
            c.step, c.step + cfg.val_every, train_step, (c.params, c.opt_state)
        )
        out = net.apply({"params": params}, f)
        score = _weighted_mse(out, f, w)
        improved = score < c.best
        buf = c.buf.at[c.n_buf % cfg.n_average].set(out)
        return _N2FCarry(
            params=params,
            opt_state=opt_state,
            step=c.step + cfg.val_every,
            best=jnp.where(improved, score, c.best),
            since_best=jnp.where(improved, 0, c.since_best + cfg.val_every),
            buf=buf,
            n_buf=c.n_buf + 1,
        )

    init = _N2FCarry(
        params=params,
        opt_state=tx.init(params),
        step=jnp.asarray(0, jnp.int32),
        best=jnp.asarray(jnp.inf, jnp.float32),
        since_best=jnp.asarray(0, jnp.int32),
        buf=jnp.zeros((cfg.n_average,) + f.shape, f.dtype),
        n_buf=jnp.asarray(0, jnp.int32),
    )
    c = lax.while_loop(cond, body, init)
    n = jnp.minimum(c.n_buf, cfg.n_average)
    den = jnp.sum(c.buf, axis=0) / jnp.maximum(n, 1).astype(f.dtype)
    return c.params, den, c.step


def fit_expert(params: Any, f: jax.Array, w: jax.Array, lr, cfg: TrainConfig):
    """Dispatch the W-step on ``cfg.kind``; returns ``(params, denoised, steps)``."""
    if cfg.kind == "n2f":
        return fit_n2f(params, f, w, lr, cfg)
    if cfg.kind == "linear":
        return fit_linear(f, w, cfg)
    if cfg.kind == "constant":
        return fit_constant(f, w)
    raise ValueError(f"unknown expert kind {cfg.kind!r}")
