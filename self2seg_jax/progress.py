"""Watching a run: one :class:`Event` per finished outer iteration, and the time spent
compiling.

:func:`self2seg_jax.segment` (``progress=callback``) and the command line receive events from
:func:`self2seg_jax.alternating.iterate`, which drives the compiled outer step from Python;
:func:`compilations` observes XLA compilations through ``jax.monitoring``. With
``Self2SegConfig(progress_training=True)`` the experts' training loops also report every
validation from inside the compiled program (:func:`training_listener`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple


class Event(NamedTuple):
    """One finished outer iteration.

    Attributes:
      outer: outer iterations done (1-based).
      energy: energy of the labels after it.
      change: fraction of pixels whose label changed.
      pd_iters: primal–dual iterations of its mask step.
      train_steps: Adam steps of each class expert in its W-step.
      status: the scheme's status code after it (``alternating.STATUS_NAMES``; 0 = running).
    """

    outer: int
    energy: float
    change: float
    pd_iters: int
    train_steps: tuple
    status: int


def event_of(state) -> Event:
    """The :class:`Event` of the last outer iteration of a scheme state (reads a few scalars)."""
    import jax

    k = int(state.it) - 1
    e, c, pd, steps, st = jax.device_get((state.energies[k], state.changes[k], state.pd_iters[k],
                                          state.train_steps[k], state.status))
    return Event(k + 1, float(e), float(c), int(pd), tuple(int(v) for v in steps), int(st))


def format_event(ev: Event) -> str:
    """One line: ``outer 2: energy 12.3, mask change 0.41%, pd iters 120, train steps [0, 150]``."""
    return (f"outer {ev.outer}: energy {ev.energy:.6g}, mask change {ev.change:.4%}, pd iters "
            f"{ev.pd_iters}, train steps {list(ev.train_steps)}")


_training_listeners: list = []


def training_tick(step, score) -> None:
    """Host end of the experts' training callback (``TrainConfig.report``): passes ``(steps
    done, validation score)`` of the W-step in progress to every listener registered with
    :func:`training_listener`. Batched experts report arrays: the most steps and the best score
    are passed on."""
    import numpy as np

    if _training_listeners:
        s, v = int(np.max(np.asarray(step))), float(np.min(np.asarray(score)))
        for fn in list(_training_listeners):
            fn(s, v)


@contextlib.contextmanager
def training_listener(fn):
    """Call ``fn(steps_done, validation_score)`` after every validation of an expert's training
    inside the block (needs ``Self2SegConfig(progress_training=True)``; called from the thread
    that runs the compiled program)."""
    _training_listeners.append(fn)
    try:
        yield fn
    finally:
        _training_listeners.remove(fn)


_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_retrieval_time_sec"
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compilations() -> Iterator[dict]:
    """Count the XLA compilations (and their seconds) inside the block, from ``jax.monitoring``
    events: ``with compilations() as c: ...; c["count"], c["seconds"], c["cache_hits"]`` (read
    after the block). A program loaded from the persistent compilation cache is not compiled
    and is not counted: JAX reports its retrieval as a backend compile too, so hits are
    subtracted."""
    import jax

    events = {_COMPILE_EVENT: [], _CACHE_HIT_EVENT: []}

    def listener(event, duration, **_):
        if event in events:
            events[event].append(duration)

    seen: dict = {}
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        compiles, hits = events[_COMPILE_EVENT], events[_CACHE_HIT_EVENT]
        count = max(len(compiles) - len(hits), 0)
        seen.update(count=count, cache_hits=len(hits),
                    seconds=max(sum(compiles) - sum(hits), 0.0) if count else 0.0)
        jax.monitoring.unregister_event_duration_listener(listener)
