"""self2seg_jax.pdhg: the one Chambolle–Pock loop for the BOX (two classes) and SIMPLEX (C
classes) relaxations: optimality against exact LPs (anisotropic TV), duality gap, trivial limits,
compiled loop vs a Python-loop driver, stopping rule and status codes, thresholding theorem,
the reference term and the accelerated variant (vs an independent solver), warm start, N-D
grids with spacing, and the C=2 SIMPLEX == BOX identity (also with mu > 0)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax import lax
from scipy.optimize import linprog

from self2seg_jax import energy, ops, pdhg
from self2seg_jax.pdhg import BOX, SIMPLEX, Problem

DEFAULT = Problem()
ANISO = Problem(isotropic=False)

_solve_jit = jax.jit(pdhg.solve, static_argnames=("prob", "max_iter", "check_every"))


def solve(r, lam, prob=DEFAULT, *, mu=0.0, u_ref=None, u0=None, p0=None, tol=1e-4,
          max_iter=20000, check_every=10, eps=0.0):
    """pdhg.solve, jitted; the optional arrays are always passed explicitly (with the documented
    defaults: u_ref = 0 is inert at mu = 0, u0 = the pointwise minimiser, p0 = 0) so that one
    compilation per shape and problem serves every test."""
    r = jnp.asarray(r)
    dt = r.dtype
    u_ref = jnp.zeros_like(r) if u_ref is None else u_ref
    u0 = prob.relaxation.vertex(-r) if u0 is None else u0
    p0 = tuple(jnp.zeros_like(u0) for _ in range(prob.ndim)) if p0 is None else p0
    return _solve_jit(r, jnp.asarray(lam, dt), prob, mu=jnp.asarray(mu, dt), u_ref=u_ref, u0=u0,
                      p0=p0, tol=jnp.asarray(tol, dt), max_iter=max_iter,
                      check_every=check_every, eps=jnp.asarray(eps, dt))


def solve_python(r, lam, prob=DEFAULT, *, mu=0.0, u_ref=None, u0=None, p0=None, tol=1e-4,
                 max_iter=3000, check_every=10, eps=0.0):
    """The Python-loop driver (the removed debug backend): pdhg.pd_step one iteration at a
    time, pdhg.relative_gap every ``check_every``. Returns ``(state, history)`` with history a
    list of ``(it, rel_gap, objective)``."""
    r = jnp.asarray(r)
    dt = r.dtype
    lam, mu, eps = (jnp.asarray(v, dt) for v in (lam, mu, eps))
    kw = dict(mu=mu, u_ref=u_ref, eps=eps)
    step = jax.jit(lambda s: pdhg.pd_step(s, r, lam, prob, **kw))
    rel_gap = jax.jit(lambda s: pdhg.relative_gap(s, r, lam, prob, **kw))
    objective = jax.jit(lambda u: pdhg.objective(u, r, lam, prob, **kw))
    state = pdhg.init_state(r, prob, u0=u0, p0=p0)
    history = []

    def done(status, rel):
        return state._replace(gap=jnp.asarray(rel, dt), status=jnp.asarray(status, jnp.int32))

    for _ in range(max(1, -(-max_iter // check_every))):
        for _ in range(check_every):
            state = step(state)
        rel = float(rel_gap(state))
        history.append((int(state.it), rel, float(objective(state.u))))
        if not (math.isfinite(rel) and bool(jnp.all(jnp.isfinite(state.u)))):
            return done(pdhg.NONFINITE, rel), history
        if rel <= tol:
            return done(pdhg.CONVERGED, rel), history
    return done(pdhg.MAX_ITER, rel), history


def gap_of(u, p, r, lam, prob=DEFAULT, *, mu=0.0, u_ref=None, eps=0.0):
    """pdhg.relative_gap of an arbitrary pair (u, p)."""
    s = pdhg.init_state(r, prob, u0=u, p0=p)
    return float(_rel_gap_jit(s, r, jnp.asarray(lam, r.dtype), prob, mu=jnp.asarray(mu, r.dtype),
                              u_ref=jnp.zeros_like(r) if u_ref is None else u_ref,
                              eps=jnp.asarray(eps, r.dtype)))


_rel_gap_jit = jax.jit(pdhg.relative_gap, static_argnames="prob")
_objective_jit = jax.jit(pdhg.objective, static_argnames="prob")
_tv = jax.jit(ops.tv, static_argnames=("ndim", "spacing", "isotropic"))
_energy = jax.jit(energy.energy, static_argnames=("ndim", "spacing", "isotropic"))
_labels_energy = jax.jit(energy.labels_energy, static_argnames=("ndim", "spacing", "isotropic"))


def objective(u, r, lam, prob=DEFAULT, *, mu=0.0, u_ref=None, eps=0.0):
    dt = r.dtype
    return float(_objective_jit(u, r, jnp.asarray(lam, dt), prob, mu=jnp.asarray(mu, dt),
                                u_ref=u_ref, eps=jnp.asarray(eps, dt)))


def two_class(v):
    return jnp.stack([1.0 - v, v])




# --------------------------------------------------------------------------------------
# exact LPs (anisotropic TV)
# --------------------------------------------------------------------------------------


def _diff_matrix(h, w):
    """Forward differences (Neumann: only inner pairs) of an h x w grid, (m, n) sparse."""
    idx = np.arange(h * w).reshape(h, w)
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
    return sp.csr_matrix((vals, (rows, cols)), shape=(k, h * w))


def anisotropic_tv_lp(r: np.ndarray, lam: float) -> float:
    """min_u lam*sum|grad u|_1 + <r, u>, u in [0,1], as an LP in (u, t): -t <= D u <= t."""
    h, w = r.shape
    n = h * w
    D = _diff_matrix(h, w)
    m = D.shape[0]
    eye = sp.identity(m, format="csr")
    A = sp.vstack([sp.hstack([D, -eye]), sp.hstack([-D, -eye])]).tocsr()
    c = np.concatenate([r.ravel().astype(np.float64), lam * np.ones(m)])
    res = linprog(c, A_ub=A, b_ub=np.zeros(2 * m), bounds=[(0, 1)] * n + [(0, None)] * m,
                  method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


def simplex_anisotropic_tv_lp(d: np.ndarray, lam: float) -> float:
    """min_u <d, u> + lam/2 sum_i |D u_i|_1 over u >= 0, sum_i u_i = 1 (eq. (13)) as an LP."""
    c_, h, w = d.shape
    n = h * w
    D = _diff_matrix(h, w)
    m = D.shape[0]
    Du = sp.block_diag([D] * c_)
    eye = sp.identity(c_ * m, format="csr")
    A = sp.vstack([sp.hstack([Du, -eye]), sp.hstack([-Du, -eye])]).tocsr()
    A_eq = sp.hstack([sp.hstack([sp.identity(n)] * c_), sp.csr_matrix((n, c_ * m))]).tocsr()
    cost = np.concatenate([d.reshape(-1).astype(np.float64), 0.5 * lam * np.ones(c_ * m)])
    res = linprog(cost, A_ub=A, b_ub=np.zeros(2 * c_ * m), A_eq=A_eq, b_eq=np.ones(n),
                  bounds=[(0, 1)] * (c_ * n) + [(0, None)] * (c_ * m), method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


def _box_dual_value(p, r):
    """D(p) = min_{u in [0,1]} <r - div p, u> = -sum max(div p - r, 0), for p in the lam-ball:
    a lower bound of the optimum (independent of pdhg's gap code)."""
    z = np.asarray(ops.div(p), np.float64) - np.asarray(r, np.float64)
    return -float(np.sum(np.maximum(z, 0.0)))


@pytest.mark.parametrize("seed,shape,lam", [(0, (8, 8), 0.5), (1, (8, 8), 0.2), (2, (6, 10), 0.8)])
def test_anisotropic_solution_matches_lp_optimum(seed, shape, lam):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(shape).astype(np.float32)
    opt = anisotropic_tv_lp(r, lam)
    tol = 1e-6
    rj = jnp.asarray(r)
    s = solve(rj, lam, ANISO, tol=tol)
    assert int(s.status) == pdhg.CONVERGED
    assert float(s.gap) <= tol
    e = objective(s.u, rj, lam, ANISO)
    assert e == pytest.approx(float(lam * _tv(s.u, isotropic=False) + jnp.sum(rj * s.u)), rel=1e-6)
    assert abs(e - opt) <= 1e-3 * abs(opt)
    # The gap is a certificate: D(p) <= opt <= P(u) and (P(u) - D(p)) / scale = s.gap.
    assert max(float(jnp.max(jnp.abs(c))) for c in s.p) <= lam * (1 + 1e-6)
    dual = _box_dual_value(s.p, r)
    slack = 1e-5 * abs(opt)
    assert e >= opt - slack  # a feasible u cannot beat the LP optimum
    assert dual <= opt + slack  # the dual value is a lower bound
    scale = float(np.sum(np.abs(r))) + lam * float(_tv(s.u, isotropic=False))
    assert (e - dual) / scale == pytest.approx(float(s.gap), rel=1e-2, abs=1e-7)
    assert gap_of(s.u, s.p, rj, lam, ANISO) == pytest.approx(float(s.gap), rel=1e-4, abs=1e-9)


def test_anisotropic_lp_float64(x64):
    rng = np.random.default_rng(5)
    r = rng.standard_normal((7, 9))
    lam = 0.4
    opt = anisotropic_tv_lp(r, lam)
    rj = jnp.asarray(r, jnp.float64)
    s = solve(rj, lam, ANISO, tol=1e-9, max_iter=60000)
    assert s.u.dtype == jnp.float64 and all(c.dtype == jnp.float64 for c in s.p)
    assert int(s.status) == pdhg.CONVERGED
    e = float(lam * _tv(s.u, isotropic=False) + jnp.sum(rj * s.u))
    assert abs(e - opt) <= 1e-6 * abs(opt)
    assert _box_dual_value(s.p, r) <= opt + 1e-9 * abs(opt)


@pytest.mark.parametrize("c,lam", [(3, 0.6), (4, 0.3)])
def test_simplex_anisotropic_solution_matches_lp_optimum(c, lam, x64):
    d = np.random.default_rng(c).standard_normal((c, 5, 6))
    opt = simplex_anisotropic_tv_lp(d, lam)
    prob = Problem(SIMPLEX, isotropic=False)
    dj = jnp.asarray(d)
    s = solve(dj, lam, prob, tol=1e-9, max_iter=60000)
    assert int(s.status) == pdhg.CONVERGED
    u = np.asarray(s.u)
    np.testing.assert_allclose(u.sum(0), 1.0, atol=1e-12)
    assert u.min() >= 0.0
    e = float(_energy(s.u, dj, lam, isotropic=False))
    assert e == pytest.approx(objective(s.u, dj, lam, prob), rel=1e-12)
    assert e >= opt - 1e-9 * abs(opt)
    assert abs(e - opt) <= 1e-6 * abs(opt)


@pytest.mark.parametrize("prob",
                         [Problem(), ANISO, Problem(SIMPLEX), Problem(SIMPLEX, isotropic=False)],
                         ids=["box-iso", "box-aniso", "simplex-iso", "simplex-aniso"])
def test_gap_is_nonnegative_for_feasible_pairs(prob, rng):
    """Weak duality: gap(u, p) >= 0 for every u in A and p in the (w lam)-ball, for mu = 0 and
    mu > 0, plain and Huber TV."""
    shape = (12, 12) if prob.relaxation is BOX else (3, 12, 12)
    r = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    u_ref = prob.relaxation.project(jnp.asarray(rng.random(shape), jnp.float32))
    lam = 0.3
    bound = prob.relaxation.weight * lam / 2  # per component: |p|_2 <= w lam / sqrt(2)
    for _ in range(4):
        u = prob.relaxation.project(jnp.asarray(2 * rng.random(shape) - 0.5, jnp.float32))
        p = tuple(jnp.clip(jnp.asarray(2 * rng.standard_normal(shape), jnp.float32), -bound, bound)
                  for _ in range(2))
        for mu in (0.0, 0.7):
            for eps in (0.0, 0.05):
                g = gap_of(u, p, r, lam, prob, mu=mu, u_ref=u_ref, eps=eps)
                assert g >= -1e-5, (mu, eps)
                assert g > 1e-4  # a random pair is not optimal


# --------------------------------------------------------------------------------------
# trivial limits
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("isotropic", [True, False])
def test_tiny_lam_gives_sign_of_r(isotropic, rng):
    sign = np.where(rng.random((12, 12)) < 0.5, -1.0, 1.0)
    r = (sign * (0.1 + np.abs(rng.standard_normal((12, 12))))).astype(np.float32)
    u0 = jnp.full(r.shape, 0.5, jnp.float32)  # do not start at the answer
    s = solve(jnp.asarray(r), 1e-6, Problem(isotropic=isotropic), u0=u0, tol=1e-6)
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


def test_simplex_small_lambda_gives_pointwise_argmin(rng):
    d = jnp.asarray(rng.normal(size=(4, 12, 12)), jnp.float32)
    u0 = jnp.full(d.shape, 0.25, jnp.float32)  # do not start at the answer
    s = solve(d, 1e-4, Problem(SIMPLEX), u0=u0, tol=1e-6, max_iter=5000)
    assert int(s.status) == pdhg.CONVERGED
    np.testing.assert_array_equal(np.asarray(jnp.argmax(s.u, 0)), np.asarray(jnp.argmin(d, 0)))
    np.testing.assert_array_equal(np.asarray(SIMPLEX.labels(s.u, 0.5)),
                                  np.asarray(jnp.argmin(d, 0)))


# --------------------------------------------------------------------------------------
# compiled loop vs Python-loop driver; feasibility, status codes, history
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("isotropic", [True, False])
def test_compiled_and_python_loop_agree(isotropic, rng):
    r = jnp.asarray(rng.standard_normal((12, 12)) * 0.5, jnp.float32)
    prob = Problem(isotropic=isotropic)
    sj = solve(r, 0.3, prob, tol=1e-4)
    sp_, hist = solve_python(r, 0.3, prob, tol=1e-4, max_iter=20000)
    assert int(sj.it) == int(sp_.it) == hist[-1][0]
    assert int(sj.status) == int(sp_.status) == pdhg.CONVERGED
    np.testing.assert_allclose(np.asarray(sj.u), np.asarray(sp_.u), atol=1e-5)
    for a, b in zip(sj.p, sp_.p, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert float(sj.gap) == pytest.approx(float(sp_.gap), rel=1e-3)


def test_compiled_and_python_loop_agree_simplex_3d(rng):
    d = jnp.asarray(rng.standard_normal((3, 4, 5, 6)) * 0.5, jnp.float32)
    prob = Problem(SIMPLEX, ndim=3, spacing=(2.0, 1.0, 1.0))
    sj = solve(d, 0.4, prob, tol=1e-4)
    sp_, hist = solve_python(d, 0.4, prob, tol=1e-4, max_iter=20000)
    assert int(sj.status) == int(sp_.status) == pdhg.CONVERGED
    assert int(sj.it) == int(sp_.it) == hist[-1][0]
    np.testing.assert_allclose(np.asarray(sj.u), np.asarray(sp_.u), atol=1e-5)


@pytest.mark.parametrize("isotropic", [True, False])
@pytest.mark.parametrize("shape,lam,tol", [((16, 16), 0.5, 1e-4), ((12, 20), 0.1, 1e-5)])
def test_solution_is_feasible_and_converged(shape, lam, tol, isotropic, rng):
    r = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    s = solve(r, lam, Problem(isotropic=isotropic), tol=tol)
    u = np.asarray(s.u)
    assert u.shape == shape
    assert isinstance(s.p, tuple) and len(s.p) == 2 and all(c.shape == shape for c in s.p)
    assert u.min() >= 0.0 and u.max() <= 1.0
    assert int(s.status) == pdhg.CONVERGED
    assert 0.0 <= float(s.gap) <= tol
    assert int(s.it) % 10 == 0 and 0 < int(s.it) <= 20000
    # dual feasibility
    p = [np.asarray(c) for c in s.p]
    if isotropic:
        assert np.sqrt(p[0] ** 2 + p[1] ** 2).max() <= lam * (1 + 1e-5)
    else:
        assert max(np.abs(c).max() for c in p) <= lam * (1 + 1e-6)


def test_max_iter_status(rng):
    r = jnp.asarray(rng.standard_normal((16, 16)), jnp.float32)
    s = solve(r, 0.5, tol=1e-12, max_iter=45, check_every=10)
    assert int(s.status) == pdhg.MAX_ITER
    assert int(s.it) == 50  # rounded up to a multiple of check_every
    assert float(s.gap) > 1e-12
    assert pdhg.STATUS_NAMES[int(s.status)] == "max_iter"
    sp_, hist = solve_python(r, 0.5, tol=1e-12, max_iter=45, check_every=10)
    assert int(sp_.status) == pdhg.MAX_ITER and int(sp_.it) == 50 and len(hist) == 5


def test_python_history_gap_decreases(rng):
    r = jnp.asarray(rng.standard_normal((12, 12)) * 0.5, jnp.float32)
    tol = 1e-5
    s, hist = solve_python(r, 0.3, ANISO, tol=tol, max_iter=5000, check_every=10)
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
    # the recorded objective is the primal objective of the returned u
    e = float(0.3 * _tv(s.u, isotropic=False) + jnp.sum(r * s.u))
    assert hist[-1][2] == pytest.approx(e, rel=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("relax", ["box", "simplex"])
def test_nonfinite_r_gives_nonfinite_status(bad, relax, rng):
    shape = (12, 12) if relax == "box" else (3, 12, 12)
    prob = Problem(BOX if relax == "box" else SIMPLEX)
    r = rng.standard_normal(shape).astype(np.float32)
    r[(Ellipsis, 3, 4)] = bad
    u0 = jnp.full(shape, 0.5 if relax == "box" else 1 / 3, jnp.float32)
    s = solve(jnp.asarray(r), 0.3, prob, u0=u0, tol=1e-4)
    assert int(s.status) == pdhg.NONFINITE
    assert int(s.it) == 10  # stops at the first check
    sp_, _ = solve_python(jnp.asarray(r), 0.3, prob, u0=u0, tol=1e-4)
    assert int(sp_.status) == pdhg.NONFINITE and int(sp_.it) == 10


# --------------------------------------------------------------------------------------
# thresholding theorem (paper Thm 4)
# --------------------------------------------------------------------------------------


def _two_phase_problem(seed=1, n=24):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    gt = (yy - n / 2) ** 2 + (xx - n / 2 + 1) ** 2 < (n / 3.5) ** 2
    f = (0.3 + 0.4 * gt + 0.15 * rng.standard_normal((n, n))).astype(np.float32)
    return jnp.asarray((f - 0.7) ** 2), jnp.asarray((f - 0.3) ** 2)


@pytest.mark.parametrize(
    "isotropic,lam,rtol", [(False, 0.02, 1e-3), (False, 0.1, 1e-3), (True, 0.05, 2e-2)]
)
def test_thresholding_theorem(isotropic, lam, rtol):
    d_fg, d_bg = _two_phase_problem()
    d = jnp.stack([d_bg, d_fg])
    r = BOX.linear_term(d)
    np.testing.assert_array_equal(np.asarray(r), np.asarray(d_fg - d_bg))
    s = solve(r, lam, Problem(isotropic=isotropic), tol=1e-6)
    assert int(s.status) == pdhg.CONVERGED
    e_relaxed = float(_energy(two_class(s.u), d, lam, isotropic=isotropic))
    scale = float(jnp.sum(jnp.abs(r)) + lam * _tv(s.u, isotropic=isotropic))
    gap_abs = float(s.gap) * scale
    u = np.asarray(s.u)
    assert ((u > 0.05) & (u < 0.95)).mean() < 0.1  # nearly binary
    for tau in (0.1, 0.3, 0.5, 0.7, 0.9):
        labels = BOX.labels(s.u, jnp.float32(tau))
        np.testing.assert_array_equal(np.asarray(labels), (u >= tau).astype(np.int32))
        e_bin = float(_labels_energy(labels, d, lam, isotropic=isotropic))
        assert abs(e_bin - e_relaxed) <= rtol * abs(e_relaxed), tau
        # a binary mask is admissible, so it cannot beat the relaxed minimum (up to the gap)
        assert e_bin >= e_relaxed - gap_abs - 1e-5 * abs(e_relaxed), tau


# --------------------------------------------------------------------------------------
# reference term (mu > 0), accelerated variant, warm start
# --------------------------------------------------------------------------------------


def _dual_fista_reference(r, lam, mu, u_ref, n_iter=4000):
    """Independent solver of the mu-strongly convex BOX problem: FISTA on the smooth dual.

    D(p) = min_{u in [0,1]} <grad u, p> + <r, u> + mu/2 ||u - u_ref||^2 has gradient grad u(p)
    with u(p) = clip(u_ref + (div p - r) / mu), Lipschitz constant 8 / mu.
    """
    step = mu / ops.grad_norm_sq_bound(2)

    def u_of(p):
        return jnp.clip(u_ref + (ops.div(p) - r) / mu, 0.0, 1.0)

    def body(k, c):
        p, q, t = c
        g = ops.grad(u_of(q))
        p_new = ops.project_dual_ball(tuple(a + step * b for a, b in zip(q, g, strict=True)), lam)
        t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        q = tuple(a + ((t - 1) / t_new) * (a - b) for a, b in zip(p_new, p, strict=True))
        return p_new, q, t_new

    p0 = (jnp.zeros_like(r), jnp.zeros_like(r))
    p, _, _ = jax.jit(lambda c: lax.fori_loop(0, n_iter, body, c))((p0, p0, jnp.ones((), r.dtype)))
    return u_of(p)


@pytest.mark.parametrize("accelerated", [True, False])
def test_mu_variant_matches_independent_solver(x64, accelerated):
    rng = np.random.default_rng(7)
    r = jnp.asarray(0.8 * rng.standard_normal((16, 16)), jnp.float64)
    u_ref = jnp.asarray(rng.random((16, 16)), jnp.float64)
    lam, mu = 0.3, 1.0
    prob = Problem(accelerated=accelerated)
    u_star = _dual_fista_reference(r, lam, mu, u_ref, n_iter=6000)
    step0 = pdhg.step_size(2)
    for tol, atol in ((1e-6, 2e-2), (1e-10, 2e-4)):
        s = solve(r, lam, prob, mu=mu, u_ref=u_ref, tol=tol, max_iter=60000)
        assert s.u.dtype == jnp.float64
        assert int(s.status) == pdhg.CONVERGED
        assert float(s.gap) <= tol
        if accelerated:  # the step sizes were actually adapted (theta < 1)
            assert float(s.tau) < step0 and float(s.sigma) > step0
            assert float(s.tau) * float(s.sigma) == pytest.approx(step0**2, rel=1e-9)
        else:
            np.testing.assert_allclose(float(s.tau), step0, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(s.u), np.asarray(u_star), atol=atol)
        # mu-strong convexity: mu/2 ||u - u*||^2 <= P(u) - P(u*) <= gap
        scale = float(jnp.sum(jnp.abs(r)) + lam * _tv(s.u))
        g = float(s.gap) * scale
        assert float(jnp.sum((s.u - u_star) ** 2)) <= 2.0 * g / mu * (1 + 1e-3) + 1e-12
    # the mu-term matters: the solution differs from the mu = 0 one
    s0 = solve(r, lam, tol=1e-6, max_iter=60000)
    assert np.abs(np.asarray(s0.u) - np.asarray(s.u)).max() > 0.05


def test_accelerated_variant_converges_in_python_loop(rng):
    r = jnp.asarray(0.8 * rng.standard_normal((12, 12)), jnp.float32)
    u_ref = jnp.asarray(rng.random((12, 12)), jnp.float32)
    prob = Problem(accelerated=True)
    sj = solve(r, 0.3, prob, mu=0.5, u_ref=u_ref, tol=1e-5)
    sp_, _ = solve_python(r, 0.3, prob, mu=0.5, u_ref=u_ref, tol=1e-5, max_iter=20000)
    assert int(sj.status) == int(sp_.status) == pdhg.CONVERGED
    assert int(sj.it) == int(sp_.it)
    np.testing.assert_allclose(np.asarray(sj.u), np.asarray(sp_.u), atol=1e-5)
    # and it reaches the solution of the plain variant: by mu-strong convexity both are within
    # sqrt(2 gap / mu) of the minimiser
    s1 = solve(r, 0.3, Problem(), mu=0.5, u_ref=u_ref, tol=1e-6)
    assert int(s1.status) == pdhg.CONVERGED

    def dist(s):
        return math.sqrt(2 * float(s.gap) * float(jnp.sum(jnp.abs(r)) + 0.3 * _tv(s.u)) / 0.5)

    assert float(jnp.linalg.norm(sj.u - s1.u)) <= dist(sj) + dist(s1) + 1e-5
    assert float(jnp.linalg.norm(sj.u - s1.u)) < 0.1


def test_accelerated_simplex_agrees_with_plain(x64, rng):
    d = jnp.asarray(rng.normal(size=(3, 8, 9)))
    u_ref = ops.project_simplex(jnp.asarray(rng.uniform(size=d.shape)), axis=0)
    a = solve(d, 0.5, Problem(SIMPLEX, accelerated=True), mu=0.8, u_ref=u_ref, tol=1e-8,
              max_iter=60000)
    b = solve(d, 0.5, Problem(SIMPLEX), mu=0.8, u_ref=u_ref, tol=1e-12, max_iter=60000)
    assert int(a.status) == int(b.status) == pdhg.CONVERGED
    assert float(a.tau) < pdhg.step_size(2) < float(a.sigma)
    np.testing.assert_allclose(np.asarray(a.u), np.asarray(b.u), atol=2e-3)
    # strong convexity (modulus w mu = 0.4): ||u - u*||^2 <= 2 gap / (w mu)
    scale = float(jnp.sum(jnp.max(d, 0) - jnp.min(d, 0)) + 0.25 * jnp.sum(_tv(a.u)))
    assert float(jnp.sum((a.u - b.u) ** 2)) <= 2 * float(a.gap) * scale / 0.4 * 1.01 + 1e-12


@pytest.mark.parametrize("isotropic", [True, False])
def test_warm_start_from_converged_state(isotropic, rng):
    r = jnp.asarray(rng.standard_normal((16, 16)), jnp.float32)
    prob = Problem(isotropic=isotropic)
    s1 = solve(r, 0.5, prob, tol=1e-5, check_every=10)
    assert int(s1.status) == pdhg.CONVERGED and int(s1.it) > 10
    s2 = solve(r, 0.5, prob, u0=s1.u, p0=s1.p, tol=1e-5, check_every=10)
    assert int(s2.status) == pdhg.CONVERGED
    assert int(s2.it) <= 10
    # same objective value (the minimiser of this LP-like problem need not be unique)
    e1 = objective(s1.u, r, 0.5, prob)
    e2 = objective(s2.u, r, 0.5, prob)
    assert abs(e1 - e2) <= 1e-5 * float(jnp.sum(jnp.abs(r)))


def test_init_defaults_and_step_sizes(rng):
    r = jnp.asarray(rng.standard_normal((6, 7)), jnp.float32)
    s = pdhg.init_state(r, Problem())
    np.testing.assert_array_equal(np.asarray(s.u), (np.asarray(r) < 0).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(s.u_bar), np.asarray(s.u))
    assert len(s.p) == 2 and all(c.shape == (6, 7) for c in s.p)
    for c in s.p:
        np.testing.assert_array_equal(np.asarray(c), 0.0)
    assert int(s.status) == pdhg.RUNNING and int(s.it) == 0
    assert float(s.tau) * float(s.sigma) * ops.grad_norm_sq_bound(2) < 1.0
    assert float(s.tau) == pytest.approx(0.99 / math.sqrt(8), rel=1e-6)
    # SIMPLEX: the pointwise argmin class, 3-D dual with spacing-dependent steps
    d = jnp.asarray(rng.standard_normal((3, 4, 5, 6)), jnp.float32)
    sp3 = (2.0, 1.0, 0.5)
    s3 = pdhg.init_state(d, Problem(SIMPLEX, ndim=3, spacing=sp3))
    np.testing.assert_array_equal(np.asarray(jnp.argmax(s3.u, 0)), np.asarray(jnp.argmin(d, 0)))
    np.testing.assert_array_equal(np.asarray(s3.u).sum(0), 1.0)
    assert len(s3.p) == 3 and all(c.shape == d.shape for c in s3.p)
    assert float(s3.tau) == pytest.approx(pdhg.step_size(3, sp3), rel=1e-6)
    assert pdhg.step_size(3, sp3) ** 2 * ops.grad_norm_sq_bound(3, sp3) < 1.0


def test_relaxations_and_problem_are_static():
    assert pdhg.relaxation_for(2) is BOX
    assert pdhg.relaxation_for(3) is SIMPLEX and pdhg.relaxation_for(5) is SIMPLEX
    assert BOX.weight == 1.0 and SIMPLEX.weight == 0.5
    p = Problem(SIMPLEX, 3, (2.0, 1.0, 1.0))
    q = Problem(SIMPLEX, 3, (2.0, 1.0, 1.0))
    assert hash(p) == hash(q) and p == q and p != Problem(SIMPLEX, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.ndim = 2  # frozen
    v = jnp.asarray([[0.2, 0.7], [0.5, 0.0]], jnp.float32)
    probs = BOX.probabilities(v)
    np.testing.assert_allclose(np.asarray(probs), np.asarray(two_class(v)))
    np.testing.assert_array_equal(np.asarray(BOX.from_probabilities(probs)), np.asarray(v))
    np.testing.assert_array_equal(np.asarray(BOX.labels(v, 0.5)), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(np.asarray(SIMPLEX.labels(probs, 0.5)), [[0, 1], [0, 0]])


# --------------------------------------------------------------------------------------
# SIMPLEX: N-D optimality, and C = 2 SIMPLEX == BOX (the redesign's weight 1/2)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mu", [0.0, 0.7])
def test_simplex_two_classes_equals_box(mu, x64, rng):
    """For two classes the SIMPLEX problem (TV and reference term weighted 1/2) has the BOX
    minimiser: u_simplex = (1 - u_box, u_box), also with the reference term mu > 0."""
    d = jnp.asarray(rng.normal(size=(2, 20, 18)) * 0.3)
    v_ref = jnp.asarray(rng.uniform(size=(20, 18)))
    lam = 0.2
    kw = dict(mu=mu, u_ref=v_ref) if mu else {}
    kw_s = dict(mu=mu, u_ref=two_class(v_ref)) if mu else {}
    r = BOX.linear_term(d)
    b = solve(r, lam, Problem(BOX), tol=1e-10, max_iter=30000, **kw)
    m = solve(SIMPLEX.linear_term(d), lam, Problem(SIMPLEX), tol=1e-10, max_iter=30000, **kw_s)
    assert int(b.status) == int(m.status) == pdhg.CONVERGED
    np.testing.assert_allclose(np.asarray(m.u[1]), np.asarray(b.u), atol=1e-5)
    np.testing.assert_allclose(np.asarray(m.u[0]), 1.0 - np.asarray(b.u), atol=1e-5)
    if mu:  # interior values: the reference term is active, not a thresholded solution
        assert ((np.asarray(b.u) > 0.05) & (np.asarray(b.u) < 0.95)).mean() > 0.05
    e_kw = dict(mu=mu, u_ref=two_class(v_ref)) if mu else {}
    e_b = float(_energy(two_class(b.u), d, lam, **e_kw))
    e_m = float(_energy(m.u, d, lam, **e_kw))
    assert e_m == pytest.approx(e_b, abs=1e-7)
    # and the BOX objective is that energy minus the constant sum d_0
    assert objective(b.u, r, lam, Problem(BOX), **kw) == pytest.approx(
        e_b - float(jnp.sum(d[0])), abs=1e-7)


@pytest.mark.parametrize("mu", [0.0, 0.2])
def test_simplex_solver_3d_optimality(mu, x64, rng):
    """Converged gap, simplex feasibility, and no random feasible perturbation does better."""
    d = jnp.asarray(rng.normal(size=(3, 5, 8, 7)))
    u_ref = ops.project_simplex(jnp.asarray(rng.uniform(size=d.shape)), axis=0)
    spacing = (2.0, 1.0, 1.0)
    prob = Problem(SIMPLEX, ndim=3, spacing=spacing)
    s = solve(d, 0.6, prob, mu=mu, u_ref=u_ref, tol=1e-9, max_iter=40000)
    assert int(s.status) == pdhg.CONVERGED and float(s.gap) <= 1e-9
    u = np.asarray(s.u)
    np.testing.assert_allclose(u.sum(0), 1.0, atol=1e-9)
    assert u.min() >= 0
    assert len(s.p) == 3

    @jax.jit
    def energies(vs):
        return jax.vmap(lambda v: energy.energy(v, d, 0.6, mu=mu, u_ref=u_ref, ndim=3,
                                                spacing=spacing))(vs)

    e0 = float(energies(s.u[None])[0])
    assert e0 == pytest.approx(objective(s.u, d, 0.6, prob, mu=mu, u_ref=u_ref), rel=1e-12)
    dv = jnp.asarray(np.stack([np.random.default_rng(k).normal(size=d.shape) for k in range(20)]))
    perturbed = jax.vmap(lambda x: ops.project_simplex(s.u + 0.05 * x, axis=0))(dv)
    assert np.all(np.asarray(energies(perturbed)) >= e0 - 1e-8)
    # the spacing matters: (u, p) is far from optimal for the unit-grid problem
    assert gap_of(s.u, s.p, d, 0.6, Problem(SIMPLEX, ndim=3), mu=mu, u_ref=u_ref) > 1e-4


@pytest.mark.parametrize("mu", [0.0, 0.4])
def test_objective_is_energy_minus_constant_for_two_classes(mu, rng):
    """pdhg.objective(BOX) = energy.energy(u, d) - sum d_0; pdhg.objective(SIMPLEX) = energy."""
    d = jnp.asarray(rng.random((2, 7, 8)), jnp.float32)
    v = jnp.asarray(rng.random((7, 8)), jnp.float32)
    v_ref = jnp.asarray(rng.random((7, 8)), jnp.float32)
    lam = 0.35
    for iso in (True, False):
        e = float(_energy(two_class(v), d, lam, mu=mu, u_ref=two_class(v_ref), isotropic=iso))
        ob = objective(v, BOX.linear_term(d), lam, Problem(isotropic=iso), mu=mu, u_ref=v_ref)
        assert ob == pytest.approx(e - float(jnp.sum(d[0])), rel=1e-5, abs=1e-5)
        os_ = objective(two_class(v), d, lam, Problem(SIMPLEX, isotropic=iso), mu=mu,
                        u_ref=two_class(v_ref))
        assert os_ == pytest.approx(e, rel=1e-5)
    # three classes: objective(SIMPLEX) = energy, by hand
    d3 = jnp.asarray(rng.random((3, 7, 8)), jnp.float32)
    u3 = ops.project_simplex(jnp.asarray(rng.random((3, 7, 8)), jnp.float32), axis=0)
    u3_ref = ops.project_simplex(jnp.asarray(rng.random((3, 7, 8)), jnp.float32), axis=0)
    o3 = objective(u3, d3, lam, Problem(SIMPLEX), mu=mu, u_ref=u3_ref)
    hand = (float(jnp.sum(u3 * d3)) + 0.5 * lam * float(jnp.sum(_tv(u3)))
            + 0.25 * mu * float(jnp.sum((u3 - u3_ref) ** 2)))
    assert o3 == pytest.approx(hand, rel=1e-5)
    assert float(_energy(u3, d3, lam, mu=mu, u_ref=u3_ref)) == pytest.approx(hand, rel=1e-5)


def test_objective_with_huber_smoothing(rng):
    r = jnp.asarray(rng.standard_normal((6, 7)), jnp.float32)
    v = jnp.asarray(rng.random((6, 7)), jnp.float32)
    o = objective(v, r, 0.4, Problem(), eps=0.1)
    ref = 0.4 * float(_tv(v, eps=0.1)) + float(jnp.sum(r * v))
    assert o == pytest.approx(ref, rel=1e-5)
    assert o < objective(v, r, 0.4, Problem())  # Huber TV is below TV


def test_huber_solution_converges_and_is_smoother(rng):
    """eps > 0 (used by self2seg_jax.diff): the solver still converges (gap of the smoothed
    problem), the solution has more interior values than the eps = 0 one, and is optimal for
    the smoothed objective among random feasible perturbations."""
    d_fg, d_bg = _two_phase_problem(n=16)
    r = d_fg - d_bg
    s = solve(r, 0.1, tol=1e-6, eps=0.5)
    s0 = solve(r, 0.1, tol=1e-6)
    assert int(s.status) == int(s0.status) == pdhg.CONVERGED
    frac = lambda u: float(jnp.mean((u > 0.05) & (u < 0.95)))  # noqa: E731
    assert frac(s.u) > frac(s0.u)
    e0 = objective(s.u, r, 0.1, eps=0.5)
    for k in range(5):
        dv = jnp.asarray(np.random.default_rng(k).normal(size=r.shape), jnp.float32) * 0.05
        assert objective(jnp.clip(s.u + dv, 0, 1), r, 0.1, eps=0.5) >= e0 - 1e-4


# --------------------------------------------------------------------------------------
# banded iterations (Problem.block_pixels)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,classes,kw", [
    ((120, 37), 0, {}),
    ((120, 37), 0, {"accelerated": True}),
    ((120, 37), 0, {"isotropic": False}),
    ((101, 23), 0, {"spacing": (2.0, 1.0)}),
    ((150, 9, 11), 0, {}),
    ((130, 20), 3, {}),
])
def test_banded_iterations_equal_whole_array_iterations(shape, classes, kw, rng):
    """Bands with halos give the whole-array iterates (information moves one row per
    iteration): same iteration count, same u and p, for 2-D, 3-D, simplex, accelerated steps,
    anisotropic TV, non-unit spacing, the reference term and Huber smoothing."""
    rel = SIMPLEX if classes else BOX
    r = jnp.asarray(rng.normal(size=((classes,) if classes else ()) + shape), jnp.float32)
    prob = Problem(relaxation=rel, ndim=len(shape), **kw)
    row = int(np.prod(r.shape)) // shape[0]
    # cores of 11 rows (images), 22 slices (volumes: the fewest they are banded with)
    banded = dataclasses.replace(prob, block_pixels=row * (33 if len(shape) == 2 else 44))
    layout = pdhg._band_layout(banded, r.shape, 10)
    assert layout is not None and len(layout[4]) >= 3  # really banded
    assert sorted(set(range(shape[0]))) == sorted(
        {i for s0 in layout[4] for i in range(s0, s0 + layout[2])})  # cores cover every row
    kws = dict(mu=0.05, u_ref=rel.vertex(-r), tol=1e-6, max_iter=300, eps=0.01)
    a = jax.jit(lambda r: pdhg.solve(r, 0.3, prob, **kws))(r)
    b = jax.jit(lambda r: pdhg.solve(r, 0.3, banded, **kws))(r)
    assert int(a.it) == int(b.it) and int(a.status) == int(b.status)
    np.testing.assert_allclose(np.asarray(b.u), np.asarray(a.u), atol=1e-6)
    for pa, pb in zip(a.p, b.p, strict=True):
        np.testing.assert_allclose(np.asarray(pb), np.asarray(pa), atol=1e-6)
    np.testing.assert_allclose(float(b.tau), float(a.tau), rtol=1e-6)


def test_band_layout_falls_back_on_small_images():
    """No bands without block_pixels or when fewer than three bands would fit."""
    assert pdhg._band_layout(Problem(), (4096, 4096), 10) is None
    assert pdhg._band_layout(Problem(block_pixels=2**18), (128, 128), 10) is None
    ax, rows, core, halo, starts = pdhg._band_layout(Problem(block_pixels=2**18), (2048, 2048),
                                                     10)
    assert (ax, rows, halo) == (0, 2048, 11) and (core + 2 * halo) * 2048 <= 2**18
    assert starts[-1] == rows - core and all(b > a for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("shape,banded", [((100, 256, 256), False), ((128, 128, 128), False),
                                          ((120, 80, 80), False), ((256, 64, 64), True),
                                          ((256, 72, 72), True)])
def test_volumes_are_banded_only_with_cores_of_two_halos(shape, banded):
    """Volumes: bands only when each holds at least ``2 * halo`` core slices (with fewer, the
    halo slices' redundant work made the CPU mask step 1.6-3x slower: bench_pd_bands.py)."""
    layout = pdhg._band_layout(Problem(ndim=3, block_pixels=2**18), shape, 10)
    assert (layout is not None) == banded
    if banded:
        assert layout[2] >= 2 * layout[3]
    # the rule is the volumes': images keep their bands down to core = halo rows
    assert pdhg._band_layout(Problem(block_pixels=2**18), (8192, 8192), 10) is not None
