"""Discrete operators: finite differences, TV, projections, mean filter, checkerboard pairs,
and the loop-safe convolution."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from self2seg_jax import ops

SHAPES = [(8, 8), (7, 12), (13, 5), (3, 6, 9), (2, 3, 5, 4)]

# Eager JAX compiles every primitive separately for each new shape (~1 s per op chain on CPU);
# jitted wrappers keep the test-suite fast.
grad = jax.jit(ops.grad)
div = jax.jit(ops.div)
tv = jax.jit(ops.tv, static_argnames="isotropic")
project_dual_ball = jax.jit(ops.project_dual_ball, static_argnames="isotropic")
project_box = jax.jit(ops.project_box)
mean_filter = jax.jit(ops.mean_filter, static_argnames="size")
checkerboard_pairs = jax.jit(ops.checkerboard_pairs)


@jax.jit
def _adjoint_terms(u, p):
    gp = ops.grad(u) * p
    ud = u * ops.div(p)
    return jnp.sum(gp), -jnp.sum(ud), jnp.sum(jnp.abs(gp)) + jnp.sum(jnp.abs(ud))


def _adjoint_rel_error(u, p):
    lhs, rhs, scale = (float(v) for v in _adjoint_terms(u, p))
    return abs(lhs - rhs) / scale


# --------------------------------------------------------------------------------------
# grad / div
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_grad_div_adjoint_float32(shape, rng):
    u = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    p = jnp.asarray(rng.standard_normal(shape[:-2] + (2,) + shape[-2:]), jnp.float32)
    assert grad(u).shape == shape[:-2] + (2,) + shape[-2:]
    assert div(p).shape == shape
    assert grad(u).dtype == jnp.float32 and div(p).dtype == jnp.float32
    assert _adjoint_rel_error(u, p) < 1e-5


@pytest.mark.parametrize("shape", SHAPES)
def test_grad_div_adjoint_float64(shape, rng, x64):
    u = jnp.asarray(rng.standard_normal(shape), jnp.float64)
    p = jnp.asarray(rng.standard_normal(shape[:-2] + (2,) + shape[-2:]), jnp.float64)
    assert div(p).dtype == jnp.float64
    assert _adjoint_rel_error(u, p) < 1e-12


def test_div_is_exact_negative_transpose_of_grad(x64):
    """Build both operators as matrices on a 4x5 grid and compare D^T with -div."""
    h, w = 4, 5
    n = h * w
    eye = jnp.eye(n, dtype=jnp.float64).reshape(n, h, w)
    G = np.asarray(jax.jit(jax.vmap(ops.grad))(eye)).reshape(n, 2 * n).T  # (2n, n)
    eye2 = jnp.eye(2 * n, dtype=jnp.float64).reshape(2 * n, 2, h, w)
    Dv = np.asarray(jax.jit(jax.vmap(ops.div))(eye2)).reshape(2 * n, n).T  # (n, 2n)
    np.testing.assert_array_equal(G.T, -Dv)


def test_grad_values_forward_differences_neumann(rng):
    u = rng.standard_normal((5, 6)).astype(np.float32)
    g = np.asarray(grad(jnp.asarray(u)))
    gy = np.zeros_like(u)
    gx = np.zeros_like(u)
    gy[:-1] = u[1:] - u[:-1]
    gx[:, :-1] = u[:, 1:] - u[:, :-1]
    np.testing.assert_allclose(g[0], gy, atol=1e-6)
    np.testing.assert_allclose(g[1], gx, atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 6), (2, 5, 9)])
def test_grad_of_constant_is_zero(shape):
    u = jnp.full(shape, 3.7, jnp.float32)
    np.testing.assert_array_equal(np.asarray(grad(u)), 0.0)
    np.testing.assert_array_equal(np.asarray(tv(u)), 0.0)
    np.testing.assert_array_equal(np.asarray(tv(u, isotropic=False)), 0.0)


def test_grad_norm_bound(rng):
    """Power iteration: ||grad||^2 <= GRAD_NORM_SQ_BOUND = 8 (fixes the PD step sizes)."""
    u = jnp.asarray(rng.standard_normal((16, 16)), jnp.float32)

    def power_step(_, u):
        u = -ops.div(ops.grad(u))
        return u / jnp.linalg.norm(u)

    u = jax.jit(lambda u: lax.fori_loop(0, 300, power_step, u))(u)
    lam_max = float(jnp.sum(grad(u) ** 2) / jnp.sum(u**2))
    assert 7.0 < lam_max <= ops.GRAD_NORM_SQ_BOUND + 1e-4


# --------------------------------------------------------------------------------------
# TV
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("isotropic", [True, False])
@pytest.mark.parametrize("h,w,jump", [(6, 8, 1.0), (9, 5, 2.5), (4, 11, -0.75)])
def test_tv_vertical_step_edge(h, w, jump, isotropic):
    u = np.zeros((h, w), np.float32)
    u[:, w // 2 :] = jump
    t = float(tv(jnp.asarray(u), isotropic=isotropic))
    assert t == pytest.approx(h * abs(jump), rel=1e-6)
    # and the transposed (horizontal) edge
    tv_t = float(tv(jnp.asarray(u.T), isotropic=isotropic))
    assert tv_t == pytest.approx(h * abs(jump), rel=1e-6)


def test_tv_diagonal_edge_iso_less_than_aniso():
    """u = 1{i + j >= n}: the staircase corners have |gy| = |gx| = 1 at the same pixel
    (sqrt(2) isotropic vs 2 anisotropic), except the two ends where Neumann zeroes one."""
    n = 10
    i, j = np.mgrid[:n, :n]
    u = jnp.asarray((i + j >= n).astype(np.float32))
    iso = float(tv(u))
    aniso = float(tv(u, isotropic=False))
    assert iso == pytest.approx((n - 2) * math.sqrt(2) + 2, rel=1e-6)
    assert aniso == pytest.approx(2 * (n - 2) + 2, rel=1e-6)
    assert iso < aniso


def test_tv_batch_axes(rng):
    u = jnp.asarray(rng.standard_normal((3, 2, 7, 6)), jnp.float32)
    t = tv(u)
    assert t.shape == (3, 2)
    for a in range(3):
        for b in range(2):
            assert float(t[a, b]) == pytest.approx(float(tv(u[a, b])), rel=1e-6)


def test_tv_isotropic_gradient_finite_at_flat_pixels():
    u = jnp.zeros((6, 6), jnp.float32).at[2:4, 2:4].set(1.0)
    g = jax.grad(lambda v: tv(v))(u)
    assert np.all(np.isfinite(np.asarray(g)))


# --------------------------------------------------------------------------------------
# projections
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.05, 1.0, 3.0])
def test_project_dual_ball_isotropic(lam, rng):
    p = jnp.asarray(3 * rng.standard_normal((2, 2, 7, 9)), jnp.float32)
    q = project_dual_ball(p, lam)
    norm = np.sqrt(np.sum(np.asarray(q) ** 2, axis=-3))
    assert np.all(norm <= lam * (1 + 1e-6))
    # idempotent
    np.testing.assert_allclose(np.asarray(project_dual_ball(q, lam)), np.asarray(q), rtol=1e-6)
    # points outside land on the sphere, with the same direction
    pn = np.sqrt(np.sum(np.asarray(p) ** 2, axis=-3))
    out = pn > lam
    assert out.any()
    np.testing.assert_allclose(norm[out], lam, rtol=1e-5)
    rescale = np.where(out, pn / lam, 1.0)[:, None]  # (2, 1, 7, 9) broadcasts over axis -3
    np.testing.assert_allclose(np.asarray(q) * rescale, np.asarray(p), rtol=1e-5, atol=1e-6)
    # interior points unchanged
    inside = 0.5 * lam * p / (jnp.sqrt(jnp.sum(p * p, axis=-3, keepdims=True)) + 1e-3)
    np.testing.assert_array_equal(np.asarray(project_dual_ball(inside, lam)), np.asarray(inside))


@pytest.mark.parametrize("lam", [0.05, 1.0])
def test_project_dual_ball_anisotropic(lam, rng):
    p = jnp.asarray(3 * rng.standard_normal((2, 6, 5)), jnp.float32)
    q = np.asarray(project_dual_ball(p, lam, isotropic=False))
    assert np.all(np.abs(q) <= lam)
    np.testing.assert_array_equal(np.asarray(project_dual_ball(jnp.asarray(q), lam, isotropic=False)), q)
    np.testing.assert_array_equal(q, np.clip(np.asarray(p), -lam, lam))
    inside = jnp.asarray(0.99 * lam * np.tanh(rng.standard_normal((2, 6, 5))), jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(project_dual_ball(inside, lam, isotropic=False)), np.asarray(inside)
    )


def test_project_dual_ball_traced_lam(rng):
    p = jnp.asarray(rng.standard_normal((2, 5, 5)), jnp.float32)
    f = jax.jit(lambda p, lam: ops.project_dual_ball(p, lam))
    pn = np.sqrt(np.sum(np.asarray(p) ** 2, axis=0, keepdims=True))
    for lam in (0.3, 0.9):
        ref = np.asarray(p) * lam / np.maximum(lam, pn)
        np.testing.assert_allclose(np.asarray(f(p, jnp.float32(lam))), ref, rtol=1e-6)


def test_project_box(rng):
    u = jnp.asarray(2 * rng.standard_normal((3, 8, 8)), jnp.float32)
    v = np.asarray(project_box(u))
    assert v.min() >= 0.0 and v.max() <= 1.0
    np.testing.assert_array_equal(v, np.clip(np.asarray(u), 0, 1))
    np.testing.assert_array_equal(np.asarray(project_box(jnp.asarray(v))), v)
    inside = (np.asarray(u) > 0) & (np.asarray(u) < 1)
    np.testing.assert_array_equal(v[inside], np.asarray(u)[inside])


# --------------------------------------------------------------------------------------
# mean filter
# --------------------------------------------------------------------------------------


def _mean_filter_ref(x, size):
    r = size // 2
    h, w = x.shape[-2:]
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            win = x[..., max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
            out[..., i, j] = win.mean(axis=(-2, -1))
    return out


@pytest.mark.parametrize("size", [3, 5, 7, 13])
@pytest.mark.parametrize("shape", [(9, 9), (6, 11), (2, 7, 5)])
def test_mean_filter_matches_bruteforce(size, shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    got = np.asarray(mean_filter(jnp.asarray(x), size))
    np.testing.assert_allclose(got, _mean_filter_ref(x.astype(np.float64), size), atol=2e-6)
    assert got.shape == shape


def test_mean_filter_preserves_constants_at_border():
    x = jnp.full((7, 10), 0.625, jnp.float32)
    np.testing.assert_allclose(np.asarray(mean_filter(x, 5)), 0.625, rtol=1e-6)


def test_mean_filter_size_one_is_identity(rng):
    x = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(mean_filter(x, 1)), np.asarray(x))


@pytest.mark.parametrize("size", [2, 4])
def test_mean_filter_even_size_raises(size):
    with pytest.raises(ValueError, match="odd"):
        mean_filter(jnp.zeros((6, 6), jnp.float32), size)


# --------------------------------------------------------------------------------------
# checkerboard pairs (Noise2Fast down-sampling)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (6, 10), (7, 9), (3, 6, 5)])
def test_checkerboard_pairs_partition_and_indexing(shape):
    n = int(np.prod(shape))
    x = np.arange(n, dtype=np.float32).reshape(shape)
    h, w = shape[-2] // 2 * 2, shape[-1] // 2 * 2
    pairs = checkerboard_pairs(jnp.asarray(x))
    assert len(pairs) == 4
    (xe, xo), (xo2, xe2), (ye, yo), (yo2, ye2) = [tuple(np.asarray(a) for a in p) for p in pairs]
    np.testing.assert_array_equal(xe, xe2)
    np.testing.assert_array_equal(xo, xo2)
    np.testing.assert_array_equal(ye, ye2)
    np.testing.assert_array_equal(yo, yo2)
    lead = shape[:-2]
    assert xe.shape == xo.shape == lead + (h, w // 2)
    assert ye.shape == yo.shape == lead + (h // 2, w)

    cropped = x[..., :h, :w]
    for a, b in ((xe, xo), (ye, yo)):
        for idx in np.ndindex(*lead) if lead else [()]:
            got = np.sort(np.concatenate([a[idx].ravel(), b[idx].ravel()]))
            np.testing.assert_array_equal(got, np.sort(cropped[idx].ravel()))

    for i in range(h):
        for j in range(w // 2):
            np.testing.assert_array_equal(xe[..., i, j], x[..., i, 2 * j + (i % 2)])
            np.testing.assert_array_equal(xo[..., i, j], x[..., i, 2 * j + 1 - (i % 2)])
    for i in range(h // 2):
        for j in range(w):
            np.testing.assert_array_equal(ye[..., i, j], x[..., 2 * i + (j % 2), j])
            np.testing.assert_array_equal(yo[..., i, j], x[..., 2 * i + 1 - (j % 2), j])


def test_checkerboard_even_and_odd_are_the_two_colours():
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    (xe, xo), _, (ye, yo), _ = checkerboard_pairs(jnp.asarray(x))
    colour = (np.add.outer(np.arange(8), np.arange(8)) % 2 == 0)
    np.testing.assert_array_equal(np.sort(np.asarray(xe).ravel()), np.sort(x[colour]))
    np.testing.assert_array_equal(np.sort(np.asarray(xo).ravel()), np.sort(x[~colour]))
    np.testing.assert_array_equal(np.sort(np.asarray(ye).ravel()), np.sort(x[colour]))
    np.testing.assert_array_equal(np.sort(np.asarray(yo).ravel()), np.sort(x[~colour]))


# --------------------------------------------------------------------------------------
# loop-safe convolution
# --------------------------------------------------------------------------------------


def _lax_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _close(a, b, rtol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("cin,cout", [(1, 4), (3, 2), (8, 8)])
def test_conv2d_loopsafe_forward_and_grads(k, cin, cout, rng):
    x = jnp.asarray(rng.standard_normal((2, 9, 7, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / k, jnp.float32)
    ct = jnp.asarray(rng.standard_normal((2, 9, 7, cout)), jnp.float32)

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.sin(fn(x, w)) * ct)

    @jax.jit
    def both(x, w):
        fwd = (ops.conv2d_loopsafe(x, w), _lax_conv(x, w), ops.conv2d(x, w, impl="loopsafe"))
        gs = jax.grad(loss(ops.conv2d_loopsafe), argnums=(0, 1))(x, w)
        gl = jax.grad(loss(_lax_conv), argnums=(0, 1))(x, w)
        return fwd, gs, gl

    (y_s, y_l, y_s2), (gx_s, gw_s), (gx_l, gw_l) = both(x, w)
    _close(y_s, y_l)
    _close(y_s2, y_l)
    assert gx_s.shape == x.shape and gw_s.shape == w.shape
    _close(gx_s, gx_l)
    _close(gw_s, gw_l)


def test_conv2d_unknown_impl_raises():
    with pytest.raises(ValueError, match="impl"):
        ops.conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), impl="fft")


@pytest.mark.parametrize("k", [3, 5])
def test_conv2d_loopsafe_inside_fori_loop(k, rng):
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
        return ws, loss(ws)

    (a1, a2), la = run(ops.conv2d_loopsafe)
    (b1, b2), lb = run(_lax_conv)
    _close(a1, b1)
    _close(a2, b2)
    assert float(la) == pytest.approx(float(lb), rel=1e-4)
    # the loop actually did something
    assert not np.allclose(np.asarray(a1), np.asarray(w1))


def test_default_conv_impl_matches_backend():
    expected = "loopsafe" if jax.default_backend() == "cpu" else "lax"
    assert ops.default_conv_impl() == expected
