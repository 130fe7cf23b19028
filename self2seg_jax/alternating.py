r"""The Self2Seg alternating scheme (paper Algorithms 1 and 3; eq. (13) for ``C`` classes) as
one compiled while-loop, for any number of classes, channels and spatial dimensions.

Outer iteration ``k`` (the state holds the labels ``l_{k-1}``, the relaxed ``u``, its dual and
the experts):

1. **W-step** — train every class expert on its region weight (the one-hot labels
   ``l_{k-1}``; at ``k = 1`` the initial regions, e.g. user boxes);
2. data terms ``d_i = [K (f - D_i f)]^2`` (summed over channels), from the experts' outputs or,
   with ``blind_spot``, from their blind-spot predictions;
3. **u-step** — the primal–dual solver (:mod:`self2seg_jax.pdhg`) on the relaxation for the
   class count (box for two classes, simplex otherwise), warm-started from the previous ``u``
   and dual, with the reference ``u_R`` = previous ``u`` (eq. (10));
4. labels ``l_k`` — threshold (two classes, Theorem 4) or most probable class — and the energy
   ``E_k`` of eq. (5)/(13) of the labels;
5. stop when at most ``mask_tol`` of the pixels change label, when the paper's rule fires (the
   decrease ``E_{k-1} - E_k`` is below ``energy_p`` times the previous one, or a rise), at
   ``max_outer``, or on a non-finite value / an empty class (a step that empties a class is
   rejected: the state keeps the labels, ``u`` and regions of the iteration before).

With exactly minimised experts (constant, linear least squares) ``E_k`` is non-increasing
(Remark 1) up to the primal–dual tolerance and the isotropic-TV thresholding slack.

:func:`run` is a single ``jax.jit`` whose static argument is the hashable :class:`Spec`; all
numbers one sweeps are in the traced :class:`Hyper`, so a new image of the same shape, a new
key or a new ``lam`` never recompiles, and ``vmap`` over images, keys or ``Hyper`` works.
Array conventions: ``f`` is ``(*s)`` or ``(L, *s)`` (channel-first), labels ``(*s)`` int32,
region weights and data terms ``(C, *s)``, expert outputs ``(C, *f.shape)``; class 0 is the
background.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from self2seg_jax import aot, backend, energy, experts, pdhg, progress

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
    """Traced (sweepable, vmappable) numbers of the scheme; float32 scalars."""

    lam: jax.Array
    mu: jax.Array
    learning_rate: jax.Array
    pd_tol: jax.Array
    mask_tol: jax.Array
    energy_p: jax.Array
    threshold: jax.Array


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static (shape- and code-path-defining, hashable) part of a run; derived from a
    :class:`~self2seg_jax.Self2SegConfig` by its ``spec`` method.

    Attributes:
      kinds: expert kind per class (class 0 = background); ``len(kinds)`` = classes ``C``.
      train: expert options (network, schedule, ``ndim``, ``channels``).
      spacing: grid steps of the spatial axes (None = 1).
      data_filter: odd mean-filter size of the data terms (1 = off).
      blind_spot: data terms from the experts' blind-spot predictions.
      batch: ``"vmap"`` or ``"map"`` for experts of one kind (:func:`experts.fit_group`).
      pd_block_pixels: mask-step iterations in bands of about this many pixels
        (:class:`pdhg.Problem`; 0 = whole arrays).
    """

    kinds: tuple
    train: experts.TrainConfig
    spacing: tuple | None = None
    data_filter: int = 1
    blind_spot: bool = False
    max_outer: int = 8
    warm_start: bool = True
    pd_max_iter: int = 3000
    pd_check_every: int = 10
    pd_accelerated: bool = False
    isotropic_tv: bool = True
    batch: str = "map"
    pd_block_pixels: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.kinds)

    @property
    def ndim(self) -> int:
        return self.train.ndim

    @property
    def groups(self) -> tuple:
        """``((kind, class indices), ...)`` of the kinds present, in ``experts.KINDS`` order."""
        return tuple((k, tuple(i for i, c in enumerate(self.kinds) if c == k))
                     for k in experts.KINDS if k in self.kinds)

    @property
    def problem(self) -> pdhg.Problem:
        return pdhg.Problem(relaxation=pdhg.relaxation_for(self.num_classes), ndim=self.ndim,
                            spacing=self.spacing, isotropic=self.isotropic_tv,
                            accelerated=self.pd_accelerated, block_pixels=self.pd_block_pixels)


class State(NamedTuple):
    """Carry of the outer ``lax.while_loop`` (a pytree)."""

    u: jax.Array  # relaxed mask of the last u-step, (*s) (two classes) or (C, *s)
    p: tuple  # its dual field (ndim components shaped like u)
    labels: jax.Array  # (*s) int32 labels l_k
    w: jax.Array  # (C, *s) region weights of the next W-step
    params: dict  # kind -> params of that kind's experts, stacked along a leading axis
    den: jax.Array  # (C, *f.shape) expert outputs of the last W-step
    key: jax.Array
    it: jax.Array  # outer iterations done
    energies: jax.Array  # (max_outer,) E_k, NaN where not reached
    changes: jax.Array  # (max_outer,) fraction of pixels whose label changed
    pd_iters: jax.Array  # (max_outer,) primal-dual iterations per u-step
    train_steps: jax.Array  # (max_outer, C) Adam steps per class expert
    status: jax.Array


class WStep(NamedTuple):
    """Output of the W-step of one outer iteration (:func:`w_step`)."""

    params: dict
    den: jax.Array  # (C, *f.shape)
    steps: jax.Array  # (C,)
    key: jax.Array  # carried key after the split


def class_keys(key: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """``(carried key, per-class keys (C,))`` from ``split(key, C + 1)``.

    The foreground (class 1) takes slot 1 and the background slot 2, the order in which the
    two-class scheme has always drawn them, so results for a given key stay reproducible.
    """
    ks = jax.random.split(key, num_classes + 1)
    order = [2, 1] + list(range(3, num_classes + 1))
    return ks[0], ks[jnp.asarray(order[:num_classes])]


def init_params(keys: jax.Array, spec: Spec) -> dict:
    """Fresh stacked parameters of every class expert (``keys`` from :func:`class_keys`)."""
    return {kind: jax.vmap(lambda k, kind=kind: experts.init_params(k, kind, spec.train))(
        keys[jnp.asarray(idx)]) for kind, idx in spec.groups}


def w_step(s: State, f: jax.Array, hyper: Hyper, spec: Spec) -> WStep:
    """Train every class expert on its weight ``s.w[i]``.

    Depends only on the learning rate among the ``Hyper`` numbers, so a ``lam`` sweep from a
    common start shares its first W-step (:func:`run_sweep`).
    """
    key, keys = class_keys(s.key, spec.num_classes)
    params = s.params
    if not spec.warm_start and "n2f" in params:  # the authors' re-initialisation per W-step
        params = {**params, "n2f": init_params(keys, spec)["n2f"]}
    den = jnp.zeros((spec.num_classes,) + f.shape, f.dtype)
    steps = jnp.zeros((spec.num_classes,), jnp.int32)
    new = {}
    for kind, idx in spec.groups:
        ix = jnp.asarray(idx)
        fit_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys[ix])
        new[kind], out, st = experts.fit_group(fit_keys, params[kind], f, s.w[ix],
                                               hyper.learning_rate, kind, spec.train,
                                               batch=spec.batch)
        den, steps = den.at[ix].set(out), steps.at[ix].set(st)
    return WStep(new, den, steps, key)


def predictions(params: dict, den: jax.Array, f: jax.Array, spec: Spec) -> jax.Array:
    """What the data terms compare ``f`` with: the outputs ``den`` (paper), or with
    ``spec.blind_spot`` the blind-spot predictions (:func:`experts.blind_spot_output`)."""
    if not spec.blind_spot:
        return den
    rows = [None] * spec.num_classes
    for kind, idx in spec.groups:
        for j, i in enumerate(idx):
            p = jax.tree.map(lambda a, j=j: a[j], params[kind])
            rows[i] = experts.blind_spot_output(p, f, kind, spec.train, den[i])
    return jnp.stack(rows)


def data_terms(params: dict, den: jax.Array, f: jax.Array, spec: Spec) -> jax.Array:
    """``(C, *s)`` data terms of the experts (see :func:`energy.data_terms`)."""
    return energy.data_terms(f, predictions(params, den, f, spec), filter_size=spec.data_filter,
                             ndim=spec.ndim, channels=bool(spec.train.channels))


def stop_rule(energies, k, e, change, finite, degenerate, hyper: Hyper, max_outer: int):
    """Record ``E_k = e`` and decide the status after outer iteration ``k + 1`` (0-based ``k``).

    In order: non-finite, degenerate (an empty class), labels converged (``change <=
    mask_tol``), the energy-decrease rule (from the third iteration), ``max_outer``.
    Returns ``(energies, status)``.
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


def u_step(s: State, ws: WStep, f: jax.Array, hyper: Hyper, spec: Spec) -> State:
    """The rest of an outer iteration after the W-step ``ws``: u-step, labels, stop rules."""
    prob = spec.problem
    d = data_terms(ws.params, ws.den, f, spec)
    sol = pdhg.solve(prob.relaxation.linear_term(d), hyper.lam, prob, mu=hyper.mu, u_ref=s.u,
                     u0=s.u, p0=s.p, tol=hyper.pd_tol, max_iter=spec.pd_max_iter,
                     check_every=spec.pd_check_every)
    labels = prob.relaxation.labels(sol.u, hyper.threshold)
    e = energy.labels_energy(labels, d, hyper.lam, ndim=spec.ndim, spacing=spec.spacing,
                             isotropic=spec.isotropic_tv)
    change = jnp.mean((labels != s.labels).astype(f.dtype))
    onehot = energy.one_hot(labels, spec.num_classes, f.dtype)
    empty = jnp.any(jnp.sum(onehot, axis=tuple(range(1, onehot.ndim))) == 0)
    finite = jnp.isfinite(e) & jnp.all(jnp.isfinite(ws.den)) & (sol.status != pdhg.NONFINITE)
    energies, status = stop_rule(s.energies, s.it, e, change, finite, empty, hyper, spec.max_outer)
    k = s.it
    # A step that empties a class is rejected: the run stops (status DEGENERATE) with the mask
    # of the iteration before (the start, if it was the first) — a trivial segmentation is never
    # the answer — and the experts just trained on that mask's regions. Its energy and label
    # change stay recorded.
    keep = status == DEGENERATE
    u, p, labels, w = jax.tree.map(lambda old, new: jnp.where(keep, old, new),
                                   (s.u, s.p, s.labels, s.w), (sol.u, sol.p, labels, onehot))
    return State(
        u=u, p=p, labels=labels, w=w, params=ws.params, den=ws.den, key=ws.key,
        it=k + 1, energies=energies, changes=s.changes.at[k].set(change),
        pd_iters=s.pd_iters.at[k].set(sol.it), train_steps=s.train_steps.at[k].set(ws.steps),
        status=status,
    )


def outer_step(s: State, f: jax.Array, hyper: Hyper, spec: Spec) -> State:
    """One outer iteration (W-step, u-step, labels, bookkeeping). Pure."""
    return u_step(s, w_step(s, f, hyper, spec), f, hyper, spec)


def init_state(key: jax.Array, f: jax.Array, w0: jax.Array, labels0: jax.Array,
               spec: Spec) -> State:
    """Initial carry: first W-step regions ``w0`` ``(C, *s)``, initial labels ``labels0``
    (the relaxed start and first reference are their one-hot probabilities), fresh experts."""
    key, keys = class_keys(key, spec.num_classes)
    onehot = energy.one_hot(labels0, spec.num_classes, f.dtype)
    u = spec.problem.relaxation.from_probabilities(onehot)
    n, c = spec.max_outer, spec.num_classes
    return State(
        u=u, p=tuple(jnp.zeros_like(u) for _ in range(spec.ndim)),
        labels=jnp.asarray(labels0, jnp.int32), w=jnp.asarray(w0, f.dtype),
        params=init_params(keys, spec), den=jnp.zeros((c,) + f.shape, f.dtype), key=key,
        it=jnp.asarray(0, jnp.int32), energies=jnp.full((n,), jnp.nan, f.dtype),
        changes=jnp.full((n,), jnp.nan, f.dtype), pd_iters=jnp.zeros((n,), jnp.int32),
        train_steps=jnp.zeros((n, c), jnp.int32), status=jnp.asarray(RUNNING, jnp.int32),
    )


def _continue(s: State, f, hyper: Hyper, spec: Spec) -> State:
    return lax.while_loop(lambda c: c.status == RUNNING, lambda c: outer_step(c, f, hyper, spec), s)


@backend.jit(static_argnames=("spec",))
def run(key, f, w0, labels0, hyper: Hyper, spec: Spec) -> State:
    """Run the alternating scheme to its stop rule: one compiled ``lax.while_loop`` (jitted;
    ``spec`` static).

    Args:
      key: PRNG key (expert initialisation).
      f: ``(*s)`` or ``(L, *s)`` float32 image normalised to ``[0, 1]``.
      w0: ``(C, *s)`` region weights of the first W-step.
      labels0: ``(*s)`` int32 initial labels.
      hyper: :class:`Hyper`; spec: :class:`Spec`.

    Returns:
      The final :class:`State`.
    """
    return _continue(init_state(key, f, w0, labels0, spec), f, hyper, spec)


_init_jit = backend.jit(init_state, static_argnames=("spec",))
_step_jit = backend.jit(outer_step, static_argnames=("spec",))
_u_jit = backend.jit(u_step, static_argnames=("spec",))


@backend.jit(static_argnames=("spec",))
def first_w_step(key, f, w0, labels0, hyper: Hyper, spec: Spec) -> tuple[State, WStep]:
    """The initial state of :func:`run` and its first W-step (which uses only
    ``hyper.learning_rate``): what a choice of ``lam`` after the first W-step
    (:mod:`self2seg_jax.lam_auto`) looks at before :func:`run_from_w_step` goes on."""
    s0 = init_state(key, f, w0, labels0, spec)
    return s0, w_step(s0, f, hyper, spec)


@backend.jit(static_argnames=("spec",))
def run_from_w_step(s0: State, ws: WStep, f, hyper: Hyper, spec: Spec) -> State:
    """:func:`run` from the output of :func:`first_w_step` (the same iterations; split in two
    compiled programs, so equal up to float rounding)."""
    return _continue(u_step(s0, ws, f, hyper, spec), f, hyper, spec)


def states_from_w_step(s0: State, ws: WStep, f, hyper: Hyper, spec: Spec):
    """:func:`states` from the output of :func:`first_w_step`: the state after each outer
    iteration; returns the final state."""
    st = {"spec": spec}
    s = aot.call(_u_jit, "alternating.u_step", st, s0, ws, f, hyper)
    yield s
    return (yield from drive(s, lambda c: aot.call(_step_jit, "alternating.outer_step", st, c, f,
                                                   hyper)))


def iterate(key, f, w0, labels0, hyper: Hyper, spec: Spec,
            callback: Callable[[progress.Event], None]) -> State:
    """:func:`run` driven from Python one outer iteration at a time (the same compiled
    :func:`outer_step`), calling ``callback(event)`` after each.

    This is how progress is reported: a host callback inside the compiled loop would keep the
    program out of JAX's persistent compilation cache, and would fix the callback at compile
    time. The per-iteration cost is one read of a few scalars.
    """
    return follow(events(states(key, f, w0, labels0, hyper, spec)), callback)


def drive(s: State, step: Callable[[State], State]):
    """Generator: ``s = step(s)`` until the stop rule, yielding each state; its return value
    is the final state. Closing it early (``gen.close()``) stops between two outer
    iterations."""
    while int(s.status) == RUNNING:
        s = step(s)
        yield s
    return s


def states(key, f, w0, labels0, hyper: Hyper, spec: Spec):
    """:func:`drive` over the compiled :func:`outer_step` from the initial state of
    :func:`run`: the state after each outer iteration; returns the final state."""
    st = {"spec": spec}
    s0 = aot.call(_init_jit, "alternating.init_state", st, key, f, w0, labels0)
    return drive(s0, lambda s: aot.call(_step_jit, "alternating.outer_step", st, s, f, hyper))


def events(gen):
    """The :class:`~self2seg_jax.progress.Event` of each state of a :func:`drive` generator;
    returns its final state (``state = yield from events(gen)``)."""
    while True:
        try:
            s = next(gen)
        except StopIteration as stop:
            return stop.value
        yield progress.event_of(s)


def follow(gen, callback: Callable):
    """Run generator ``gen`` to its end, ``callback(item)`` for every item it yields; returns
    its return value."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        callback(item)


@backend.jit(static_argnames=("spec", "batch"))
def run_sweep(key, f, w0, labels0, hypers: Hyper, spec: Spec, batch: str = "vmap"):
    """:func:`run` for a batch of ``Hyper`` sharing one start, in one compiled call.

    The first W-step depends only on the start (not on ``lam``, ``mu`` or the tolerances), so
    it is computed once; the remaining iterations run per ``Hyper`` — ``batch="vmap"``
    vectorises them (accelerators), ``"map"`` runs them one after the other (``lax.map``,
    XLA:CPU). Member ``i`` equals ``run(key, f, w0, labels0, hypers[i], spec)``.

    Args:
      hypers: :class:`Hyper` with a leading batch axis ``(n,)`` on every leaf (one learning
        rate: the shared W-step uses the first).
    Returns:
      :class:`State` with a leading ``(n,)`` axis on every leaf.
    """
    s0 = init_state(key, f, w0, labels0, spec)
    ws = w_step(s0, f, jax.tree.map(lambda a: a[0], hypers), spec)

    def one(h):
        return _continue(u_step(s0, ws, f, h, spec), f, h, spec)

    if batch == "vmap":
        return jax.vmap(one)(hypers)
    if batch == "map":
        return lax.map(one, hypers)
    raise ValueError(f"batch must be 'vmap' or 'map', got {batch!r}")


def probabilities(s: State, spec: Spec) -> jax.Array:
    """``(C, *s)`` class probabilities of the relaxed mask of ``s``."""
    return spec.problem.relaxation.probabilities(s.u)


def composite(probs: jax.Array, den: jax.Array) -> jax.Array:
    """Denoised composite ``sum_i u_i D_i(f)``: ``probs (C, *s)``, ``den (C, *f.shape)``."""
    extra = den.ndim - probs.ndim
    return jnp.sum(probs.reshape(probs.shape[:1] + (1,) * extra + probs.shape[1:]) * den, axis=0)

