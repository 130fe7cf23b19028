r"""Convolutions: the experts' ``SAME`` convolution (with a CPU-loop-safe backward pass), the
mean filter ``K_sigma`` of the filtered data terms (paper Example 1) and the box sums of the
smooth expert.

Layouts: ``conv`` takes channel-last ``(n, *s, c_in)`` images and ``(*k, c_in, c_out)`` kernels
for 2-D or 3-D ``s``; ``mean_filter`` and ``box_sum`` act on the last ``ndim`` axes of any array.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
from jax import lax

_DN = {4: ("NHWC", "HWIO", "NHWC"), 5: ("NDHWC", "DHWIO", "NDHWC")}
CONV_IMPLS = ("lax", "loopsafe")


def _conv_plain(x: jax.Array, w: jax.Array, padding: str = "SAME") -> jax.Array:
    nsp = x.ndim - 2
    return lax.conv_general_dilated(x, w, (1,) * nsp, padding, dimension_numbers=_DN[x.ndim])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_loopsafe(x: jax.Array, w: jax.Array, padding: str = "SAME") -> jax.Array:
    """Stride-1 convolution whose backward pass stays fast inside compiled loops on CPU.

    Forward is ``lax.conv_general_dilated``. XLA:CPU runs the convolution *gradient* kernels
    10–20x slower inside ``while_loop``/``scan`` bodies than outside (jax-ml/jax#12868), and the
    experts are trained inside such loops; here the input gradient is a forward convolution
    with the flipped, transposed kernel and the weight gradient ``prod(k)`` matrix products of
    the output gradient with shifted input windows (:func:`_filter_grad`). Equal to the autodiff
    of ``lax.conv_general_dilated`` up to rounding.

    Args:
      x: ``(n, *s, c_in)``, ``len(s)`` 2 or 3.
      w: ``(*k, c_in, c_out)`` with odd ``k``.
      padding: ``"SAME"`` (output ``(n, *s, c_out)``) or ``"VALID"`` (output
        ``(n, *(s - k + 1), c_out)``: only the outputs whose window lies inside ``x``).
    """
    return _conv_plain(x, w, padding)


def _conv_fwd(x, w, padding):
    return _conv_plain(x, w, padding), (x, w)


def _conv_bwd(padding, res, g):
    x, w = res
    nsp = x.ndim - 2
    ks = w.shape[:nsp]
    wt = jnp.swapaxes(jnp.flip(w, tuple(range(nsp))), -1, -2)
    if padding == "SAME":
        dx = _conv_plain(g, wt, "SAME")
        xp = jnp.pad(x, [(0, 0)] + [(k // 2, k // 2) for k in ks] + [(0, 0)])
    else:  # VALID: the input gradient is the "full" correlation of g with the flipped kernel
        dx = _conv_plain(jnp.pad(g, [(0, 0)] + [(k - 1, k - 1) for k in ks] + [(0, 0)]), wt,
                         "VALID")
        xp = x
    return dx, _filter_grad(xp, g, ks).astype(w.dtype)


def _filter_grad(xp: jax.Array, g: jax.Array, ks: tuple) -> jax.Array:
    """``dw[k] = sum_{n, s} xp[n, s + k] g[n, s]`` (``(*ks, c_in, c_out)``) for the output
    gradient ``g`` ``(n, *s, c_out)`` and the (padded) input ``xp`` ``(n, *(s + ks - 1), c_in)``.

    One matrix product ``g^T window_k`` ``(c_out, c_in)`` per kernel offset ``k``, contracting
    the leading (batch and spatial) axes. In this order XLA:CPU transposes ``g`` once for all
    ``prod(ks)`` products and only slices the windows; the order ``window_k^T g`` transposes
    every window, which made those copies most of a training step
    (``benchmarks/bench_conv_bwd.py``)."""
    nsp = len(ks)
    lead = tuple(range(nsp + 1))
    rows = []
    for off in itertools.product(*(range(k) for k in ks)):
        win = xp[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(off, g.shape[1:-1]))]
        rows.append(jnp.tensordot(g, win, axes=(lead, lead)))
    return jnp.swapaxes(jnp.stack(rows, 0), -1, -2).reshape(ks + (xp.shape[-1], g.shape[-1]))


conv_loopsafe.defvjp(_conv_fwd, _conv_bwd)


@jax.custom_vjp
def add_bias(y: jax.Array, b: jax.Array) -> jax.Array:
    """``y + b`` for channel-last ``y`` ``(..., c)`` and ``b`` ``(c,)``; the bias gradient is a
    matrix-vector product (XLA:CPU's reduction over the leading axes is several times slower)."""
    return y + b


def _add_bias_fwd(y, b):
    return y + b, None


def _add_bias_bwd(_, g):
    g2 = g.reshape(-1, g.shape[-1])
    return g, jnp.dot(jnp.ones((g2.shape[0],), g.dtype), g2)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def _conv3d_by_slices(x: jax.Array, w: jax.Array, padding: str) -> jax.Array:
    """A 3-D convolution as ``k_z`` 2-D loop-safe convolutions over z-shifted slices: XLA:CPU
    runs 2-D convolutions faster than 3-D ones. (The z-taps ``(k_z, 1, 1, c_in, c_out)`` of a
    factorised layer as one matrix product of the stacked z-shifted inputs were no faster per
    Adam step: ``benchmarks/results/step_cost_s21/``.)"""
    n = x.shape[0]
    r = w.shape[0] // 2
    if padding == "SAME":
        x = jnp.pad(x, [(0, 0), (r, r)] + [(0, 0)] * 3)
    d = x.shape[1] - 2 * r
    out = None
    for t in range(w.shape[0]):
        y = conv_loopsafe(x[:, t:t + d].reshape((n * d,) + x.shape[2:]), w[t], padding)
        out = y if out is None else out + y
    return out.reshape((n, d) + out.shape[1:])


def conv(x: jax.Array, w: jax.Array, *, impl: str = "lax", padding: str = "SAME") -> jax.Array:
    """Stride-1 convolution, ``padding`` ``"SAME"`` or ``"VALID"``; ``impl`` ``"lax"`` (XLA's)
    or ``"loopsafe"`` (:func:`conv_loopsafe`; volumes as sums of 2-D slice convolutions, faster
    on CPU)."""
    if padding not in ("SAME", "VALID"):
        raise ValueError(f"unknown padding {padding!r}; expected 'SAME' or 'VALID'")
    if impl == "loopsafe":
        return _conv3d_by_slices(x, w, padding) if x.ndim == 5 else conv_loopsafe(x, w, padding)
    if impl == "lax":
        return _conv_plain(x, w, padding)
    raise ValueError(f"unknown conv impl {impl!r}; expected one of {CONV_IMPLS}")


def conv_bias(x: jax.Array, w: jax.Array, b: jax.Array, *, impl: str = "lax",
              padding: str = "SAME") -> jax.Array:
    """:func:`conv` plus a per-channel bias ``b`` ``(c_out,)``; with ``impl="loopsafe"`` the
    bias gradient is a matrix-vector product too (:func:`add_bias`)."""
    y = conv(x, w, impl=impl, padding=padding)
    return add_bias(y, b) if impl == "loopsafe" else y + b


def mean_filter(x: jax.Array, size: int, ndim: int = 2) -> jax.Array:
    """Mean over a ``size^ndim`` window on the last ``ndim`` axes (``K_sigma``, Example 1).

    Near the border the mean is taken over the window's pixels inside the image (no padding
    values enter the average). ``size <= 1`` returns ``x``.
    """
    if size <= 1:
        return x
    if size % 2 == 0:
        raise ValueError(f"mean filter size must be odd, got {size}")
    r, lead = size // 2, x.ndim - ndim
    s = box_sum(x, size, ndim)
    # Window counts: a product of 1-D counts (no reduce_window over a constant, which XLA
    # would constant-fold at compile time for large images).
    count = None
    for a, n in enumerate(x.shape[lead:]):
        i = jnp.arange(n)
        c = (jnp.minimum(i + r, n - 1) - jnp.maximum(i - r, 0) + 1).astype(x.dtype)
        c = c.reshape([n if b == a else 1 for b in range(ndim)])
        count = c if count is None else count * c
    return s / count


def box_sum(x: jax.Array, size: int, ndim: int = 2) -> jax.Array:
    """Sum over a ``size^ndim`` window centred on each pixel of the last ``ndim`` axes, with
    zeros outside the array; separable (one 1-D window sum per axis, ``ndim * size`` adds per
    pixel). Shape and dtype of ``x``; ``size`` odd >= 1."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"box size must be an odd integer >= 1, got {size}")
    r, lead = size // 2, x.ndim - ndim
    for a in range(lead, x.ndim):
        window = tuple(size if b == a else 1 for b in range(x.ndim))
        pads = tuple((r, r) if b == a else (0, 0) for b in range(x.ndim))
        x = lax.reduce_window(x, jnp.zeros((), x.dtype), lax.add, window, (1,) * x.ndim, pads)
    return x
