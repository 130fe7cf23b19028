"""self2seg_jax.diff: the differentiable mask step (relaxed_mask, implicit and unrolled modes)
and the fixed-outer two-class scheme."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import diff, experts, pdhg


def _problem(dtype=np.float64, size=10, seed=0):
    yy, xx = np.mgrid[:size, :size]
    g = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).astype(np.float64)
    f = g + 0.3 * np.random.default_rng(seed).normal(size=g.shape)
    wt = np.random.default_rng(seed + 1).normal(size=g.shape)
    return (jnp.asarray((f - 1) ** 2, dtype), jnp.asarray(f**2, dtype), jnp.asarray(wt, dtype))


OPTS = dict(tol=1e-13, max_iter=400000, smoothing=0.1)


def _loss(mode, wt, iters=3000):
    def loss(d_fg, d_bg, lam, mu):
        u = s2s.relaxed_mask(d_fg, d_bg, lam, mu=mu, u_ref=jnp.full_like(d_fg, 0.5), mode=mode,
                             unroll_iters=iters, **OPTS)
        return jnp.sum(u * wt)

    return jax.jit(loss)


@pytest.mark.parametrize("mode", ["implicit", "unrolled"])
def test_gradients_match_central_differences(x64, mode):
    d_fg, d_bg, wt = _problem()
    loss = _loss(mode, wt, iters=4000)
    lam, mu = 0.3, 0.3
    g_d, g_lam, g_mu = jax.jit(jax.grad(loss, argnums=(0, 2, 3)))(d_fg, d_bg, lam, mu)
    h = 1e-6
    fd_lam = (loss(d_fg, d_bg, lam + h, mu) - loss(d_fg, d_bg, lam - h, mu)) / (2 * h)
    fd_mu = (loss(d_fg, d_bg, lam, mu + h) - loss(d_fg, d_bg, lam, mu - h)) / (2 * h)
    assert abs(float(g_lam)) > 1e-3 and abs(float(g_mu)) > 1e-3
    np.testing.assert_allclose(g_lam, fd_lam, rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(g_mu, fd_mu, rtol=2e-3, atol=1e-6)
    # Image / data-term derivative at the pixel with the largest gradient (an edge pixel).
    i, j = np.unravel_index(int(jnp.argmax(jnp.abs(g_d))), g_d.shape)
    assert abs(float(g_d[i, j])) > 1e-3
    e = jnp.zeros_like(d_fg).at[i, j].set(1.0)
    fd_d = (loss(d_fg + h * e, d_bg, lam, mu) - loss(d_fg - h * e, d_bg, lam, mu)) / (2 * h)
    np.testing.assert_allclose(g_d[i, j], fd_d, rtol=2e-3, atol=1e-6)


def test_implicit_and_unrolled_agree_when_converged(x64):
    d_fg, d_bg, wt = _problem()
    gi = jax.jit(jax.grad(_loss("implicit", wt), argnums=(0, 1, 2, 3)))(d_fg, d_bg, 0.3, 0.3)
    gu = jax.jit(jax.grad(_loss("unrolled", wt, iters=3000), argnums=(0, 1, 2, 3)))(
        d_fg, d_bg, 0.3, 0.3)
    for a, b in zip(gi, gu, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert float(jnp.max(jnp.abs(gi[0]))) > 1e-3  # not trivially zero
    # d/d d_bg = -d/d d_fg (only r = d_fg - d_bg enters)
    np.testing.assert_allclose(gi[1], -gi[0], rtol=1e-6, atol=1e-9)


def test_forward_matches_solver_and_stays_in_box():
    d_fg, d_bg, _ = _problem(np.float32, size=16)
    u = s2s.relaxed_mask(d_fg, d_bg, 0.3, smoothing=1e-3, tol=1e-5)
    assert u.shape == (16, 16) and u.dtype == jnp.float32
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0
    # Small smoothing: nearly the plain-TV solution of the compiled solver.
    ref = jax.jit(pdhg.solve, static_argnames=("max_iter",))(d_fg - d_bg, 0.3, tol=1e-6,
                                                            max_iter=20000).u
    assert float(jnp.mean(jnp.abs((u >= 0.5) != (ref >= 0.5)))) < 0.02
    # unrolled forward: the same problem, a fixed number of iterations
    uu = s2s.relaxed_mask(d_fg, d_bg, 0.3, smoothing=1e-3, mode="unrolled", unroll_iters=2000)
    assert float(jnp.mean(jnp.abs((uu >= 0.5) != (ref >= 0.5)))) < 0.02


def test_forward_equals_pdhg_solve_with_huber_eps(x64):
    """The implicit forward pass is pdhg.solve(d_fg - d_bg, eps=smoothing) of the BOX problem."""
    d_fg, d_bg, _ = _problem(np.float64, size=10)
    u_ref = jnp.full_like(d_fg, 0.5)
    u = s2s.relaxed_mask(d_fg, d_bg, 0.3, mu=0.3, u_ref=u_ref, smoothing=0.1, tol=1e-10)
    ref = pdhg.solve(d_fg - d_bg, 0.3, pdhg.Problem(), mu=0.3, u_ref=u_ref, tol=1e-10,
                     max_iter=20000, eps=0.1)
    assert int(ref.status) == pdhg.CONVERGED
    np.testing.assert_allclose(np.asarray(u), np.asarray(ref.u), atol=1e-6)


def test_gradients_finite_at_box_constraints():
    # Data terms strongly favour one label everywhere: u* is 0 or 1 on every pixel.
    d_fg = jnp.ones((10, 10), jnp.float32) * 5.0
    d_bg = jnp.zeros((10, 10), jnp.float32).at[:, :5].set(10.0)
    for mode in ("implicit", "unrolled"):
        def f(lam, mu, mode=mode):
            return jnp.sum(s2s.relaxed_mask(d_fg, d_bg, lam, mu=mu, u_ref=jnp.ones_like(d_fg),
                                            mode=mode, unroll_iters=200))

        g = jax.jit(jax.grad(f, argnums=(0, 1)))(0.1, 0.01)
        assert all(np.isfinite(float(x)) for x in g)
        u = s2s.relaxed_mask(d_fg, d_bg, 0.1, mode=mode, unroll_iters=200)
        assert np.all(np.isin(np.round(np.asarray(u), 4), (0.0, 1.0)))
        np.testing.assert_array_equal(np.round(np.asarray(u)), np.asarray(d_fg < d_bg, np.float32))


def test_jit_vmap_grad_compose():
    batch = [_problem(np.float32, size=10, seed=s) for s in range(3)]
    d_fg = jnp.stack([b[0] for b in batch])
    d_bg = jnp.stack([b[1] for b in batch])
    wt = batch[0][2]

    def loss(lam, a, b):
        u = s2s.relaxed_mask(a, b, lam, mu=0.3, u_ref=jnp.full_like(a, 0.5), smoothing=0.1,
                             tol=1e-6)
        return jnp.sum(u * wt)

    g_batched = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(0.3, d_fg, d_bg)
    single = jax.jit(jax.grad(loss))
    g_single = jnp.stack([single(0.3, d_fg[i], d_bg[i]) for i in range(3)])
    assert g_batched.shape == (3,)
    np.testing.assert_allclose(g_batched, g_single, rtol=1e-3, atol=1e-5)
    assert float(jnp.max(jnp.abs(g_single))) > 0


def test_loss_decreases_along_negative_gradient():
    d_fg, d_bg, _ = _problem(np.float32, size=16)
    target = jnp.zeros((16, 16), jnp.float32).at[4:12, 4:12].set(1.0)

    @jax.jit
    def loss(lam):
        u = s2s.relaxed_mask(d_fg, d_bg, lam, mu=0.2, u_ref=jnp.full_like(d_fg, 0.5),
                             smoothing=0.1, tol=1e-6)
        return jnp.mean((u - target) ** 2)

    lam = 0.2
    val, g = jax.jit(jax.value_and_grad(loss))(lam)
    assert abs(float(g)) > 0
    step = 0.05 / abs(float(g)) * 0.1
    assert float(loss(lam - step * float(g))) < float(val)


def test_bad_arguments():
    a = jnp.zeros((8, 8))
    with pytest.raises(ValueError, match="mode"):
        s2s.relaxed_mask(a, a, 0.1, mode="magic")
    with pytest.raises(ValueError, match="same shape"):
        s2s.relaxed_mask(a, jnp.zeros((8, 9)), 0.1)
    with pytest.raises(ValueError, match="2-D"):
        s2s.relaxed_mask(jnp.zeros((2, 8, 8)), jnp.zeros((2, 8, 8)), 0.1)
    with pytest.raises(ValueError, match="smoothing"):
        s2s.relaxed_mask(a, a, 0.1, smoothing=0.0)


def test_mask_options_are_static():
    o = diff.MaskOptions()
    assert hash(o) == hash(diff.MaskOptions()) and o == diff.MaskOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.tol = 1.0
    assert o.problem == pdhg.Problem()
    assert diff.MaskOptions(isotropic=False).problem == pdhg.Problem(isotropic=False)


# --------------------------------------------------------------------------------------
# fixed-outer scheme and chain rule through experts
# --------------------------------------------------------------------------------------


def _blob24():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24]
    gt = (yy - 12) ** 2 + (xx - 11) ** 2 < 36
    img = (0.3 + 0.4 * gt + 0.1 * rng.standard_normal((24, 24))).astype(np.float32)
    return jnp.asarray((img - img.min()) / (img.max() - img.min())), gt


def test_grad_through_fixed_outer_scheme():
    f, gt = _blob24()
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", init_denoise=False)
    m0 = jnp.asarray(f > 0.5, jnp.float32)
    w0 = jnp.stack([1 - m0, m0])  # background first
    labels0 = m0.astype(jnp.int32)
    spec = cfg.spec()
    gt_f = jnp.asarray(gt, jnp.float32)

    def loss(lam, mu):
        hyper = cfg.replace(lam=0.05).hyper()._replace(lam=lam, mu=mu)
        u, den = diff.scheme_fixed_outer(jax.random.key(0), f, w0, labels0, hyper, spec,
                                         n_outer=2, smoothing=0.05, tol=1e-6)
        inter = jnp.sum(u * gt_f)
        return 1 - 2 * inter / (jnp.sum(u) + jnp.sum(gt_f))

    loss = jax.jit(loss)
    g = jax.jit(jax.grad(loss, argnums=(0, 1)))(0.05, 0.05)
    assert all(np.isfinite(float(x)) for x in g)
    assert abs(float(g[0])) > 0
    h = 1e-3
    fd = (loss(0.05 + h, 0.05) - loss(0.05 - h, 0.05)) / (2 * h)
    np.testing.assert_allclose(float(g[0]), float(fd), rtol=0.1, atol=1e-3)
    # the forward pass segments the blob; expert outputs are (background, foreground)
    hyper = cfg.replace(lam=0.05, mu=0.05).hyper()
    u, den = jax.jit(lambda: diff.scheme_fixed_outer(jax.random.key(0), f, w0, labels0, hyper,
                                                     spec, n_outer=2, smoothing=0.05,
                                                     tol=1e-6))()
    assert u.shape == f.shape and den.shape == (2,) + f.shape
    assert s2s.metrics.dice(np.asarray(u) >= 0.5, gt) > 0.9
    assert float(den[0].mean()) < float(den[1].mean())


def test_fixed_outer_scheme_is_two_class_only():
    f, _ = _blob24()
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", init_denoise=False)
    spec = cfg.spec(num_classes=3)
    w0 = jnp.ones((3,) + f.shape, jnp.float32) / 3
    with pytest.raises(ValueError, match="two"):
        diff.scheme_fixed_outer(jax.random.key(0), f, w0, jnp.zeros(f.shape, jnp.int32),
                                cfg.hyper(), spec)


def test_grad_wrt_expert_parameters_and_composite(x64):
    """Chain rule through an expert: d_fg = (f - w * f)^2 for a 3x3 linear filter w."""
    rng = np.random.default_rng(3)
    f = jnp.asarray(np.clip(0.5 + 0.3 * rng.standard_normal((10, 10)), 0, 1))
    cfg = experts.TrainConfig(linear_size=3)
    c_bg = jnp.asarray(0.3)

    def loss(kernel):
        den_fg = experts.apply({"kernel": kernel, "bias": jnp.asarray(0.0)}, f, "linear", cfg)
        u = s2s.relaxed_mask((f - den_fg) ** 2, (f - c_bg) ** 2, 0.05, mu=0.3,
                             u_ref=jnp.full_like(f, 0.5), smoothing=0.1, tol=1e-13,
                             max_iter=400000)
        composite = u * den_fg + (1 - u) * c_bg
        return jnp.sum(composite * f)

    loss = jax.jit(loss)
    k0 = jnp.asarray(rng.normal(size=(3, 3)) * 0.1 + np.pad([[1.0]], 1) * 0.5)
    g = jax.jit(jax.grad(loss))(k0)
    assert g.shape == (3, 3)
    h = 1e-6
    for idx in [(0, 0), (1, 1), (2, 1)]:
        e = jnp.zeros_like(k0).at[idx].set(1.0)
        fd = (loss(k0 + h * e) - loss(k0 - h * e)) / (2 * h)
        np.testing.assert_allclose(g[idx], fd, rtol=2e-3, atol=1e-6)
