"""self2seg_jax.ops.differences: gradient, divergence (component form), norm bound, (Huber) TV."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from self2seg_jax import ops

# Eager JAX compiles every primitive separately for each new shape (~1 s per op chain on CPU);
# jitted wrappers keep the test-suite fast.
grad = jax.jit(ops.grad, static_argnames=("ndim", "spacing"))
div = jax.jit(ops.div, static_argnames=("spacing",))
tv = jax.jit(ops.tv, static_argnames=("ndim", "spacing", "isotropic"))

# (shape, ndim, spacing): leading axes beyond ndim are batch axes.
CASES = [
    ((8, 8), 2, None),
    ((7, 12), 2, None),
    ((13, 5), 2, None),
    ((3, 6, 9), 2, None),
    ((2, 3, 5, 4), 2, None),
    ((5, 7, 6), 3, None),
    ((4, 9, 8), 3, (2.5, 1.0, 1.0)),
    ((2, 6, 5, 4), 3, (1.0, 0.5, 2.0)),
    ((6, 7), 2, (0.5, 3.0)),
]


@jax.jit
def _adjoint_terms(gs, ps, u, d):
    lhs = sum(jnp.sum(g * p) for g, p in zip(gs, ps, strict=True))
    rhs = -jnp.sum(u * d)
    scale = sum(jnp.sum(jnp.abs(g * p)) for g, p in zip(gs, ps, strict=True))
    scale = scale + jnp.sum(jnp.abs(u * d))
    return lhs, rhs, scale


def _adjoint_rel_error(u, ps, ndim, spacing):
    gs = grad(u, ndim=ndim, spacing=spacing)
    d = div(ps, spacing=spacing)
    lhs, rhs, scale = (float(v) for v in _adjoint_terms(gs, ps, u, d))
    return abs(lhs - rhs) / scale


def _field(rng, shape, ndim, dtype):
    return tuple(jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(ndim))


# --------------------------------------------------------------------------------------
# grad / div
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,ndim,spacing", CASES)
def test_grad_div_adjoint_float32(shape, ndim, spacing, rng):
    u = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    ps = _field(rng, shape, ndim, jnp.float32)
    gs = grad(u, ndim=ndim, spacing=spacing)
    assert isinstance(gs, tuple) and len(gs) == ndim
    assert all(g.shape == shape and g.dtype == jnp.float32 for g in gs)
    d = div(ps, spacing=spacing)
    assert d.shape == shape and d.dtype == jnp.float32
    assert _adjoint_rel_error(u, ps, ndim, spacing) < 1e-5


@pytest.mark.parametrize("shape,ndim,spacing", CASES)
def test_grad_div_adjoint_float64(shape, ndim, spacing, rng, x64):
    u = jnp.asarray(rng.standard_normal(shape), jnp.float64)
    ps = _field(rng, shape, ndim, jnp.float64)
    assert div(ps, spacing=spacing).dtype == jnp.float64
    assert all(g.dtype == jnp.float64 for g in grad(u, ndim=ndim, spacing=spacing))
    assert _adjoint_rel_error(u, ps, ndim, spacing) < 1e-12


@pytest.mark.parametrize("spatial,spacing", [((4, 5), None), ((3, 4, 2), (2.0, 1.0, 0.5))])
def test_div_is_exact_negative_transpose_of_grad(spatial, spacing, x64):
    """Build both operators as matrices on a small grid and compare G^T with -Div."""
    nd = len(spatial)
    n = int(np.prod(spatial))
    eye = jnp.eye(n, dtype=jnp.float64).reshape((n,) + spatial)
    # grad over the last nd axes with a leading batch axis = the n basis vectors
    G = np.stack([np.asarray(c).reshape(n, n) for c in grad(eye, ndim=nd, spacing=spacing)])
    G = np.transpose(G, (0, 2, 1)).reshape(nd * n, n)  # rows: (component, pixel), cols: input
    eye_f = jnp.eye(nd * n, dtype=jnp.float64).reshape((nd * n, nd) + spatial)
    comps = tuple(eye_f[:, a] for a in range(nd))
    Dv = np.asarray(div(comps, spacing=spacing)).reshape(nd * n, n).T  # (n, nd*n)
    np.testing.assert_array_equal(G.T, -Dv)


def test_grad_values_forward_differences_neumann(rng):
    u = rng.standard_normal((5, 6)).astype(np.float32)
    gy_, gx_ = (np.asarray(c) for c in grad(jnp.asarray(u)))
    gy = np.zeros_like(u)
    gx = np.zeros_like(u)
    gy[:-1] = u[1:] - u[:-1]
    gx[:, :-1] = u[:, 1:] - u[:, :-1]
    np.testing.assert_allclose(gy_, gy, atol=1e-6)
    np.testing.assert_allclose(gx_, gx, atol=1e-6)
    # the old stacked form is jnp.stack(grad(u), axis=-3)
    stacked = np.asarray(jnp.stack(grad(jnp.asarray(u)), axis=-3))
    np.testing.assert_allclose(stacked, np.stack([gy, gx]), atol=1e-6)


def test_grad_3d_values_and_spacing(rng):
    u = rng.standard_normal((4, 5, 6)).astype(np.float32)
    sp = (4.0, 0.5, 1.0)
    g = [np.asarray(c) for c in grad(jnp.asarray(u), ndim=3, spacing=sp)]
    for a in range(3):
        ref = np.zeros_like(u)
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[a], lo[a] = slice(1, None), slice(0, -1)
        ref[tuple(lo)] = (u[tuple(hi)] - u[tuple(lo)]) / sp[a]
        np.testing.assert_allclose(g[a], ref, rtol=1e-6, atol=1e-6)


def test_grad_ndim2_on_a_stack_equals_per_slice(rng):
    """Leading axes are batch axes: ndim=2 on (3, 9, 11) = the 2-D gradient of each slice."""
    u = jnp.asarray(rng.standard_normal((3, 9, 11)), jnp.float32)
    g = grad(u, ndim=2)
    for k in range(3):
        gk = grad(u[k], ndim=2)
        for a in range(2):
            np.testing.assert_array_equal(np.asarray(g[a][k]), np.asarray(gk[a]))
    # spacing scales one component only
    g1 = grad(u, ndim=3)
    g2 = grad(u, ndim=3, spacing=(4.0, 1.0, 1.0))
    np.testing.assert_allclose(np.asarray(g2[0]), np.asarray(g1[0]) / 4.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(g2[1]), np.asarray(g1[1]))
    np.testing.assert_array_equal(np.asarray(g2[2]), np.asarray(g1[2]))


@pytest.mark.parametrize("shape,ndim", [((6, 6), 2), ((2, 5, 9), 2), ((3, 4, 5), 3)])
def test_grad_of_constant_is_zero(shape, ndim):
    u = jnp.full(shape, 3.7, jnp.float32)
    for c in grad(u, ndim=ndim):
        np.testing.assert_array_equal(np.asarray(c), 0.0)
    np.testing.assert_array_equal(np.asarray(tv(u, ndim=ndim)), 0.0)
    np.testing.assert_array_equal(np.asarray(tv(u, ndim=ndim, isotropic=False)), 0.0)


def test_spacing_of_wrong_length_raises():
    with pytest.raises(ValueError, match="spacing"):
        ops.grad(jnp.zeros((4, 4)), 2, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        ops.div((jnp.zeros((4, 4)),) * 2, (1.0,))
    with pytest.raises(ValueError, match="spacing"):
        ops.grad_norm_sq_bound(3, (1.0, 2.0))


def test_grad_norm_sq_bound_values():
    assert ops.grad_norm_sq_bound() == 8.0
    assert ops.grad_norm_sq_bound(3) == 12.0
    assert ops.grad_norm_sq_bound(3, (2.0, 1.0, 0.5)) == pytest.approx(4 * (0.25 + 1 + 4))


@pytest.mark.parametrize(
    "shape,spacing,lo",
    [((16, 16), None, 7.0), ((6, 7, 8), None, 9.5), ((6, 7, 8), (3.0, 1.0, 1.0), None)],
)
def test_grad_norm_bound_power_iteration(shape, spacing, lo):
    """Power iteration on -div grad: ||grad||^2 <= 4 sum 1/h^2 (fixes the PD step sizes)."""
    nd = len(shape)
    bound = ops.grad_norm_sq_bound(nd, spacing)
    lo = 0.8 * bound if lo is None else lo

    def op(v):
        return -ops.div(ops.grad(v, nd, spacing), spacing)

    def power_step(_, v):
        v = op(v)
        return v / jnp.linalg.norm(v)

    u = jax.random.normal(jax.random.key(0), shape)
    u = jax.jit(lambda v: lax.fori_loop(0, 300, power_step, v))(u)
    lam_max = float(jax.jit(lambda v: jnp.sum(v * op(v)) / jnp.sum(v * v))(u))
    # and the Rayleigh quotient in grad form
    gsq = float(sum(jnp.sum(c**2) for c in grad(u, ndim=nd, spacing=spacing)) / jnp.sum(u**2))
    assert gsq == pytest.approx(lam_max, rel=1e-4)
    assert lo < lam_max <= bound + 1e-4


# --------------------------------------------------------------------------------------
# pointwise norm
# --------------------------------------------------------------------------------------


def test_pointwise_norm_values_and_zero_derivative_at_zero():
    a = jnp.asarray([[3.0, 0.0], [1.0, 0.0]], jnp.float32)
    b = jnp.asarray([[4.0, 0.0], [0.0, -2.0]], jnp.float32)
    np.testing.assert_allclose(np.asarray(ops.pointwise_norm((a, b))), [[5.0, 0.0], [1.0, 2.0]])
    grad_norm = jax.grad(lambda x, y: jnp.sum(ops.pointwise_norm((x, y))), argnums=(0, 1))
    ga, gb = jax.jit(grad_norm)(a, b)
    assert np.all(np.isfinite(np.asarray(ga))) and np.all(np.isfinite(np.asarray(gb)))
    assert float(ga[0, 1]) == 0.0 and float(gb[0, 1]) == 0.0
    assert float(ga[0, 0]) == pytest.approx(0.6) and float(gb[0, 0]) == pytest.approx(0.8)


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
    t3 = tv(u, ndim=3)
    assert t3.shape == (3,)
    for a in range(3):
        assert float(t3[a]) == pytest.approx(float(tv(u[a], ndim=3)), rel=1e-6)
        for b in range(2):
            assert float(t[a, b]) == pytest.approx(float(tv(u[a, b])), rel=1e-6)


def test_tv_3d_of_a_box_counts_its_surface():
    u = jnp.zeros((8, 9, 10)).at[2:5, 3:7, 1:6].set(1.0)
    # anisotropic TV of an indicator = number of faces between inside and outside voxels
    faces = 2 * (4 * 5 + 3 * 5 + 3 * 4)
    assert float(tv(u, ndim=3, isotropic=False)) == pytest.approx(faces)
    # a z step of 2 halves the z faces' contribution
    got = float(tv(u, ndim=3, spacing=(2.0, 1.0, 1.0), isotropic=False))
    assert got == pytest.approx(faces - 4 * 5)
    # isotropic TV of the box is smaller (edges and corners combine components) but positive
    iso = float(tv(u, ndim=3))
    assert 0.5 * faces < iso < faces


def test_tv_isotropic_gradient_finite_at_flat_pixels():
    u = jnp.zeros((6, 6), jnp.float32).at[2:4, 2:4].set(1.0)
    g = jax.grad(lambda v: tv(v))(u)
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.abs(np.asarray(g)).max() > 0


def _huber_ref(u, eps, isotropic, spacing=None):
    """Huber TV in numpy, float64: sum h_eps(|grad u|) (per component when anisotropic)."""
    nd = u.ndim
    sp = (1.0,) * nd if spacing is None else spacing
    comps = []
    for a in range(nd):
        d = np.zeros_like(u)
        hi = [slice(None)] * nd
        lo = [slice(None)] * nd
        hi[a], lo[a] = slice(1, None), slice(0, -1)
        d[tuple(lo)] = (u[tuple(hi)] - u[tuple(lo)]) / sp[a]
        comps.append(d)
    mags = [np.sqrt(sum(c * c for c in comps))] if isotropic else [np.abs(c) for c in comps]

    def h(t):
        return t if eps == 0 else np.where(t <= eps, t * t / (2 * eps), t - eps / 2)

    return float(sum(np.sum(h(m)) for m in mags))


@pytest.mark.parametrize("isotropic", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.3, 2.0])
@pytest.mark.parametrize("shape,spacing", [((7, 8), None), ((4, 5, 6), (2.0, 1.0, 1.0))])
def test_tv_huber_matches_formula(eps, isotropic, shape, spacing, rng, x64):
    # small variations, so that both branches of the Huber function occur
    u = 0.3 * rng.standard_normal(shape)
    nd = len(shape)
    got = float(ops.tv(jnp.asarray(u), nd, spacing, isotropic=isotropic, eps=eps))
    assert got == pytest.approx(_huber_ref(u, eps, isotropic, spacing), rel=1e-10)
    if 0 < eps < 2.0:  # both branches occur
        m = np.abs(np.diff(u, axis=-1))
        assert (m < eps).any() and (m > eps).any()


def test_tv_eps_zero_is_plain_tv_and_huber_is_below(rng):
    u = jnp.asarray(rng.standard_normal((2, 9, 7)), jnp.float32)
    for iso in (True, False):
        plain = np.asarray(ops.tv(u, isotropic=iso))
        np.testing.assert_array_equal(np.asarray(ops.tv(u, isotropic=iso, eps=0.0)), plain)
        # eps as a (traced) array: eps == 0 takes the same values
        traced = jax.jit(lambda v, e, iso=iso: ops.tv(v, isotropic=iso, eps=e))
        np.testing.assert_allclose(np.asarray(traced(u, jnp.float32(0.0))), plain, rtol=1e-6)
        # h_eps(t) in [t - eps/2, t]: below TV, above TV - eps/2 * (#terms)
        eps = 0.1
        hub = np.asarray(traced(u, jnp.float32(eps)))
        n_terms = 7 * 9 * (1 if iso else 2)
        assert np.all(hub < plain)
        assert np.all(hub >= plain - 0.5 * eps * n_terms - 1e-4)
        np.testing.assert_allclose(np.asarray(tv(u, isotropic=iso, eps=eps)), hub, rtol=1e-6)


def test_tv_huber_is_differentiable_everywhere():
    u = jnp.zeros((6, 6), jnp.float32).at[2:4, 2:4].set(1.0)
    grad_huber = jax.jit(jax.grad(lambda v: jnp.sum(ops.tv(v, eps=0.1))))
    g = grad_huber(u)
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.abs(np.asarray(g)).max() > 0
    # a flat image is a minimiser: zero gradient
    g0 = grad_huber(jnp.zeros((6, 6), jnp.float32))
    np.testing.assert_array_equal(np.asarray(g0), 0.0)
