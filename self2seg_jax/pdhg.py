r"""Primal–dual (Chambolle–Pock) solver for the mask step, for any number of classes.

For fixed experts the mask step minimises, over an admissible set ``A`` (paper §4.1 and §6.1),

.. math::

   \min_{u \in A} \; w\lambda \sum_k TV(u_k) + \langle r, u\rangle
        + \tfrac{w\mu}{2}\|u - u_R\|^2 ,

given by a :class:`Relaxation` — the one place where the class count enters:

* :data:`BOX` (two classes): ``u`` is the foreground probability ``(*s)`` in ``[0, 1]``,
  ``r = d_1 - d_0``, weight ``w = 1`` — eq. (5) up to the constant ``sum d_0`` (Alg. 2/4);
* :data:`SIMPLEX` (``C`` classes): ``u`` is ``(C, *s)`` on the probability simplex at every
  point, ``r = d``, ``w = 1/2`` (each interface appears in two classes' TV) — eq. (13).

For two classes both give the same minimiser (``u_simplex = (1 - u_box, u_box)``); the box
form is half the memory and has a cheaper projection, so it is the one used.

Saddle-point form ``min_u max_p <grad u, p> + G(u) - F*(p)``, ``F* = indicator{|p| <= w lam}``;
one iteration (``tau = sigma = 0.99 / ||grad||`` so that ``tau sigma ||grad||^2 < 1``):

.. math::

   p^{n+1} &= P_{w\lambda}\big((p^n + \sigma \nabla \bar u^n)
              / (1 + \sigma\varepsilon/(w\lambda))\big) \\
   u^{n+1} &= P_A\big((u^n + \tau(\mathrm{div}\,p^{n+1} + w\mu u_R - r)) / (1 + \tau w\mu)\big) \\
   \bar u^{n+1} &= u^{n+1} + \theta (u^{n+1} - u^n)

with ``theta = 1`` or, ``accelerated``, ``theta = 1/sqrt(1 + 2 w mu tau)``, ``tau <- theta tau``,
``sigma <- sigma / theta`` (Chambolle & Pock's Alg. 2 for the strongly convex ``G``; the paper's
Alg. 4 with its typos corrected). ``eps > 0`` Huber-smooths TV (used by
:mod:`self2seg_jax.diff`). Stopping: the primal–dual gap

.. math::

   \mathrm{gap} = P(u) + G^*(\mathrm{div}\,p) \ge 0, \quad
   G^*(z) = \max_{v \in A} \langle z - r, v\rangle - \tfrac{w\mu}{2}\|v - u_R\|^2 ,

every ``check_every`` iterations, relative to ``sum_x spread(r)(x) + w lam sum_k TV(u_k)``; the
loop ends when it is below ``tol``, at ``max_iter`` or on a non-finite value (``status``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from self2seg_jax import ops

RUNNING, CONVERGED, MAX_ITER, NONFINITE = 0, 1, 2, 3
STATUS_NAMES = {RUNNING: "running", CONVERGED: "converged", MAX_ITER: "max_iter",
                NONFINITE: "nonfinite"}


@dataclasses.dataclass(frozen=True)
class Relaxation:
    """Admissible set of the relaxed mask and how class data enter it (static, hashable).

    Attributes:
      name: ``"box"`` or ``"simplex"``.
      weight: ``w`` of the module docstring (TV and reference term).
      project: Euclidean projection onto ``A``.
      vertex: ``argmax_{v in A} <y, v>`` (a vertex of ``A``), for the dual value at ``mu = 0``.
      linear_term: class data terms ``(C, *s)`` -> ``r``.
      spread: ``r`` -> per-point ``max_i d_i - min_i d_i`` (scale of the gap).
      probabilities: ``u`` -> ``(C, *s)`` class probabilities.
      from_probabilities: inverse of ``probabilities``.
    """

    name: str
    weight: float
    project: Callable
    vertex: Callable
    linear_term: Callable
    spread: Callable
    probabilities: Callable
    from_probabilities: Callable

    def labels(self, u: jax.Array, threshold) -> jax.Array:
        """Integer labels of a relaxed ``u``: ``u >= threshold`` (box, Theorem 4) or the most
        probable class (simplex)."""
        if self.name == "box":
            return (u >= threshold).astype(jnp.int32)
        return jnp.argmax(u, axis=0).astype(jnp.int32)


BOX = Relaxation(
    name="box", weight=1.0, project=ops.project_box,
    vertex=lambda y: (y > 0).astype(y.dtype),
    linear_term=lambda d: d[1] - d[0],
    spread=jnp.abs,
    probabilities=lambda u: jnp.stack([1.0 - u, u]),
    from_probabilities=lambda p: p[1],
)
SIMPLEX = Relaxation(
    name="simplex", weight=0.5, project=lambda v: ops.project_simplex(v, axis=0),
    vertex=lambda y: jax.nn.one_hot(jnp.argmax(y, axis=0), y.shape[0], axis=0, dtype=y.dtype),
    linear_term=lambda d: d,
    spread=lambda r: jnp.max(r, axis=0) - jnp.min(r, axis=0),
    probabilities=lambda u: u,
    from_probabilities=lambda p: p,
)


def relaxation_for(num_classes: int) -> Relaxation:
    """:data:`BOX` for two classes, :data:`SIMPLEX` otherwise."""
    return BOX if num_classes == 2 else SIMPLEX


class PDState(NamedTuple):
    """Solver state (a pytree); ``it``/``status`` int32 scalars, the rest float."""

    u: jax.Array  # primal, (*s) for BOX or (C, *s) for SIMPLEX
    u_bar: jax.Array  # extrapolated primal
    p: tuple  # dual field, ndim components shaped like u
    tau: jax.Array
    sigma: jax.Array
    it: jax.Array
    gap: jax.Array  # last relative primal-dual gap
    status: jax.Array


def step_size(ndim: int = 2, spacing=None) -> float:
    """``0.99 / sqrt(||grad||^2 bound)``: ``tau = sigma`` with ``tau sigma ||grad||^2 < 1``."""
    return 0.99 / math.sqrt(ops.grad_norm_sq_bound(ndim, spacing))


@dataclasses.dataclass(frozen=True)
class Problem:
    """The static description of one mask-step problem (hashable).

    ``block_pixels > 0``: run the iterations between two gap checks band by band along the first
    spatial axis (:func:`blocked_steps`), each band about this many pixels including its halos,
    when the image is larger than two bands — the same iterates, computed in cache-sized pieces
    (an iteration is several passes over memory on XLA:CPU; ``benchmarks/bench_pd_bands.py``:
    149 Mpixel-iterations/s on a whole 2048^2 image, 658 on 512^2, 340 at 2048^2 in bands).
    0: whole arrays (accelerators, sharded images).
    """

    relaxation: Relaxation = BOX
    ndim: int = 2
    spacing: tuple | None = None
    isotropic: bool = True
    accelerated: bool = False
    block_pixels: int = 0


def init_state(r: jax.Array, prob: Problem, *, u0=None, p0=None) -> PDState:
    """Initial state: ``u0`` (default: the pointwise minimiser, a vertex of ``A``), ``p0``
    (default 0)."""
    dtype = r.dtype
    u = prob.relaxation.vertex(-r) if u0 is None else jnp.asarray(u0, dtype)
    p = tuple(jnp.zeros_like(u) for _ in range(prob.ndim)) if p0 is None else tuple(p0)
    step = jnp.asarray(step_size(prob.ndim, prob.spacing), dtype)
    return PDState(u=u, u_bar=u, p=p, tau=step, sigma=step, it=jnp.asarray(0, jnp.int32),
                   gap=jnp.asarray(jnp.inf, dtype), status=jnp.asarray(RUNNING, jnp.int32))


def pd_step(s: PDState, r, lam, prob: Problem, *, mu=0.0, u_ref=None, eps=0.0) -> PDState:
    """One Chambolle–Pock iteration (pure); formulas in the module docstring."""
    w = prob.relaxation.weight
    radius, mu_w = w * lam, w * mu
    tau, sigma = s.tau, s.sigma
    g = ops.grad(s.u_bar, prob.ndim, prob.spacing)
    shrink = 1.0 / (1.0 + sigma * eps / radius)
    p = ops.project_dual_ball(tuple((a + sigma * b) * shrink for a, b in zip(s.p, g)), radius,
                              isotropic=prob.isotropic)
    drift = -r if u_ref is None else mu_w * u_ref - r
    v = (s.u + tau * (ops.div(p, prob.spacing) + drift)) / (1.0 + tau * mu_w)
    u = prob.relaxation.project(v)
    theta = lax.rsqrt(1.0 + 2.0 * mu_w * tau) if prob.accelerated else jnp.ones_like(tau)
    return s._replace(u=u, u_bar=u + theta * (u - s.u), p=p, tau=theta * tau,
                      sigma=sigma / theta, it=s.it + 1)


def _band_layout(prob: Problem, shape: tuple, n_steps: int):
    """``(axis, rows, core, halo, starts)`` of :func:`blocked_steps` for arrays of ``shape``, or
    ``None`` when blocking does not pay: no ``block_pixels``, fewer than three bands, or a
    volume whose bands would hold fewer than ``2 * halo`` core slices.

    Volumes: a band's halo is ``2 * halo`` whole slices, so with large slices the redundant
    halo work outweighs the cache gain (``benchmarks/results/pd_bands_s20/``, 2-core CPU,
    B = 2^18, bands over whole arrays: 100 x 256 x 256 0.32x and 128^3 0.56x with cores of 11
    slices, 120 x 80 x 80 / 200 x 96 x 96 0.97x / 0.99x with 18 / 11, 0.98x-1.36x with cores of
    28-61 slices). Images keep bands down to ``core = halo``: 4096^2 1.61x, 6144^2 (cores of 20
    rows) 1.51x, but 8192^2, whose core is forced up to ``halo`` = 11 rows, 0.83x
    (``pd_bands_s20/images_544d813.json``; 1.27x in an earlier scratch run)."""
    if prob.block_pixels <= 0:
        return None
    ax = len(shape) - prob.ndim
    rows, row_pixels = shape[ax], math.prod(shape[:ax] + shape[ax + 1:])
    halo = n_steps + 1  # an iteration reads one row beyond each side along the axis
    budget = prob.block_pixels // max(row_pixels, 1) - 2 * halo
    if prob.ndim >= 3 and budget < 2 * halo:
        return None
    core = max(halo, budget)
    if rows < 3 * (core + 2 * halo):
        return None
    n = -(-rows // core)
    starts = tuple(min(b * core, rows - core) for b in range(n))
    return ax, rows, core, halo, starts


def blocked_steps(s: PDState, r, lam, prob: Problem, n_steps: int, **kw) -> PDState:
    """``n_steps`` iterations of :func:`pd_step`, band by band along the first spatial axis.

    Each band's core rows are computed from a window with ``n_steps + 1`` halo rows on either
    side (cut from the previous state; at the image border the window ends there): information
    moves one row per iteration, so the core comes out as the whole-image iterates would (equal
    up to float rounding). The state's scalars evolve alike in every band. Falls back to plain
    iterations when :func:`_band_layout` says blocking does not pay."""
    layout = _band_layout(prob, s.u.shape, n_steps)
    if layout is None:
        return lax.fori_loop(0, n_steps, lambda _, t: pd_step(t, r, lam, prob, **kw), s)
    ax, rows, core, halo, starts = layout
    win = core + 2 * halo
    u_ref = kw.pop("u_ref", None)
    arrays = (s.u, s.u_bar) + tuple(s.p)

    def band(b, carry):
        out, _ = carry  # the scalars: the same after every band
        cs = jnp.asarray(starts, jnp.int32)[b]
        ws = jnp.clip(cs - halo, 0, rows - win)
        cut = functools.partial(lax.dynamic_slice_in_dim, start_index=ws, slice_size=win,
                                axis=ax)
        rr = cut(r)  # r (and u_ref) are shaped like u for both relaxations
        ur = None if u_ref is None else cut(u_ref)
        t = s._replace(u=cut(s.u), u_bar=cut(s.u_bar), p=tuple(cut(q) for q in s.p))
        t = lax.fori_loop(0, n_steps, lambda _, t: pd_step(t, rr, lam, prob, u_ref=ur, **kw), t)
        done = (t.u, t.u_bar) + tuple(t.p)
        out = tuple(lax.dynamic_update_slice_in_dim(
            o, lax.dynamic_slice_in_dim(d, cs - ws, core, axis=ax), cs, axis=ax)
            for o, d in zip(out, done))
        return out, (t.tau, t.sigma)

    out, (tau, sigma) = lax.fori_loop(0, len(starts), band, (arrays, (s.tau, s.sigma)))
    return s._replace(u=out[0], u_bar=out[1], p=tuple(out[2:]), tau=tau, sigma=sigma,
                      it=s.it + n_steps)


def objective(u, r, lam, prob: Problem, *, mu=0.0, u_ref=None, eps=0.0) -> jax.Array:
    """The primal objective ``P(u)`` of the module docstring."""
    w = prob.relaxation.weight
    tv_u = jnp.sum(ops.tv(u, prob.ndim, prob.spacing, isotropic=prob.isotropic, eps=eps))
    e = w * lam * tv_u + jnp.sum(r * u)
    if u_ref is not None:
        e = e + 0.5 * w * mu * jnp.sum((u - u_ref) ** 2)
    return e


def relative_gap(s: PDState, r, lam, prob: Problem, *, mu=0.0, u_ref=None, eps=0.0) -> jax.Array:
    """Primal–dual gap of ``(s.u, s.p)`` divided by the scale of the module docstring."""
    w = prob.relaxation.weight
    u_ref = jnp.zeros_like(r) if u_ref is None else u_ref
    mu_w = w * mu
    tv_u = jnp.sum(ops.tv(s.u, prob.ndim, prob.spacing, isotropic=prob.isotropic, eps=eps))
    primal = w * lam * tv_u + jnp.sum(r * s.u) + 0.5 * mu_w * jnp.sum((s.u - u_ref) ** 2)
    z = ops.div(s.p, prob.spacing) - r
    safe_mu = jnp.where(mu_w > 0, mu_w, 1.0)
    v = jnp.where(mu_w > 0, prob.relaxation.project(u_ref + z / safe_mu), prob.relaxation.vertex(z))
    conj = jnp.sum(z * v - 0.5 * mu_w * (v - u_ref) ** 2)
    conj = conj + 0.5 * eps / (w * lam) * sum(jnp.sum(q * q) for q in s.p)
    scale = jnp.sum(prob.relaxation.spread(r)) + w * lam * tv_u + 1e-12
    return (primal + conj) / scale


def solve(r: jax.Array, lam, prob: Problem = Problem(), *, mu=0.0, u_ref=None, u0=None, p0=None,
          tol=1e-4, max_iter: int = 3000, check_every: int = 10, eps=0.0) -> PDState:
    """Run Chambolle–Pock in a ``lax.while_loop`` until the relative gap is below ``tol``.

    Jit-compatible: ``prob``, ``max_iter``, ``check_every`` are static; ``lam``, ``mu``,
    ``tol``, ``eps`` may be traced. Warm-start with ``u0``/``p0`` from a previous solve.

    Args:
      r: linear term, ``(*s)`` (:data:`BOX`) or ``(C, *s)`` (:data:`SIMPLEX`); see
        ``prob.relaxation.linear_term``.
      lam: TV weight (> 0).
      prob: :class:`Problem` (relaxation, grid, TV kind, accelerated steps).
      mu, u_ref: reference term (ignored when ``u_ref`` is None).
      u0, p0: warm start (``p0`` a tuple of ``prob.ndim`` arrays shaped like ``u0``).
      tol: relative primal–dual gap tolerance.
      max_iter: iteration cap (rounded up to a multiple of ``check_every``).
      eps: Huber smoothing of TV (0 = the paper's problem).

    Returns:
      Final :class:`PDState`; ``status`` is CONVERGED, MAX_ITER or NONFINITE.
    """
    r = jnp.asarray(r)
    dtype = r.dtype
    lam, mu, tol, eps = (jnp.asarray(v, dtype) for v in (lam, mu, tol, eps))
    n_checks = max(1, -(-max_iter // check_every))
    kw = dict(mu=mu, u_ref=u_ref, eps=eps)

    def cond(carry):
        s, k = carry
        return (s.status == RUNNING) & (k < n_checks)

    def body(carry):
        s, k = carry
        s = blocked_steps(s, r, lam, prob, check_every, **kw)
        rel = relative_gap(s, r, lam, prob, **kw)
        finite = jnp.isfinite(rel) & jnp.all(jnp.isfinite(s.u))
        status = jnp.select([~finite, rel <= tol, k + 1 >= n_checks],
                            [NONFINITE, CONVERGED, MAX_ITER], RUNNING).astype(jnp.int32)
        return s._replace(gap=rel, status=status), k + 1

    s0 = init_state(r, prob, u0=u0, p0=p0)
    state, _ = lax.while_loop(cond, body, (s0, jnp.asarray(0, jnp.int32)))
    return state
