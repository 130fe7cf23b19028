"""Chambolle–Pock solver of the mask sub-problem: optimality (exact LP), trivial limits,
jitted vs Python backend, stopping rule, thresholding theorem, accelerated variant."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax import lax
from scipy.optimize import linprog

from self2seg_jax import energy, ops, pdhg

_solve_jit = jax.jit(
    pdhg.pdhg_solve, static_argnames=("max_iter", "check_every", "isotropic", "accelerated")
)


def solve(r, lam, *, mu=0.0, u_ref=None, u0=None, p0=None, tol=1e-4, max_iter=20000,
          check_every=10, isotropic=True, accelerated=False):
    """pdhg_solve, jitted; the optional arrays are always passed explicitly (with the documented
    defaults) so that one compilation per shape serves every test."""
    r = jnp.asarray(r)
    dt = r.dtype
    u_ref = jnp.zeros_like(r) if u_ref is None else u_ref
    u0 = (r < 0).astype(dt) if u0 is None else u0
    p0 = jnp.zeros((2,) + r.shape, dt) if p0 is None else p0
    return _solve_jit(r, jnp.asarray(lam, dt), mu=jnp.asarray(mu, dt), u_ref=u_ref, u0=u0, p0=p0,
                      tol=jnp.asarray(tol, dt), max_iter=max_iter, check_every=check_every,
                      isotropic=isotropic, accelerated=accelerated)

gap_fn = jax.jit(pdhg.primal_dual_gap, static_argnames=("isotropic",))


@jax.jit
def _energy_aniso(u, r, lam):
    return lam * ops.tv(u, isotropic=False) + jnp.sum(r * u)


@jax.jit
def _energy_iso(u, r, lam):
    return lam * ops.tv(u) + jnp.sum(r * u)


def relaxed_energy(u, r, lam, isotropic):
    return float((_energy_iso if isotropic else _energy_aniso)(u, r, lam))


def anisotropic_tv_lp(r: np.ndarray, lam: float) -> float:
    """min_u lam*sum|grad u|_1 + <r, u>, u in [0,1], as an LP in (u, t): -t <= D u <= t."""
    h, w = r.shape
    n = h * w
    idx = np.arange(n).reshape(h, w)
    rows, cols, vals = [], [], []
    k = 0
    for i in range(h):
        for j in range(w):
            for di, dj in ((1, 0), (0, 1)):
                if i + di < h and j + dj < w:
                    rows += [k, k]
                    cols += [idx[i + di, j + dj], idx[i, j]]
                    vals += [1.0, -1.0]
                    k += 1
    m = k
    D = sp.csr_matrix((vals, (rows, cols)), shape=(m, n))
    eye = sp.identity(m, format="csr")
    A = sp.vstack([sp.hstack([D, -eye]), sp.hstack([-D, -eye])]).tocsr()
    c = np.concatenate([r.ravel().astype(np.float64), lam * np.ones(m)])
    res = linprog(
        c, A_ub=A, b_ub=np.zeros(2 * m), bounds=[(0, 1)] * n + [(0, None)] * m, method="highs"
    )
    assert res.status == 0, res.message
    return float(res.fun)


# --------------------------------------------------------------------------------------
# (a) optimality against an exact LP (anisotropic TV)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,shape,lam", [(0, (8, 8), 0.5), (1, (8, 8), 0.2), (2, (6, 10), 0.8)])
def test_anisotropic_solution_matches_lp_optimum(seed, shape, lam):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(shape).astype(np.float32)
    opt = anisotropic_tv_lp(r, lam)
    tol = 1e-6
    s = solve(jnp.asarray(r), lam, tol=tol, isotropic=False)
    assert int(s.status) == pdhg.CONVERGED
    assert float(s.gap) <= tol
    e = relaxed_energy(s.u, jnp.asarray(r), lam, isotropic=False)
    assert abs(e - opt) <= 1e-3 * abs(opt)
    # The gap is a certificate: D(p) <= opt <= P(u) and P(u) - D(p) = gap.
    gap, scale = (float(v) for v in gap_fn(s.u, s.p, jnp.asarray(r), lam, isotropic=False))
    slack = 1e-5 * abs(opt)
    assert e >= opt - slack  # a feasible u cannot beat the LP optimum
    assert e - gap <= opt + slack  # the dual value is a lower bound
    assert gap / scale == pytest.approx(float(s.gap), rel=1e-3, abs=1e-9)


def test_anisotropic_lp_float64(x64):
    rng = np.random.default_rng(5)
    r = rng.standard_normal((7, 9))
    lam = 0.4
    opt = anisotropic_tv_lp(r, lam)
    s = solve(jnp.asarray(r, jnp.float64), lam, tol=1e-9, max_iter=60000, isotropic=False)
    assert s.u.dtype == jnp.float64
    assert int(s.status) == pdhg.CONVERGED
    e = float(lam * ops.tv(s.u, isotropic=False) + jnp.sum(jnp.asarray(r) * s.u))
    assert abs(e - opt) <= 1e-6 * abs(opt)


def test_gap_is_nonnegative_for_feasible_pairs(rng):
    """Weak duality: gap(u, p) >= 0 for every u in [0,1] and p in the lam-ball (mu = 0 and mu > 0)."""
    r = jnp.asarray(rng.standard_normal((12, 12)), jnp.float32)
    u_ref = jnp.asarray(rng.random((12, 12)), jnp.float32)
    for _ in range(5):
        u = jnp.asarray(rng.random((12, 12)), jnp.float32)
        p = jnp.clip(jnp.asarray(2 * rng.standard_normal((2, 12, 12)), jnp.float32), -0.2, 0.2)
        for mu in (0.0, 0.7):
            for iso in (True, False):
                g, scale = gap_fn(u, p, r, 0.3, mu=mu, u_ref=u_ref, isotropic=iso)
                assert float(g) >= -1e-4 * float(scale)


# --------------------------------------------------------------------------------------
# (b) trivial limits
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("isotropic", [True, False])
def test_tiny_lam_gives_sign_of_r(isotropic, rng):
    sign = np.where(rng.random((12, 12)) < 0.5, -1.0, 1.0)
    r = (sign * (0.1 + np.abs(rng.standard_normal((12, 12))))).astype(np.float32)
    u0 = jnp.full(r.shape, 0.5, jnp.float32)  # do not start at the answer
    s = solve(jnp.asarray(r), 1e-6, u0=u0, tol=1e-6, isotropic=isotropic)
    assert int(s.status) == pdhg.CONVERGED
    np.testing.assert_array_equal(np.asarray(s.u), (r < 0).astype(np.float32))


@pytest.mark.parametrize("lam", [1e-3, 1.0])
def test_positive_r_gives_empty_mask(lam, rng):
    r = (0.05 + rng.random((12, 12))).astype(np.float32)
    s = solve(jnp.asarray(r), lam, u0=jnp.ones(r.shape, jnp.float32), tol=1e-6)
    assert int(s.status) == pdhg.CONVERGED
    u = np.asarray(s.u)
    assert u.max() < 1e-3
    assert not (u >= 0.5).any()


# --------------------------------------------------------------------------------------
# (c) jitted vs Python backend, (d) feasibility / status, (e) history
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("isotropic", [True, False])
def test_jitted_and_python_backends_agree(isotropic, rng):
    r = jnp.asarray(rng.standard_normal((12, 12)) * 0.5, jnp.float32)
    sj = solve(r, 0.3, tol=1e-4, isotropic=isotropic)
    sp_, hist = pdhg.pdhg_solve_python(r, 0.3, tol=1e-4, max_iter=20000, isotropic=isotropic)
    assert int(sj.it) == int(sp_.it) == hist[-1][0]
    assert int(sj.status) == int(sp_.status) == pdhg.CONVERGED
    np.testing.assert_allclose(np.asarray(sj.u), np.asarray(sp_.u), atol=1e-5)
    np.testing.assert_allclose(np.asarray(sj.p), np.asarray(sp_.p), atol=1e-5)
    assert float(sj.gap) == pytest.approx(float(sp_.gap), rel=1e-3)


@pytest.mark.parametrize("isotropic", [True, False])
@pytest.mark.parametrize("shape,lam,tol", [((16, 16), 0.5, 1e-4), ((12, 20), 0.1, 1e-5)])
def test_solution_is_feasible_and_converged(shape, lam, tol, isotropic, rng):
    r = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    s = solve(r, lam, tol=tol, isotropic=isotropic)
    u = np.asarray(s.u)
    assert u.shape == shape and s.p.shape == (2,) + shape
    assert u.min() >= 0.0 and u.max() <= 1.0
    assert int(s.status) == pdhg.CONVERGED
    assert 0.0 <= float(s.gap) <= tol
    assert int(s.it) % 10 == 0 and 0 < int(s.it) <= 20000
    # dual feasibility
    if isotropic:
        assert np.sqrt(np.sum(np.asarray(s.p) ** 2, axis=0)).max() <= lam * (1 + 1e-5)
    else:
        assert np.abs(np.asarray(s.p)).max() <= lam * (1 + 1e-6)


def test_max_iter_status(rng):
    r = jnp.asarray(rng.standard_normal((16, 16)), jnp.float32)
    s = solve(r, 0.5, tol=1e-12, max_iter=45, check_every=10)
    assert int(s.status) == pdhg.MAX_ITER
    assert int(s.it) == 50  # rounded up to a multiple of check_every
    assert float(s.gap) > 1e-12


def test_python_history_gap_decreases(rng):
    r = jnp.asarray(rng.standard_normal((12, 12)) * 0.5, jnp.float32)
    tol = 1e-5
    s, hist = pdhg.pdhg_solve_python(r, 0.3, tol=tol, max_iter=5000, check_every=10, isotropic=False)
    its = [h[0] for h in hist]
    gaps = np.array([h[1] for h in hist])
    assert its == list(range(10, 10 * len(hist) + 1, 10))
    assert len(gaps) >= 4
    assert gaps[-1] <= tol and int(s.status) == pdhg.CONVERGED
    assert np.all(gaps[:-1] > tol)  # it stops at the first check below tol
    # decreasing on average: the log-gap trend is negative and each half improves on the last
    half = len(gaps) // 2
    assert np.mean(np.log(gaps[half:])) < np.mean(np.log(gaps[:half]))
    slope = np.polyfit(np.arange(len(gaps)), np.log(gaps), 1)[0]
    assert slope < 0
    assert gaps[-1] < gaps[0]
    # the recorded energy is the primal objective of the returned u
    assert hist[-1][2] == pytest.approx(relaxed_energy(s.u, r, 0.3, isotropic=False), rel=1e-5)


# --------------------------------------------------------------------------------------
# (f) thresholding theorem (paper Thm 4)
# --------------------------------------------------------------------------------------


def _two_phase_problem(seed=1, n=24):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    gt = (yy - n / 2) ** 2 + (xx - n / 2 + 1) ** 2 < (n / 3.5) ** 2
    f = (0.3 + 0.4 * gt + 0.15 * rng.standard_normal((n, n))).astype(np.float32)
    return jnp.asarray((f - 0.7) ** 2), jnp.asarray((f - 0.3) ** 2)


joint_energy = jax.jit(energy.joint_energy, static_argnames=("isotropic",))
binary_energy = jax.jit(energy.binary_energy, static_argnames=("isotropic",))
_abs_gap_scale = jax.jit(
    lambda u, r, lam, iso: jnp.sum(jnp.abs(r)) + lam * ops.tv(u, isotropic=iso),
    static_argnums=3,
)


@pytest.mark.parametrize(
    "isotropic,lam,rtol", [(False, 0.02, 1e-3), (False, 0.1, 1e-3), (True, 0.05, 2e-2)]
)
def test_thresholding_theorem(isotropic, lam, rtol):
    d_fg, d_bg = _two_phase_problem()
    s = solve(d_fg - d_bg, lam, tol=1e-6, isotropic=isotropic)
    assert int(s.status) == pdhg.CONVERGED
    e_relaxed = float(joint_energy(s.u, d_fg, d_bg, lam, isotropic=isotropic))
    gap_abs = float(s.gap) * float(_abs_gap_scale(s.u, d_fg - d_bg, lam, isotropic))
    for tau in (0.1, 0.3, 0.5, 0.7, 0.9):
        e_bin = float(binary_energy(s.u, d_fg, d_bg, lam, tau=jnp.float32(tau), isotropic=isotropic))
        assert abs(e_bin - e_relaxed) <= rtol * abs(e_relaxed), tau
        # a binary mask is admissible, so it cannot beat the relaxed minimum (up to the gap)
        assert e_bin >= e_relaxed - gap_abs - 1e-5 * abs(e_relaxed), tau


# --------------------------------------------------------------------------------------
# (g) accelerated variant (mu > 0) and warm start
# --------------------------------------------------------------------------------------


def _dual_fista_reference(r, lam, mu, u_ref, n_iter=4000):
    """Independent solver of the mu-strongly convex problem: FISTA on the smooth dual.

    D(p) = min_{u in [0,1]} <grad u, p> + <r, u> + mu/2 ||u - u_ref||^2 has gradient grad u(p)
    with u(p) = clip(u_ref + (div p - r) / mu), Lipschitz constant 8 / mu.
    """
    step = mu / ops.GRAD_NORM_SQ_BOUND

    def u_of(p):
        return jnp.clip(u_ref + (ops.div(p) - r) / mu, 0.0, 1.0)

    def body(k, c):
        p, q, t = c
        p_new = ops.project_dual_ball(q + step * ops.grad(u_of(q)), lam)
        t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        q = p_new + ((t - 1) / t_new) * (p_new - p)
        return p_new, q, t_new

    p0 = jnp.zeros((2,) + r.shape, r.dtype)
    p, _, _ = jax.jit(lambda c: lax.fori_loop(0, n_iter, body, c))((p0, p0, jnp.ones((), r.dtype)))
    return u_of(p)


@pytest.mark.parametrize("accelerated", [True, False])
def test_mu_variant_matches_independent_solver(x64, accelerated):
    rng = np.random.default_rng(7)
    r = jnp.asarray(0.8 * rng.standard_normal((16, 16)), jnp.float64)
    u_ref = jnp.asarray(rng.random((16, 16)), jnp.float64)
    lam, mu = 0.3, 1.0
    u_star = _dual_fista_reference(r, lam, mu, u_ref, n_iter=6000)
    for tol, atol in ((1e-6, 2e-2), (1e-10, 2e-4)):
        s = solve(r, lam, mu=mu, u_ref=u_ref, tol=tol, max_iter=60000, accelerated=accelerated)
        assert s.u.dtype == jnp.float64
        assert int(s.status) == pdhg.CONVERGED
        assert float(s.gap) <= tol
        if accelerated:  # the step sizes were actually adapted (theta < 1)
            assert float(s.tau) < pdhg.DEFAULT_STEP and float(s.sigma) > pdhg.DEFAULT_STEP
        else:
            np.testing.assert_allclose(float(s.tau), pdhg.DEFAULT_STEP, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(s.u), np.asarray(u_star), atol=atol)
        # mu-strong convexity: mu/2 ||u - u*||^2 <= P(u) - P(u*) <= gap
        g, _ = gap_fn(s.u, s.p, r, lam, mu=mu, u_ref=u_ref)
        assert float(jnp.sum((s.u - u_star) ** 2)) <= 2.0 * float(g) / mu * (1 + 1e-3) + 1e-12
    # the mu-term matters: the solution differs from the mu = 0 one
    s0 = solve(r, lam, tol=1e-6, max_iter=60000)
    assert np.abs(np.asarray(s0.u) - np.asarray(s.u)).max() > 0.05


def test_accelerated_variant_converges_in_python_backend(rng):
    r = jnp.asarray(0.8 * rng.standard_normal((12, 12)), jnp.float32)
    u_ref = jnp.asarray(rng.random((12, 12)), jnp.float32)
    sj = solve(r, 0.3, mu=0.5, u_ref=u_ref, tol=1e-5, accelerated=True)
    sp_, _ = pdhg.pdhg_solve_python(r, 0.3, mu=0.5, u_ref=u_ref, tol=1e-5, max_iter=20000,
                                    accelerated=True)
    assert int(sj.status) == int(sp_.status) == pdhg.CONVERGED
    assert int(sj.it) == int(sp_.it)
    np.testing.assert_allclose(np.asarray(sj.u), np.asarray(sp_.u), atol=1e-5)


@pytest.mark.parametrize("isotropic", [True, False])
def test_warm_start_from_converged_state(isotropic, rng):
    r = jnp.asarray(rng.standard_normal((16, 16)), jnp.float32)
    s1 = solve(r, 0.5, tol=1e-5, isotropic=isotropic, check_every=10)
    assert int(s1.status) == pdhg.CONVERGED and int(s1.it) > 10
    s2 = solve(r, 0.5, u0=s1.u, p0=s1.p, tol=1e-5, isotropic=isotropic, check_every=10)
    assert int(s2.status) == pdhg.CONVERGED
    assert int(s2.it) <= 10
    # same objective value (the minimiser of this LP-like problem need not be unique)
    e1 = relaxed_energy(s1.u, r, 0.5, isotropic)
    e2 = relaxed_energy(s2.u, r, 0.5, isotropic)
    assert abs(e1 - e2) <= 1e-5 * float(jnp.sum(jnp.abs(r)))


def test_init_defaults_and_step_sizes(rng):
    r = jnp.asarray(rng.standard_normal((6, 7)), jnp.float32)
    s = pdhg.pdhg_init(r)
    np.testing.assert_array_equal(np.asarray(s.u), (np.asarray(r) < 0).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(s.p), 0.0)
    assert s.p.shape == (2, 6, 7)
    assert int(s.status) == pdhg.RUNNING and int(s.it) == 0
    assert float(s.tau) * float(s.sigma) * ops.GRAD_NORM_SQ_BOUND < 1.0


# --------------------------------------------------------------------------------------
# (h) non-finite input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_r_gives_nonfinite_status(bad, rng):
    r = rng.standard_normal((12, 12)).astype(np.float32)
    r[3, 4] = bad
    s = solve(jnp.asarray(r), 0.3, tol=1e-4)
    assert int(s.status) == pdhg.NONFINITE
    assert int(s.it) == 10  # stops at the first check
    sp_, _ = pdhg.pdhg_solve_python(jnp.asarray(r), 0.3, tol=1e-4)
    assert int(sp_.status) == pdhg.NONFINITE
