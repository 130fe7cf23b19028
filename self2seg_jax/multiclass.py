r"""Multi-class, multi-channel and 3-D Self2Seg (paper §6.1, eq. (13)) as one compiled loop.

Energy, for an image ``f`` with ``L`` channels on a 2-D or 3-D grid and ``C`` classes:

.. math::

   E(u, W) = \sum_{i=1}^C \sum_{j=1}^L \int [K(f_j - D_{W_i}(f)_j)]^2 u_i
             + \tfrac{\lambda}{2}\sum_i TV(u_i), \qquad u(x) \in \Delta_C

(``K`` the optional mean filter; the ``1/2`` makes each interface cost ``lam`` and ``C = 2``
equal the two-class energy (5), see :func:`self2seg_jax.pdhg.simplex_solve`).

Array conventions (internal, channel-first): image ``f`` is ``(*s)`` (``channels = 0``) or
``(L, *s)``; ``s`` has ``ndim`` = 2 or 3 axes; ``u``, weights and data terms are ``(C, *s)``;
expert outputs ``den`` are ``(C, *f.shape)``; labels are int32 ``(*s)`` (argmax of ``u``).

Experts: one per class, ``"n2f"`` (CNN, L -> L channels, 2-D or 3-D convolutions) or
``"constant"`` (per-channel region mean). The CNN experts are **stacked along a leading axis**
and trained together: ``jax.vmap`` over (params, region weight) — one batched program for all
classes (GPU/TPU) — or ``lax.map`` over the same stacked pytree (XLA:CPU, where batched
convolutions inside loops are slower than running them one after the other; see
``benchmarks/bench_multiclass.py``). Everything — W-steps, the simplex primal–dual u-steps,
thresholding (argmax) and the stopping rules of the two-class scheme — is one
``lax.while_loop`` under ``jax.jit`` (:func:`run_multiclass`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from self2seg_jax import experts, ops, pdhg
from self2seg_jax.alternating import RUNNING, Hyper, stop_rule

MC_KINDS = ("n2f", "constant")


@dataclasses.dataclass(frozen=True)
class MCStatic:
    """Static part of the multi-class scheme (hashable).

    Attributes:
      kinds: expert kind per class (``"n2f"`` or ``"constant"``); ``len(kinds) = C``.
      net: :class:`TrainConfig` of the CNN experts (``kind="n2f"``, with ``ndim``/``channels``).
      spacing: grid steps of the spatial axes (``None`` = 1).
      stack: ``"vmap"`` or ``"map"`` for training the stacked CNN experts.
    """

    kinds: tuple
    net: experts.TrainConfig
    spacing: tuple | None = None
    data_filter: int = 1
    max_outer: int = 8
    warm_start: bool = True
    pd_max_iter: int = 3000
    pd_check_every: int = 10
    isotropic_tv: bool = True
    stack: str = "map"

    @property
    def ndim(self) -> int:
        return self.net.ndim

    @property
    def n2f_idx(self) -> tuple:
        return tuple(i for i, k in enumerate(self.kinds) if k == "n2f")

    @property
    def const_idx(self) -> tuple:
        return tuple(i for i, k in enumerate(self.kinds) if k == "constant")


class MCState(NamedTuple):
    """Carry of the multi-class outer loop."""

    u: jax.Array  # (C, *s)
    p: tuple  # ndim x (C, *s) dual of the last u-step
    labels: jax.Array  # (*s) int32
    w: jax.Array  # (C, *s) training weights for the next W-step
    params: object  # stacked CNN params (leading axis n_n2f), or () if none
    den: jax.Array  # (C, *f.shape) expert outputs
    key: jax.Array
    it: jax.Array
    energies: jax.Array  # (max_outer,)
    changes: jax.Array  # (max_outer,)
    pd_iters: jax.Array  # (max_outer,)
    train_steps: jax.Array  # (max_outer, C)
    status: jax.Array


def data_terms(f: jax.Array, den: jax.Array, st: MCStatic) -> jax.Array:
    """``d_i = sum_channels [K (f - D_i f)]^2``: ``(C, *s)`` from ``den`` ``(C, *f.shape)``."""
    res = ops.mean_filter(f[None] - den, st.data_filter, st.ndim)
    sq = res**2
    return jnp.sum(sq, axis=1) if st.net.channels else sq


def labels_energy(labels, d, lam, st: MCStatic) -> jax.Array:
    """Energy (13) of a label image: ``sum_i <d_i, 1{labels = i}> + lam/2 sum_i TV(1{.=i})``."""
    onehot = jax.nn.one_hot(labels, d.shape[0], axis=0, dtype=d.dtype)
    return pdhg.simplex_energy(onehot, d, lam, ndim=st.ndim, spacing=st.spacing, isotropic=st.isotropic_tv)


def _class_keys(key, c: int):
    """``(key, class_keys (C,))``: ``split(key, C + 1)`` with class 1 (foreground) on slot 1
    and class 0 on slot 2 — the two-class scheme's ``key, k_fg, k_bg`` — so ``C = 2`` draws
    the same expert initialisations as :func:`self2seg_jax.alternating.init_state`."""
    ks = jax.random.split(key, c + 1)
    order = [2, 1] + list(range(3, c + 1))
    return ks[0], ks[jnp.asarray(order[:c])]


def _init_stacked(class_keys, st: MCStatic):
    if not st.n2f_idx:
        return ()
    keys = class_keys[jnp.asarray(st.n2f_idx)]
    return jax.vmap(lambda k: experts.init_params(k, st.net))(keys)


def w_step(class_keys, params, f, w, lr, st: MCStatic):
    """Train every class expert on its weight ``w[i]``; returns ``(params, den, steps (C,))``."""
    c = len(st.kinds)
    den = jnp.zeros((c,) + f.shape, f.dtype)
    steps = jnp.zeros((c,), jnp.int32)
    if st.n2f_idx:
        idx = jnp.asarray(st.n2f_idx)
        if not st.warm_start:
            params = _init_stacked(class_keys, st)
        fit = lambda p, wi: experts.fit_n2f(p, f, wi, lr, st.net)  # noqa: E731
        if st.stack == "vmap":
            params, dn, sn = jax.vmap(fit)(params, w[idx])
        else:
            params, dn, sn = lax.map(lambda a: fit(*a), (params, w[idx]))
        den, steps = den.at[idx].set(dn), steps.at[idx].set(sn)
    if st.const_idx:
        idx = jnp.asarray(st.const_idx)
        _, dc, _ = jax.vmap(experts.fit_constant, in_axes=(None, 0))(f, w[idx])
        den = den.at[idx].set(dc)
    return params, den, steps


def outer_step(s: MCState, f: jax.Array, hyper: Hyper, st: MCStatic) -> MCState:
    """One outer iteration: W-step, simplex u-step, argmax, bookkeeping and stop rules."""
    key, class_keys = _class_keys(s.key, len(st.kinds))
    params, den, steps = w_step(class_keys, s.params, f, s.w, hyper.learning_rate, st)
    d = data_terms(f, den, st)
    sol = pdhg.simplex_solve(
        d, hyper.lam, mu=hyper.mu, u_ref=s.u, u0=s.u, p0=s.p, tol=hyper.pd_tol,
        max_iter=st.pd_max_iter, check_every=st.pd_check_every, ndim=st.ndim,
        spacing=st.spacing, isotropic=st.isotropic_tv,
    )
    c = len(st.kinds)
    labels = jnp.argmax(sol.u, axis=0).astype(jnp.int32)
    onehot = jax.nn.one_hot(labels, c, axis=0, dtype=f.dtype)
    e = labels_energy(labels, d, hyper.lam, st)
    change = jnp.mean((labels != s.labels).astype(f.dtype))
    sizes = jnp.sum(onehot, axis=tuple(range(1, onehot.ndim)))
    finite = jnp.isfinite(e) & jnp.all(jnp.isfinite(den)) & (sol.status != pdhg.NONFINITE)
    energies, status = stop_rule(
        s.energies, s.it, e, change, finite, jnp.any(sizes == 0), hyper, st.max_outer
    )
    k = s.it
    return MCState(
        u=sol.u, p=sol.p, labels=labels, w=onehot, params=params, den=den, key=key, it=k + 1,
        energies=energies, changes=s.changes.at[k].set(change),
        pd_iters=s.pd_iters.at[k].set(sol.it), train_steps=s.train_steps.at[k].set(steps),
        status=status,
    )


def init_state(key, f, w0, u0, st: MCStatic) -> MCState:
    """Initial carry: ``w0`` ``(C, *s)`` first training weights, ``u0`` ``(C, *s)`` start."""
    c = len(st.kinds)
    key, class_keys = _class_keys(key, c)
    n = st.max_outer
    dtype = f.dtype
    return MCState(
        u=u0, p=tuple(jnp.zeros_like(u0) for _ in range(st.ndim)),
        labels=jnp.argmax(u0, axis=0).astype(jnp.int32), w=w0, params=_init_stacked(class_keys, st),
        den=jnp.zeros((c,) + f.shape, dtype), key=key, it=jnp.asarray(0, jnp.int32),
        energies=jnp.full((n,), jnp.nan, dtype), changes=jnp.full((n,), jnp.nan, dtype),
        pd_iters=jnp.zeros((n,), jnp.int32), train_steps=jnp.zeros((n, c), jnp.int32),
        status=jnp.asarray(RUNNING, jnp.int32),
    )


TRACE_COUNT = [0]


def _run(key, f, w0, u0, hyper: Hyper, st: MCStatic) -> MCState:
    TRACE_COUNT[0] += 1
    s = init_state(key, f, w0, u0, st)
    return lax.while_loop(lambda c: c.status == RUNNING, lambda c: outer_step(c, f, hyper, st), s)


run_multiclass = jax.jit(_run, static_argnames=("st",))
run_multiclass.__doc__ = """Run the multi-class scheme (jitted; ``st`` static).

Args:
  key: PRNG key.
  f: ``(*s)`` or ``(L, *s)`` float32 image normalised to ``[0, 1]``.
  w0: ``(C, *s)`` training weights of the first W-step (one-hot labels or per-class boxes).
  u0: ``(C, *s)`` start of the first u-step (on the simplex).
  hyper: :class:`self2seg_jax.alternating.Hyper` (``threshold`` unused: labels = argmax).
  st: :class:`MCStatic`.
Returns:
  Final :class:`MCState`.
"""


def composite(u: jax.Array, den: jax.Array) -> jax.Array:
    """Denoised composite ``sum_i u_i D_i(f)``: ``u (C, *s)``, ``den (C, *f.shape)``."""
    extra = den.ndim - u.ndim
    uu = u.reshape(u.shape[:1] + (1,) * extra + u.shape[1:])
    return jnp.sum(uu * den, axis=0)
