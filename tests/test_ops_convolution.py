"""self2seg_jax.ops.convolution: the experts' SAME convolution (XLA's and the loop-safe backward pass),
the mean filter K_sigma of the filtered data terms and the smooth expert's box sums, in 2-D and 3-D."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from self2seg_jax import config, ops

mean_filter = jax.jit(ops.mean_filter, static_argnames=("size", "ndim"))


# --------------------------------------------------------------------------------------
# mean filter
# --------------------------------------------------------------------------------------


def _mean_filter_ref(x, size, ndim):
    """Brute force: mean over the window's voxels inside the image (float64)."""
    r = size // 2
    spatial = x.shape[-ndim:]
    out = np.zeros_like(x, dtype=np.float64)
    axes = tuple(range(-ndim, 0))
    for idx in np.ndindex(*spatial):
        win = (Ellipsis,) + tuple(slice(max(0, i - r), i + r + 1) for i in idx)
        out[(Ellipsis,) + idx] = x[win].mean(axis=axes)
    return out


@pytest.mark.parametrize("size", [3, 5, 7, 13])
@pytest.mark.parametrize("shape", [(9, 9), (6, 11), (2, 7, 5)])
def test_mean_filter_matches_bruteforce(size, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    got = np.asarray(mean_filter(jnp.asarray(x), size))
    np.testing.assert_allclose(got, _mean_filter_ref(x.astype(np.float64), size, 2), atol=2e-6)
    assert got.shape == shape and got.dtype == np.float32


@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("shape", [(5, 6, 7), (2, 4, 6, 5)])
def test_mean_filter_3d_matches_bruteforce(size, shape, rng, x64):
    x = rng.normal(size=shape)
    got = np.asarray(mean_filter(jnp.asarray(x), size, ndim=3))
    assert got.shape == shape and got.dtype == np.float64
    np.testing.assert_allclose(got, _mean_filter_ref(x, size, 3), atol=1e-12)
    # different from the 2-D filter of each slice (the z axis is averaged too)
    assert not np.allclose(got, np.asarray(mean_filter(jnp.asarray(x), size, ndim=2)))


@pytest.mark.parametrize("shape,ndim", [((7, 10), 2), ((4, 5, 6), 3)])
def test_mean_filter_preserves_constants_at_border(shape, ndim):
    x = jnp.full(shape, 0.625, jnp.float32)
    np.testing.assert_allclose(np.asarray(mean_filter(x, 5, ndim=ndim)), 0.625, rtol=1e-6)


def test_mean_filter_size_one_is_identity(rng):
    x = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(ops.mean_filter(x, 1)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(ops.mean_filter(x, 0)), np.asarray(x))


@pytest.mark.parametrize("size", [2, 4])
def test_mean_filter_even_size_raises(size):
    with pytest.raises(ValueError, match="odd"):
        ops.mean_filter(jnp.zeros((6, 6), jnp.float32), size)


# --------------------------------------------------------------------------------------
# box sums (the smooth expert)
# --------------------------------------------------------------------------------------


def _box_sum_ref(x, size, ndim):
    """Brute force: the sum over the window's pixels inside the array (float64)."""
    r = size // 2
    out = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(*x.shape[-ndim:]):
        win = (Ellipsis,) + tuple(slice(max(0, i - r), i + r + 1) for i in idx)
        out[(Ellipsis,) + idx] = x[win].sum(axis=tuple(range(-ndim, 0)))
    return out


@pytest.mark.parametrize("size,shape,ndim", [(1, (5, 6), 2), (5, (9, 7), 2), (15, (6, 11), 2),
                                             (3, (2, 7, 5), 2), (5, (4, 6, 5), 3),
                                             (3, (2, 4, 5, 6), 3)])
def test_box_sum_matches_bruteforce(size, shape, ndim, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    got = np.asarray(jax.jit(ops.box_sum, static_argnums=(1, 2))(jnp.asarray(x), size, ndim))
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_allclose(got, _box_sum_ref(x.astype(np.float64), size, ndim), atol=1e-5)


@pytest.mark.parametrize("size", [0, 2, 6])
def test_box_sum_bad_size_raises(size):
    with pytest.raises(ValueError, match="odd integer >= 1"):
        ops.box_sum(jnp.zeros((6, 6), jnp.float32), size)


# --------------------------------------------------------------------------------------
# loop-safe convolution
# --------------------------------------------------------------------------------------


def _lax_conv(x, w):
    nsp = x.ndim - 2
    dn = ("NHWC", "HWIO", "NHWC") if nsp == 2 else ("NDHWC", "DHWIO", "NDHWC")
    return lax.conv_general_dilated(x, w, (1,) * nsp, "SAME", dimension_numbers=dn)


def _close(a, b, rtol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


def _conv_ref(x, w):
    """SAME correlation by brute force (numpy, float64):
    ``out[n, s, o] = sum_{k, i} x[n, s + k - r, i] w[k, i, o]``."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    nsp = x.ndim - 2
    ks = w.shape[:nsp]
    xp = np.pad(x, [(0, 0)] + [(k // 2, k // 2) for k in ks] + [(0, 0)])
    out = np.zeros(x.shape[:-1] + (w.shape[-1],))
    for off in itertools.product(*(range(k) for k in ks)):
        sl = tuple(slice(o, o + n) for o, n in zip(off, x.shape[1:-1], strict=True))
        win = xp[(slice(None),) + sl]
        out += win @ w[off]
    return out


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("cin,cout", [(1, 4), (3, 2), (8, 8)])
def test_conv_loopsafe_forward_and_grads(k, cin, cout, rng):
    x = jnp.asarray(rng.standard_normal((2, 9, 7, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / k, jnp.float32)
    ct = jnp.asarray(rng.standard_normal((2, 9, 7, cout)), jnp.float32)

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w)) * ct)

    @jax.jit
    def both(x, w):
        fwd = (ops.conv_loopsafe(x, w), _lax_conv(x, w), ops.conv(x, w, impl="loopsafe"),
               ops.conv(x, w), ops.conv(x, w, impl="lax"))
        gs = jax.grad(loss(ops.conv_loopsafe), argnums=(0, 1))(x, w)
        gl = jax.grad(loss(_lax_conv), argnums=(0, 1))(x, w)
        return fwd, gs, gl

    (y_s, y_l, y_s2, y_d, y_l2), (gx_s, gw_s), (gx_l, gw_l) = both(x, w)
    _close(y_l, _conv_ref(x, w))
    for y in (y_s, y_s2, y_d, y_l2):
        _close(y, y_l)
    assert gx_s.shape == x.shape and gw_s.shape == w.shape
    assert gx_s.dtype == x.dtype and gw_s.dtype == w.dtype
    _close(gx_s, gx_l)
    _close(gw_s, gw_l)


def test_conv_loopsafe_3d_forward_and_grads(rng):
    x = jnp.asarray(rng.normal(size=(1, 5, 6, 7, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 2, 4)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(1, 5, 6, 7, 4)), jnp.float32)

    def loss(conv):
        return lambda a, b: jnp.sum((conv(a, b) - t) ** 2)

    @jax.jit
    def both(x, w):
        fwd = (ops.conv_loopsafe(x, w), ops.conv(x, w, impl="lax"))
        g1 = jax.grad(loss(ops.conv_loopsafe), argnums=(0, 1))(x, w)
        g2 = jax.grad(loss(_lax_conv), argnums=(0, 1))(x, w)
        return fwd, g1, g2

    (y_s, y_l), g1, g2 = both(x, w)
    _close(y_l, _conv_ref(x, w))
    _close(y_s, y_l, rtol=1e-5)
    for a, b in zip(g1, g2, strict=True):
        assert a.shape == b.shape
        _close(a, b, rtol=2e-4)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("kz", [1, 3, 5])
def test_conv_3d_z_taps_equal_xla(kz, padding, rng):
    """``(k_z, 1, 1, c_in, c_out)`` kernels (a factorised layer's z-taps) in the loop-safe 3-D
    convolution: values and gradients equal XLA's convolution, SAME and VALID."""
    x = jnp.asarray(rng.normal(size=(2, 7, 4, 5, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kz, 1, 1, 3, 4)), jnp.float32)
    out = ops.conv(x, w, impl="lax", padding=padding)
    t = jnp.asarray(rng.normal(size=out.shape), jnp.float32)

    def loss(impl):
        return lambda a, b: jnp.sum((ops.conv(a, b, impl=impl, padding=padding) - t) ** 2)

    y = jax.jit(lambda a, b: ops.conv(a, b, impl="loopsafe", padding=padding))(x, w)
    assert y.shape == out.shape == ((2, 7, 4, 5, 4) if padding == "SAME"
                                    else (2, 8 - kz, 4, 5, 4))
    _close(y, out, rtol=1e-5)
    g1 = jax.jit(jax.grad(loss("loopsafe"), argnums=(0, 1)))(x, w)
    g2 = jax.jit(jax.grad(loss("lax"), argnums=(0, 1)))(x, w)
    for a, b in zip(g1, g2, strict=True):
        assert a.shape == b.shape
        _close(a, b, rtol=2e-4)


@pytest.mark.parametrize("impl", ["loopsafe", "lax"])
@pytest.mark.parametrize("shape", [(2, 9, 7), (1, 5, 6, 7)])
def test_conv_bias_value_and_grads_match_autodiff(impl, shape, rng):
    """``conv_bias`` = convolution + per-channel bias; its gradients in x, w and b equal
    autodiff of XLA's convolution plus a broadcast add (the loop-safe bias gradient is a
    matrix-vector product, not a reduction)."""
    nsp = len(shape) - 1
    x = jnp.asarray(rng.normal(size=shape + (3,)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3,) * nsp + (3, 4)) / 3, jnp.float32)
    b = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
    ct = jnp.asarray(rng.normal(size=shape + (4,)), jnp.float32)

    def loss(fn):
        return lambda x, w, b: jnp.sum(jnp.sin(fn(x, w, b)) * ct)

    @jax.jit
    def both(x, w, b):
        mine = lambda x, w, b: ops.conv_bias(x, w, b, impl=impl)  # noqa: E731
        ref = lambda x, w, b: _lax_conv(x, w) + b  # noqa: E731
        return ((mine(x, w, b), ref(x, w, b)), jax.grad(loss(mine), argnums=(0, 1, 2))(x, w, b),
                jax.grad(loss(ref), argnums=(0, 1, 2))(x, w, b))

    (y, y_ref), g, g_ref = both(x, w, b)
    _close(y_ref, _conv_ref(x, w) + np.asarray(b))
    _close(y, y_ref, rtol=1e-5)
    for a, r in zip(g, g_ref, strict=True):
        assert a.shape == r.shape and a.dtype == r.dtype
        _close(a, r, rtol=2e-4)
    # the bias gradient is the sum of the output cotangent over batch and space
    dy = np.cos(np.asarray(y_ref, np.float64)) * np.asarray(ct)
    np.testing.assert_allclose(np.asarray(g[2]), dy.reshape(-1, 4).sum(0), rtol=1e-4, atol=1e-3)


def test_conv_unknown_impl_raises():
    with pytest.raises(ValueError, match="impl"):
        ops.conv(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="fft")


@pytest.mark.parametrize("k", [3, 5])
def test_conv_loopsafe_inside_fori_loop(k, rng):
    """A few gradient-descent steps on a 2-layer conv net inside lax.fori_loop: the loop-safe
    backward pass must follow the same trajectory as autodiff of lax.conv."""
    x = jnp.asarray(rng.standard_normal((1, 10, 10, 1)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((1, 10, 10, 1)), jnp.float32)
    w1 = jnp.asarray(rng.standard_normal((k, k, 1, 4)) * 0.3, jnp.float32)
    w2 = jnp.asarray(rng.standard_normal((k, k, 4, 1)) * 0.3, jnp.float32)

    def run(conv):
        def loss(ws):
            h = jax.nn.relu(conv(x, ws[0]))
            return jnp.mean((conv(h, ws[1]) - y) ** 2)

        def body(_, ws):
            g = jax.grad(loss)(ws)
            return jax.tree.map(lambda a, b: a - 0.05 * b, ws, g)

        ws = jax.jit(lambda ws: lax.fori_loop(0, 5, body, ws))((w1, w2))
        return ws, jax.jit(loss)(ws), jax.jit(loss)((w1, w2))

    (a1, a2), la, l0 = run(ops.conv_loopsafe)
    (b1, b2), lb, _ = run(_lax_conv)
    _close(a1, b1)
    _close(a2, b2)
    assert float(la) == pytest.approx(float(lb), rel=1e-4)
    # the loop actually did something, and decreased the loss
    assert not np.allclose(np.asarray(a1), np.asarray(w1))
    assert float(la) < float(l0)


def test_backend_policy_matches_backend():
    """OLD ops.default_conv_impl(): now config.backend_policy()["conv_impl"]."""
    cpu = jax.default_backend() == "cpu"
    pol = config.backend_policy()
    assert pol["conv_impl"] == ("loopsafe" if cpu else "lax")
    assert pol["batch"] == ("map" if cpu else "vmap")
    assert pol["conv_impl"] in ("lax", "loopsafe")  # both are valid ops.conv impls


@pytest.mark.parametrize("shape,k", [((2, 9, 7, 3), (3, 3)), ((1, 5, 6, 7, 2), (3, 3, 3)),
                                     ((1, 8, 9, 1), (5, 3))])
@pytest.mark.parametrize("impl", ["lax", "loopsafe"])
def test_conv_valid_is_the_interior_of_same_and_its_grads_match_autodiff(shape, k, impl, rng):
    """VALID = the SAME output without the ``k // 2`` border (where the kernel would read zero
    padding); the loop-safe VALID backward pass equals autodiff of ``lax.conv`` VALID."""
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(k + (shape[-1], 4)) / np.prod(k), jnp.float32)
    out_shape = (shape[0],) + tuple(n - kk + 1 for n, kk in zip(shape[1:-1], k)) + (4,)
    ct = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
    inner = (slice(None),) + tuple(slice(kk // 2, n - kk // 2) for n, kk in zip(shape[1:-1], k))

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w)) * ct)

    ours = lambda x, w: ops.conv(x, w, impl=impl, padding="VALID")  # noqa: E731
    ref = lambda x, w: lax.conv_general_dilated(  # noqa: E731
        x, w, (1,) * (x.ndim - 2), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC") if x.ndim == 4 else
        ("NDHWC", "DHWIO", "NDHWC"))
    y = jax.jit(ours)(x, w)
    assert y.shape == out_shape
    _close(y, ops.conv(x, w, impl=impl)[inner], rtol=1e-5)
    g1 = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
    g2 = jax.jit(jax.grad(loss(ref), argnums=(0, 1)))(x, w)
    for a, b in zip(g1, g2, strict=True):
        assert a.shape == b.shape
        _close(a, b, rtol=2e-4)


def test_conv_unknown_padding_raises():
    with pytest.raises(ValueError, match="padding"):
        ops.conv(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), padding="FULL")
