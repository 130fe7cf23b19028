r"""The Self2Seg alternating scheme (paper Algorithms 1 and 3) as one compiled while-loop.

Outer iteration ``k`` (state holds the mask ``m_{k-1}``, the relaxed ``u``, the dual ``p`` and
the experts):

1. **W-step** — train the foreground / background experts on the region weights
   (``m_{k-1}`` and ``1 - m_{k-1}``; at ``k = 1`` with box initialisation, the boxes);
2. data terms ``d_F = [K (f - D_F f)]^2``, ``d_B = [K (f - D_B f)]^2``;
3. **u-step** — Chambolle–Pock on ``lam TV(u) + <d_F - d_B, u> (+ mu/2 ||u - u_R||^2)``,
   warm-started from the previous ``u`` and dual (``u_R`` = previous relaxed ``u``);
4. threshold ``m_k = 1{u >= threshold}`` (Theorem 4) and record the energy
   ``E_k = E(m_k, W_k)`` of eq. (5);
5. stop when the mask changes on at most ``mask_tol`` of the pixels, when the paper's
   energy-decrease rule fires (the decrease ``E_{k-1} - E_k`` is below ``energy_p`` times the
   previous decrease, or the energy rises), at ``max_outer``, or on a non-finite value /
   an empty or full mask.

With exactly minimised experts (constant, linear least squares) ``E_k`` is non-increasing
(Remark 1), up to the primal–dual tolerance and the isotropic-TV thresholding slack.

The whole scheme, expert training included, is :func:`run_scheme`, a single ``jax.jit``
whose static argument is the hashable :class:`SchemeStatic`; everything one may sweep
(``lam``, ``mu``, learning rate, tolerances, threshold) is a traced :class:`Hyper`, so a
new image of the same shape, a new key or a new ``lam`` does not recompile, and ``vmap``
over images, keys or ``Hyper`` works.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from self2seg_jax import energy, experts, pdhg

# Status codes of the outer loop.
RUNNING, CONVERGED, ENERGY_RULE, MAX_OUTER, NONFINITE, DEGENERATE = 0, 1, 2, 3, 4, 5
STATUS_NAMES = {
    RUNNING: "running",
    CONVERGED: "converged (mask unchanged)",
    ENERGY_RULE: "stopped by the energy-decrease rule",
    MAX_OUTER: "max_outer reached",
    NONFINITE: "non-finite values",
    DEGENERATE: "mask became empty or full",
}


class Hyper(NamedTuple):
    """Traced (sweepable, vmappable) numbers of the scheme; all float32 scalars."""

    lam: jax.Array
    mu: jax.Array
    learning_rate: jax.Array
    pd_tol: jax.Array
    mask_tol: jax.Array
    energy_p: jax.Array
    threshold: jax.Array


@dataclasses.dataclass(frozen=True)
class SchemeStatic:
    """Static (shape-defining, hashable) part of the configuration."""

    fg: experts.TrainConfig
    bg: experts.TrainConfig
    data_filter: int = 1
    max_outer: int = 10
    warm_start: bool = True
    pd_max_iter: int = 3000
    pd_check_every: int = 10
    pd_accelerated: bool = False
    isotropic_tv: bool = True
    stack_experts: bool = False
    progress: bool = False
    blind_spot: bool = False


class SchemeState(NamedTuple):
    """Carry of the outer ``lax.while_loop`` (a pytree)."""

    u: jax.Array  # (h, w) relaxed mask of the last u-step
    p: jax.Array  # (2, h, w) dual of the last u-step
    mask: jax.Array  # (h, w) float 0/1 mask m_k
    w_fg: jax.Array  # (h, w) training weight of the foreground expert
    w_bg: jax.Array  # (h, w) training weight of the background expert
    params: tuple  # (params_fg, params_bg)
    den: jax.Array  # (2, h, w) expert outputs D_F(f), D_B(f) of the last W-step
    key: jax.Array
    it: jax.Array  # () outer iterations done
    energies: jax.Array  # (max_outer,) E_k, NaN where not reached
    changes: jax.Array  # (max_outer,) fraction of pixels whose label changed
    pd_iters: jax.Array  # (max_outer,) primal-dual iterations per u-step
    train_steps: jax.Array  # (max_outer, 2) Adam steps of the two experts
    status: jax.Array  # () status code


def _fit_both(keys, params, f, w_fg, w_bg, hyper: Hyper, st: SchemeStatic):
    """W-step for both experts: ``vmap`` over the stacked pair when they are the same kind."""
    lr = hyper.learning_rate
    if not st.warm_start:
        params = (
            experts.init_params(keys[0], st.fg) if st.fg.kind == "n2f" else params[0],
            experts.init_params(keys[1], st.bg) if st.bg.kind == "n2f" else params[1],
        )
    if st.stack_experts and st.fg == st.bg:
        stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params[0], params[1])
        new, den, steps = jax.vmap(lambda p, w: experts.fit_expert(p, f, w, lr, st.fg))(
            stacked, jnp.stack([w_fg, w_bg])
        )
        new = (jax.tree.map(lambda a: a[0], new), jax.tree.map(lambda a: a[1], new))
        return new, den, steps
    pf, df, sf = experts.fit_expert(params[0], f, w_fg, lr, st.fg)
    pb, db, sb = experts.fit_expert(params[1], f, w_bg, lr, st.bg)
    return (pf, pb), jnp.stack([df, db]), jnp.stack([sf, sb])


def _progress_print(it, e, change, pd_it, steps):
    import sys

    print(
        f"[self2seg] outer {int(it)}: energy {float(e):.6g}, mask change {float(change):.4%}, "
        f"pd iters {int(pd_it)}, train steps {[int(s) for s in steps]}",
        file=sys.stderr,
        flush=True,
    )


PROGRESS_HOOK = [None]
"""A callable ``hook(it, energy, change, pd_iters, train_steps)`` called from inside the
compiled loop (``jax.debug.callback``) when ``SchemeStatic.progress`` is set; ``None`` prints
one line per outer iteration to stderr."""


def _progress(*args):
    hook = PROGRESS_HOOK[0] or _progress_print
    hook(*args)


class WStep(NamedTuple):
    """Output of the W-step of one outer iteration (see :func:`w_step`)."""

    params: tuple  # (params_fg, params_bg)
    den: jax.Array  # (2, h, w) expert outputs
    steps: jax.Array  # (2,) Adam steps
    key: jax.Array  # carried key after the split


def w_step(s: SchemeState, f: jax.Array, hyper: Hyper, st: SchemeStatic) -> WStep:
    """The W-step of outer iteration ``s.it + 1``: train both experts on ``s.w_fg, s.w_bg``.

    It does not depend on ``hyper.lam``, ``mu`` or the tolerances (only on the learning rate),
    so a lambda sweep from a common start can share the first one (:func:`run_scheme_sweep`).
    """
    key, k_fg, k_bg = jax.random.split(s.key, 3)
    params, den, steps = _fit_both((k_fg, k_bg), s.params, f, s.w_fg, s.w_bg, hyper, st)
    return WStep(params, den, steps, key)


def stop_rule(energies, k, e, change, finite, degenerate, hyper: Hyper, max_outer: int):
    """Record ``E_k = e`` and decide the status after outer iteration ``k + 1`` (0-based ``k``).

    In order: non-finite, degenerate (an empty class), mask converged (``change <= mask_tol``),
    the paper's energy-decrease rule (decrease below ``energy_p`` x the previous decrease, or a
    rise; from the third iteration), ``max_outer``. Shared by the two-class and multi-class
    schemes. Returns ``(energies, status)``.
    """
    energies = energies.at[k].set(e)
    prev = jnp.where(k >= 1, energies[jnp.maximum(k - 1, 0)], jnp.inf)
    prev2 = jnp.where(k >= 2, energies[jnp.maximum(k - 2, 0)], jnp.inf)
    dec, prev_dec = prev - e, prev2 - prev
    energy_stop = (k >= 2) & (hyper.energy_p > 0) & ((dec < hyper.energy_p * prev_dec) | (dec < 0))
    status = jnp.select(
        [~finite, degenerate, change <= hyper.mask_tol, energy_stop, k + 1 >= max_outer],
        [NONFINITE, DEGENERATE, CONVERGED, ENERGY_RULE, MAX_OUTER],
        RUNNING,
    ).astype(jnp.int32)
    return energies, status


def outer_step(s: SchemeState, f: jax.Array, hyper: Hyper, st: SchemeStatic) -> SchemeState:
    """One outer iteration (W-step, u-step, threshold, bookkeeping). Pure."""
    return u_step(s, w_step(s, f, hyper, st), f, hyper, st)


def data_predictions(params, den: jax.Array, f: jax.Array, st: SchemeStatic) -> jax.Array:
    """The expert predictions the data terms compare with ``f``: the outputs ``den`` (paper),
    or with ``st.blind_spot`` the experts' blind-spot predictions
    (:func:`self2seg_jax.experts.blind_spot_output`), ``(2, h, w)``."""
    if not st.blind_spot:
        return den
    return jnp.stack([
        experts.blind_spot_output(params[0], f, st.fg, den[0]),
        experts.blind_spot_output(params[1], f, st.bg, den[1]),
    ])


def u_step(s: SchemeState, w: WStep, f: jax.Array, hyper: Hyper, st: SchemeStatic) -> SchemeState:
    """The rest of an outer iteration after the W-step ``w``: u-step, threshold, stop rules."""
    params, den, steps, key = w
    d = energy.data_term(f, data_predictions(params, den, f, st), filter_size=st.data_filter)  # (2, h, w)
    r = d[0] - d[1]
    sol = pdhg.pdhg_solve(
        r,
        hyper.lam,
        mu=hyper.mu,
        u_ref=s.u,
        u0=s.u,
        p0=s.p,
        tol=hyper.pd_tol,
        max_iter=st.pd_max_iter,
        check_every=st.pd_check_every,
        isotropic=st.isotropic_tv,
        accelerated=st.pd_accelerated,
    )
    mask = (sol.u >= hyper.threshold).astype(f.dtype)
    e = energy.joint_energy(mask, d[0], d[1], hyper.lam, isotropic=st.isotropic_tv)
    change = jnp.mean(jnp.abs(mask - s.mask))
    frac = jnp.mean(mask)
    finite = jnp.isfinite(e) & jnp.all(jnp.isfinite(den)) & (sol.status != pdhg.NONFINITE)
    energies, status = stop_rule(
        s.energies, s.it, e, change, finite, (frac == 0) | (frac == 1), hyper, st.max_outer
    )
    k = s.it
    if st.progress:
        jax.debug.callback(_progress, k + 1, e, change, sol.it, steps, ordered=True)
    return SchemeState(
        u=sol.u,
        p=sol.p,
        mask=mask,
        w_fg=mask,
        w_bg=1.0 - mask,
        params=params,
        den=den,
        key=key,
        it=k + 1,
        energies=energies,
        changes=s.changes.at[k].set(change),
        pd_iters=s.pd_iters.at[k].set(sol.it),
        train_steps=s.train_steps.at[k].set(steps),
        status=status,
    )


def init_state(key, f, w_fg, w_bg, u0, st: SchemeStatic) -> SchemeState:
    """Initial carry: masks/weights from the initialisation, fresh expert parameters."""
    key, k_fg, k_bg = jax.random.split(key, 3)
    dtype = f.dtype
    n = st.max_outer
    return SchemeState(
        u=u0,
        p=jnp.zeros((2,) + f.shape, dtype),
        mask=(u0 >= 0.5).astype(dtype),
        w_fg=w_fg,
        w_bg=w_bg,
        params=(experts.init_params(k_fg, st.fg), experts.init_params(k_bg, st.bg)),
        den=jnp.zeros((2,) + f.shape, dtype),
        key=key,
        it=jnp.asarray(0, jnp.int32),
        energies=jnp.full((n,), jnp.nan, dtype),
        changes=jnp.full((n,), jnp.nan, dtype),
        pd_iters=jnp.zeros((n,), jnp.int32),
        train_steps=jnp.zeros((n, 2), jnp.int32),
        status=jnp.asarray(RUNNING, jnp.int32),
    )


TRACE_COUNT = [0]
"""Incremented each time :func:`run_scheme` is traced (used by the no-recompilation test)."""


def _run_scheme(key, f, w_fg, w_bg, u0, hyper: Hyper, st: SchemeStatic) -> SchemeState:
    TRACE_COUNT[0] += 1
    state = init_state(key, f, w_fg, w_bg, u0, st)
    return lax.while_loop(
        lambda s: s.status == RUNNING, lambda s: outer_step(s, f, hyper, st), state
    )


run_scheme = jax.jit(_run_scheme, static_argnames=("st",))
run_scheme.__doc__ = """Run the alternating scheme (jitted; ``st`` static).

Args:
  key: PRNG key (expert initialisation).
  f: ``(h, w)`` float32 image normalised to ``[0, 1]``.
  w_fg, w_bg: ``(h, w)`` training weights of the experts in the first W-step.
  u0: ``(h, w)`` initial relaxed mask (warm start of the first u-step; ``u0 >= 0.5`` is m_0).
  hyper: :class:`Hyper` of float32 scalars.
  st: :class:`SchemeStatic`.

Returns:
  The final :class:`SchemeState`.
"""


def _continue(s: SchemeState, f, hyper: Hyper, st: SchemeStatic) -> SchemeState:
    return lax.while_loop(lambda c: c.status == RUNNING, lambda c: outer_step(c, f, hyper, st), s)


@functools.partial(jax.jit, static_argnames=("st", "batch"))
def run_scheme_sweep(key, f, w_fg, w_bg, u0, hypers: Hyper, st: SchemeStatic, batch: str = "vmap"):
    """:func:`run_scheme` for a batch of ``Hyper`` sharing one start, in one compiled call.

    The first W-step depends only on the start (not on ``lam``, ``mu`` or the tolerances), so
    it is computed once; the remaining outer iterations run per ``Hyper`` — ``batch="vmap"``
    vectorises them (GPU/TPU), ``batch="map"`` runs them one after the other with
    ``lax.map`` (XLA:CPU, where batched convolutions inside loops are slow). Every member of
    the result equals ``run_scheme(key, f, w_fg, w_bg, u0, hyper_i, st)`` (same key splits).

    Args:
      hypers: :class:`Hyper` whose leaves have a leading batch axis ``(n,)`` (learning rates
        must all be equal — the shared W-step uses the first).
    Returns:
      :class:`SchemeState` with a leading ``(n,)`` axis on every leaf.
    """
    TRACE_COUNT[0] += 1
    s0 = init_state(key, f, w_fg, w_bg, u0, st)
    first = jax.tree.map(lambda a: a[0], hypers)
    w = w_step(s0, f, first, st)

    def one(h):
        s1 = u_step(s0, w, f, h, st)
        return _continue(s1, f, h, st)

    if batch == "vmap":
        return jax.vmap(one)(hypers)
    if batch == "map":
        return lax.map(one, hypers)
    raise ValueError(f"batch must be 'vmap' or 'map', got {batch!r}")


def composite(u: jax.Array, den: jax.Array) -> jax.Array:
    """Denoised composite ``u D_F(f) + (1 - u) D_B(f)``; ``u (h, w)``, ``den (2, h, w)``."""
    return u * den[0] + (1.0 - u) * den[1]


def run_scheme_python(key, f, w_fg, w_bg, u0, hyper: Hyper, st: SchemeStatic) -> SchemeState:
    """Debug backend: the same :func:`outer_step` (jitted) driven by a Python loop."""
    step = jax.jit(outer_step, static_argnames=("st",))
    state = jax.jit(init_state, static_argnames=("st",))(key, f, w_fg, w_bg, u0, st)
    while int(state.status) == RUNNING:
        state = step(state, f, hyper, st)
    return state

