r"""Differentiable mask step: gradients through the primal–dual solver.

:func:`relaxed_mask` returns the relaxed minimiser

.. math::

   u^* = \arg\min_{u \in [0,1]^{h\times w}} \lambda\,TV_\varepsilon(u)
         + \sum_i u_i d_{F,i} + (1-u_i) d_{B,i} + \tfrac{\mu}{2}\|u - u_R\|^2

and ``jax.grad`` works with respect to ``d_fg``, ``d_bg``, ``lam``, ``mu`` and ``u_ref`` (and,
by the chain rule, the image and the expert parameters that produced the data terms).

Two modes:

* ``"implicit"`` (default) — the forward pass runs the compiled Chambolle–Pock solver to a tight
  tolerance; a ``jax.custom_vjp`` differentiates the optimality condition at ``u*``. With the
  inactive set ``S = {0 < u* < 1}`` and ``g(u; theta) = grad_u`` of the smooth part of the
  objective, the KKT conditions are ``g_S(u*) = 0`` on ``S`` and ``u*`` fixed at 0 or 1 off ``S``
  (the derivative of the box projection is 1 inside and 0 on the active set; pixels within
  ``active_tol`` of a bound count as active). Hence ``du*_S = -H_SS^{-1} dg_S/dtheta`` with
  ``H = d g / du``, and the backward pass solves ``H_SS w = v_S`` by conjugate gradients (a
  ``lax.while_loop``) and returns ``-vjp_theta(g)(w)``. Memory does not grow with the number
  of solver iterations.
* ``"unrolled"`` — a fixed number of primal–dual iterations under ``lax.scan`` with
  ``jax.checkpoint`` on blocks of ``check_every`` iterations: the exact derivative of what runs,
  memory ``O(iterations / check_every)`` images.

**Non-smoothness.** TV is not differentiable where ``grad u = 0``; both modes use the Huber
smoothing ``TV_eps`` (``eps = smoothing``, default ``1e-2``, :func:`self2seg_jax.ops.tv`), i.e. a
quadratic ``|grad u|^2 / (2 eps)`` below ``eps``. **Without ``mu`` the relaxed problem has
(almost everywhere) binary minimisers** (thresholding theorem): ``u*`` is 0 or 1 on almost every
pixel, the inactive set is a thin band along the edges, and the derivative is zero almost
everywhere — a loss of the mask then only sees changes of the edge pixels. With ``mu > 0`` (the
reference-mask term of eq. (10)) or a larger ``smoothing`` the minimiser is unique and takes
interior values near edges, and the gradient is informative. The CG system is regularised by
``cg_damping`` (relative) so that flat inactive regions without ``mu`` stay solvable.

Shapes: ``d_fg``, ``d_bg``, ``u_ref`` are ``(h, w)``; ``lam``, ``mu`` scalars; output ``(h, w)``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from self2seg_jax import alternating, backend, energy, ops, pdhg


@dataclasses.dataclass(frozen=True)
class MaskOptions:
    """Static options of :func:`relaxed_mask` (hashable; see its arguments)."""

    smoothing: float = 1e-2
    tol: float = 1e-6
    max_iter: int = 20000
    check_every: int = 10
    unroll_iters: int = 1000
    isotropic: bool = True
    active_tol: float = 1e-5
    cg_tol: float = 1e-6
    cg_max_iter: int = 2000
    cg_damping: float = 1e-7

    @property
    def problem(self) -> pdhg.Problem:
        return pdhg.Problem(isotropic=self.isotropic)


def _smooth_grad(u, r, lam, mu, u_ref, eps, isotropic):
    """Gradient in ``u`` of ``lam TV_eps(u) + <r, u> + mu/2 ||u - u_ref||^2``."""
    return jax.grad(
        lambda v: lam * ops.tv(v, isotropic=isotropic, eps=eps)
        + jnp.sum(r * v)
        + 0.5 * mu * jnp.sum((v - u_ref) ** 2)
    )(u)


def _forward(d_fg, d_bg, lam, mu, u_ref, opts: MaskOptions):
    return pdhg.solve(d_fg - d_bg, lam, opts.problem, mu=mu, u_ref=u_ref, tol=opts.tol,
                      max_iter=opts.max_iter, check_every=opts.check_every, eps=opts.smoothing).u


def _cg(matvec, b, tol, max_iter):
    """Conjugate gradients for an SPD ``matvec``; a ``lax.while_loop``."""
    x = jnp.zeros_like(b)
    r = b - matvec(x)
    p = r
    rs = jnp.vdot(r, r)
    b_norm = jnp.sqrt(jnp.vdot(b, b)) + 1e-30

    def cond(c):
        _, _, _, rs, k = c
        return (jnp.sqrt(rs) > tol * b_norm) & (k < max_iter)

    def body(c):
        x, r, p, rs, k = c
        ap = matvec(p)
        alpha = rs / jnp.maximum(jnp.vdot(p, ap), 1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = jnp.vdot(r, r)
        p = r + (rs_new / jnp.maximum(rs, 1e-30)) * p
        return x, r, p, rs_new, k + 1

    x, *_ = lax.while_loop(cond, body, (x, r, p, rs, jnp.asarray(0, jnp.int32)))
    return x


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _implicit(d_fg, d_bg, lam, mu, u_ref, opts):
    return _forward(d_fg, d_bg, lam, mu, u_ref, opts)


def _implicit_fwd(d_fg, d_bg, lam, mu, u_ref, opts):
    u = _forward(d_fg, d_bg, lam, mu, u_ref, opts)
    return u, (u, d_fg, d_bg, lam, mu, u_ref)


def _implicit_bwd(opts, res, v):
    u, d_fg, d_bg, lam, mu, u_ref = res
    eps, iso = opts.smoothing, opts.isotropic
    a = opts.active_tol
    inactive = ((u > a) & (u < 1.0 - a)).astype(u.dtype)

    def g_of_u(w):
        return _smooth_grad(w, d_fg - d_bg, lam, mu, u_ref, eps, iso)

    _, hvp = jax.linearize(g_of_u, u)
    # Damping relative to the largest curvature scale: lam * 8 / eps (TV part) + mu.
    damp = opts.cg_damping * (8.0 * lam / jnp.maximum(eps, 1e-12) + mu)

    def matvec(w):
        w = inactive * w
        return inactive * hvp(w) + damp * w + (1.0 - inactive) * w

    w = _cg(matvec, inactive * v, opts.cg_tol, opts.cg_max_iter)
    w = inactive * w

    def g_of_theta(d_fg, d_bg, lam, mu, u_ref):
        return _smooth_grad(u, d_fg - d_bg, lam, mu, u_ref, eps, iso)

    _, vjp = jax.vjp(g_of_theta, d_fg, d_bg, lam, mu, u_ref)
    return tuple(-c for c in vjp(w))


_implicit.defvjp(_implicit_fwd, _implicit_bwd)


def _unrolled(d_fg, d_bg, lam, mu, u_ref, opts: MaskOptions):
    r = d_fg - d_bg
    prob = opts.problem
    state = pdhg.init_state(r, prob, u0=jnp.full_like(r, 0.5))
    n_blocks = max(1, -(-opts.unroll_iters // opts.check_every))

    @jax.checkpoint
    def block(s, _):
        s = lax.fori_loop(0, opts.check_every, lambda _, t: pdhg.pd_step(
            t, r, lam, prob, mu=mu, u_ref=u_ref, eps=opts.smoothing), s)
        return s, None

    state, _ = lax.scan(block, state, None, length=n_blocks)
    return state.u


def relaxed_mask(
    d_fg: jax.Array,
    d_bg: jax.Array,
    lam: jax.Array | float,
    *,
    mu: jax.Array | float = 0.0,
    u_ref: jax.Array | None = None,
    mode: str = "implicit",
    smoothing: float = 1e-2,
    tol: float = 1e-6,
    max_iter: int = 20000,
    check_every: int = 10,
    unroll_iters: int = 1000,
    isotropic: bool = True,
    active_tol: float = 1e-5,
    cg_tol: float = 1e-6,
    cg_max_iter: int = 2000,
    cg_damping: float = 1e-7,
) -> jax.Array:
    r"""Relaxed Self2Seg mask ``u*`` for data terms ``d_fg``, ``d_bg``; differentiable.

    Minimises ``lam TV_eps(u) + sum u d_fg + (1 - u) d_bg + mu/2 ||u - u_ref||^2`` over
    ``u in [0, 1]^(h x w)`` (see the module docstring for the modes and the treatment of the
    box constraint and of TV's non-smooth points). ``jax.jit``, ``jax.vmap`` and ``jax.grad``
    compose with it.

    Args:
      d_fg, d_bg: ``(h, w)`` data terms (e.g. ``(f - D_F(f))**2``).
      lam: TV weight (> 0).
      mu: reference-mask weight (>= 0); ``u_ref`` defaults to zeros.
      mode: ``"implicit"`` or ``"unrolled"``.
      smoothing: Huber smoothing ``eps`` of TV (> 0 for ``"implicit"``).
      tol, max_iter, check_every: forward solver tolerance (relative gap) and caps.
      unroll_iters: iterations of the ``"unrolled"`` mode.
      active_tol: pixels within this distance of 0 or 1 count as on the box constraint.
      cg_tol, cg_max_iter, cg_damping: backward conjugate-gradient options (implicit mode).

    Returns:
      ``(h, w)`` relaxed mask in ``[0, 1]``.
    """
    d_fg = jnp.asarray(d_fg)
    d_bg = jnp.asarray(d_bg, d_fg.dtype)
    if d_fg.ndim != 2 or d_fg.shape != d_bg.shape:
        raise ValueError(
            f"d_fg and d_bg must be 2-D arrays of the same shape, got {d_fg.shape} and {d_bg.shape}"
        )
    if mode not in ("implicit", "unrolled"):
        raise ValueError(f"mode must be 'implicit' or 'unrolled', got {mode!r}")
    if mode == "implicit" and not smoothing > 0:
        raise ValueError("implicit mode needs smoothing > 0 (TV is not differentiable at 0)")
    dtype = d_fg.dtype
    lam = jnp.asarray(lam, dtype)
    mu = jnp.asarray(mu, dtype)
    u_ref = jnp.zeros_like(d_fg) if u_ref is None else jnp.asarray(u_ref, dtype)
    opts = MaskOptions(
        smoothing=float(smoothing), tol=float(tol), max_iter=int(max_iter),
        check_every=int(check_every), unroll_iters=int(unroll_iters), isotropic=bool(isotropic),
        active_tol=float(active_tol), cg_tol=float(cg_tol), cg_max_iter=int(cg_max_iter),
        cg_damping=float(cg_damping),
    )
    return _solve(d_fg, d_bg, lam, mu, u_ref, mode=mode, opts=opts)


@backend.jit(static_argnames=("mode", "opts"))
def _solve(d_fg, d_bg, lam, mu, u_ref, *, mode, opts):
    if mode == "implicit":
        return _implicit(d_fg, d_bg, lam, mu, u_ref, opts)
    return _unrolled(d_fg, d_bg, lam, mu, u_ref, opts)


def scheme_fixed_outer(
    key: jax.Array,
    f: jax.Array,
    w0: jax.Array,
    labels0: jax.Array,
    hyper: alternating.Hyper,
    spec: alternating.Spec,
    *,
    n_outer: int = 3,
    mode: str = "implicit",
    smoothing: float = 1e-2,
    **mask_options,
) -> tuple[jax.Array, jax.Array]:
    r"""The two-class alternating scheme with a fixed number of outer iterations,
    differentiable in ``hyper.lam``, ``hyper.mu`` and ``f``.

    The outer loop is a ``lax.scan`` of ``n_outer`` iterations; each u-step is
    :func:`relaxed_mask` (``mode``), so ``jax.grad`` of a loss of the returned relaxed mask works
    end to end. **What is differentiated:** the u-steps (through the data terms, ``lam``, ``mu``
    and the reference mask ``u_ref = u_prev`` of eq. (10)). **What is not:** expert training —
    the experts' outputs and the region weights handed to the next W-step are wrapped in
    ``lax.stop_gradient`` (differentiating through hundreds of unrolled Adam steps of a CNN is
    memory-hungry and of little use for tuning ``lam``/``mu``); the gradient with respect to
    ``f`` therefore flows through the residuals ``f - D(f)`` only.

    Args are those of :func:`self2seg_jax.alternating.run` (a two-class ``spec``), plus
    ``mode``/``smoothing``/``mask_options`` for :func:`relaxed_mask`.

    Returns:
      ``(u, den)``: the final relaxed foreground mask ``(h, w)`` and the expert outputs
      ``(2, h, w)`` (background, foreground).
    """
    if spec.num_classes != 2:
        raise ValueError("scheme_fixed_outer is the two-class scheme (spec with two classes)")
    state = alternating.init_state(key, f, w0, labels0, spec)
    f_const = lax.stop_gradient(f)

    def body(carry, _):
        s, u_prev = carry
        ws = alternating.w_step(s, f_const, hyper, spec)
        ws = ws._replace(den=lax.stop_gradient(ws.den))
        pred = lax.stop_gradient(alternating.predictions(ws.params, ws.den, f_const, spec))
        d = energy.data_terms(f, pred, filter_size=spec.data_filter)
        u = relaxed_mask(d[1], d[0], hyper.lam, mu=hyper.mu, u_ref=u_prev, mode=mode,
                         smoothing=smoothing, isotropic=spec.isotropic_tv, **mask_options)
        labels = lax.stop_gradient(u >= hyper.threshold).astype(jnp.int32)
        s = s._replace(params=ws.params, den=ws.den, key=ws.key, labels=labels,
                       w=energy.one_hot(labels, 2, f.dtype))
        return (s, u), None

    (s, u), _ = lax.scan(body, (state, state.u.astype(f.dtype)), None, length=n_outer)
    return u, s.den
