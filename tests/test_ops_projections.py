"""self2seg_jax.ops.projections: box, probability simplex and dual-ball projections."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from self2seg_jax import ops

project_dual_ball = jax.jit(ops.project_dual_ball, static_argnames="isotropic")
project_box = jax.jit(ops.project_box)
project_simplex = jax.jit(ops.project_simplex, static_argnames="axis")


def _norm(comps):
    return np.sqrt(sum(np.asarray(c, np.float64) ** 2 for c in comps))


# --------------------------------------------------------------------------------------
# dual ball
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.05, 1.0, 3.0])
@pytest.mark.parametrize("ndim", [2, 3])
def test_project_dual_ball_isotropic(lam, ndim, rng):
    shape = (2, 7, 9) if ndim == 2 else (4, 5, 6)
    ps = tuple(jnp.asarray(3 * rng.standard_normal(shape), jnp.float32) for _ in range(ndim))
    qs = project_dual_ball(ps, lam)
    assert isinstance(qs, tuple) and len(qs) == ndim
    assert all(q.shape == shape and q.dtype == jnp.float32 for q in qs)
    norm = _norm(qs)
    assert np.all(norm <= lam * (1 + 1e-6))
    # idempotent
    for a, b in zip(project_dual_ball(qs, lam), qs, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # points outside land on the sphere, with the same direction
    pn = _norm(ps)
    out = pn > lam
    assert out.any()
    np.testing.assert_allclose(norm[out], lam, rtol=1e-5)
    rescale = np.where(out, pn / lam, 1.0)
    for q, p in zip(qs, ps, strict=True):
        np.testing.assert_allclose(np.asarray(q) * rescale, np.asarray(p), rtol=1e-5, atol=1e-6)
    # interior points unchanged (bit for bit)
    pnj = jnp.sqrt(sum(p * p for p in ps))
    inside = tuple(0.5 * lam * p / (pnj + 1e-3) for p in ps)
    for a, b in zip(project_dual_ball(inside, lam), inside, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("lam", [0.05, 1.0])
def test_project_dual_ball_anisotropic(lam, rng):
    ps = tuple(jnp.asarray(3 * rng.standard_normal((6, 5)), jnp.float32) for _ in range(2))
    qs = tuple(np.asarray(q) for q in project_dual_ball(ps, lam, isotropic=False))
    for q, p in zip(qs, ps, strict=True):
        assert np.all(np.abs(q) <= lam)
        np.testing.assert_array_equal(q, np.clip(np.asarray(p), -lam, lam))
    again = project_dual_ball(tuple(jnp.asarray(q) for q in qs), lam, isotropic=False)
    for a, q in zip(again, qs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), q)
    inside = tuple(jnp.asarray(0.99 * lam * np.tanh(rng.standard_normal((6, 5))), jnp.float32)
                   for _ in range(2))
    for a, b in zip(project_dual_ball(inside, lam, isotropic=False), inside, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # anisotropic allows |p| up to sqrt(2) lam (a square, not a disc)
    assert _norm(qs).max() > lam * 1.2


def test_project_dual_ball_traced_lam(rng):
    ps = tuple(jnp.asarray(rng.standard_normal((5, 5)), jnp.float32) for _ in range(2))
    f = jax.jit(lambda ps, lam: ops.project_dual_ball(ps, lam))
    pn = _norm(ps)
    for lam in (0.3, 0.9):
        got = f(ps, jnp.float32(lam))
        for g, p in zip(got, ps, strict=True):
            ref = np.asarray(p) * lam / np.maximum(lam, pn)
            np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-6)


def test_project_dual_ball_zero_field_has_finite_gradient():
    """The pointwise norm's derivative is 0 (not NaN) at p = 0."""
    ps = (jnp.zeros((4, 4), jnp.float32), jnp.zeros((4, 4), jnp.float32).at[1, 1].set(3.0))
    g = jax.jit(jax.grad(lambda a, b: sum(jnp.sum(q) for q in ops.project_dual_ball((a, b), 1.0)),
                         argnums=(0, 1)))(*ps)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


# --------------------------------------------------------------------------------------
# box
# --------------------------------------------------------------------------------------


def test_project_box(rng):
    u = jnp.asarray(2 * rng.standard_normal((3, 8, 8)), jnp.float32)
    v = np.asarray(project_box(u))
    assert v.min() >= 0.0 and v.max() <= 1.0
    assert (v == 0).any() and (v == 1).any()
    np.testing.assert_array_equal(v, np.clip(np.asarray(u), 0, 1))
    np.testing.assert_array_equal(np.asarray(project_box(jnp.asarray(v))), v)
    inside = (np.asarray(u) > 0) & (np.asarray(u) < 1)
    assert inside.any()
    np.testing.assert_array_equal(v[inside], np.asarray(u)[inside])


# --------------------------------------------------------------------------------------
# simplex
# --------------------------------------------------------------------------------------


def _simplex_ref(v):
    """Projection onto the simplex by bisection on the threshold (independent reference)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        t = 0.5 * (lo + hi)
        if np.maximum(v - t, 0).sum() > 1:
            lo = t
        else:
            hi = t
    return np.maximum(v - 0.5 * (lo + hi), 0)


@pytest.mark.parametrize("c", [2, 4])
def test_project_simplex_matches_reference_and_is_idempotent(c, x64, rng):
    v = rng.normal(size=(c, 5, 6)) * 2
    got = np.asarray(project_simplex(jnp.asarray(v), axis=0))
    assert got.dtype == np.float64
    ref = np.apply_along_axis(_simplex_ref, 0, v)
    np.testing.assert_allclose(got, ref, atol=1e-8)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-12)
    assert got.min() >= 0
    assert (got == 0).any()  # some points are on a face (the projection is not a shift)
    again = np.asarray(project_simplex(jnp.asarray(got), axis=0))
    np.testing.assert_allclose(again, got, atol=1e-12)
    # class axis elsewhere
    got_last = np.asarray(project_simplex(jnp.asarray(np.moveaxis(v, 0, -1)), axis=-1))
    np.testing.assert_allclose(np.moveaxis(got_last, -1, 0), got, atol=1e-12)
    # projection property: <v - P v, w - P v> <= 0 for points w of the simplex
    w = np.apply_along_axis(_simplex_ref, 0, rng.normal(size=v.shape))
    assert np.all(np.sum((v - got) * (w - got), axis=0) <= 1e-10)


def test_project_simplex_float32_and_shift_invariance(rng):
    v = jnp.asarray(rng.normal(size=(3, 7, 4)), jnp.float32)
    a = project_simplex(v, axis=0)
    assert a.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a).sum(0), 1.0, atol=1e-6)
    # P(v + c 1) = P(v): adding the same constant to every class changes nothing
    b = project_simplex(v + 5.0, axis=0)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_project_simplex_two_classes_is_box_of_half_difference(rng, x64):
    """For C = 2, P(v)_1 = clip((1 + v_1 - v_0) / 2, 0, 1): the link between SIMPLEX and BOX."""
    v = rng.normal(size=(2, 6, 6)) * 2
    got = np.asarray(project_simplex(jnp.asarray(v), axis=0))
    np.testing.assert_allclose(got[1], np.clip((1 + v[1] - v[0]) / 2, 0, 1), atol=1e-12)
