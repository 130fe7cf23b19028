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
import html
import sys
import time
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


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython's ``ZMQInteractiveShell``)."""
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        shell = ip.get_ipython()
    except Exception:  # pragma: no cover - a broken IPython counts as none
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{seconds:.1f} s"


class Bar:
    """One progress bar for one run: outer iterations and (with
    ``Self2SegConfig(progress_training=True)``) the Adam steps of the W-step in progress, the
    time elapsed and an estimate of the time left.

    The estimate assumes every outer iteration up to ``max_outer`` runs, a W-step takes
    ``TRAIN_SHARE`` of an iteration, and the rate since the first report holds (compilation
    comes before it and is left out); the stop rule usually ends a run earlier, so it is an
    upper estimate ("≤").

    Args:
      max_outer: the run's ``max_outer``; train_steps: its ``train_max_steps``.
      name: shown before the bar (e.g. the file name).
      target: ``"terminal"`` (a line on ``stream`` rewritten in place; the per-iteration log
        lines are printed above it), ``"notebook"`` (HTML updated in place), ``"lines"`` (only
        the per-iteration lines, e.g. a log file), ``"none"``, or ``"auto"``: notebook in a
        Jupyter kernel, terminal when ``stream`` is a TTY, else lines.
      stream: text stream of the terminal and lines targets (default ``sys.stderr``).
      prefix: before each per-iteration line (:func:`format_event`; default ``"  name: "``).

    Use its methods as callbacks: ``segment(..., progress=bar.outer)`` and
    ``with training_listener(bar.training): ...``; ``bar.close()`` at the end.
    """

    TRAIN_SHARE = 0.9
    MIN_INTERVAL = 0.1  # seconds between redraws of the bar

    def __init__(self, max_outer: int, train_steps: int, *, name: str = "", target: str = "auto",
                 stream=None, prefix: str | None = None):
        self.max_outer, self.train_steps, self.name = int(max_outer), int(train_steps), name
        self.stream = sys.stderr if stream is None else stream
        if target == "auto":
            tty = getattr(self.stream, "isatty", lambda: False)()
            target = "notebook" if in_notebook() else ("terminal" if tty else "lines")
        if target not in ("terminal", "notebook", "lines", "none"):
            raise ValueError(f"target must be auto, terminal, notebook, lines or none, got "
                             f"{target!r}")
        self.target = target
        self.prefix = (f"  {name}: " if name else "  ") if prefix is None else prefix
        self.t0 = time.perf_counter()
        self.done = 0  # finished outer iterations
        self.step = 0  # Adam steps of the W-step in progress
        self.log: list[str] = []
        self.closed = False
        self._last = 0.0
        self._handle = None
        self._first = None  # (time, fraction) of the first progress report

    # -- state -------------------------------------------------------------------------------
    @property
    def fraction(self) -> float:
        """Share of the largest possible run done, in ``[0, 1]``."""
        w = min(self.step / max(self.train_steps, 1), 1.0) * self.TRAIN_SHARE
        return min((self.done + w) / max(self.max_outer, 1), 1.0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def remaining(self) -> float | None:
        """Upper estimate of the seconds left, from the rate since the first progress report
        (so that compilation, which comes before it, does not count); None until two reports
        differ."""
        if self._first is None:
            return None
        t1, f1 = self._first
        f = self.fraction
        if f <= f1:
            return None
        return (time.perf_counter() - t1) / (f - f1) * (1.0 - f)

    def _mark(self) -> None:
        if self._first is None:
            self._first = (time.perf_counter(), self.fraction)

    def text(self) -> str:
        """``name outer 3/8 · training step 120/150 · 12.3 s · ≤ 20.0 s left``."""
        parts = [f"outer {min(self.done + (0 if self.closed else 1), self.max_outer)}"
                 f"/{self.max_outer}"]
        if self.step and not self.closed:
            parts.append(f"training step {self.step}/{self.train_steps}")
        parts.append(_duration(self.elapsed()))
        rem = self.remaining()
        if not self.closed and rem is not None:
            parts.append(f"≤ {_duration(rem)} left")
        return (f"{self.name}: " if self.name else "") + " · ".join(parts)

    # -- callbacks ---------------------------------------------------------------------------
    def outer(self, ev: Event) -> None:
        """Progress callback of :func:`self2seg_jax.segment`."""
        self.done, self.step = ev.outer, 0
        self._mark()
        line = format_event(ev) + f" [{_duration(self.elapsed())}]"
        self.log.append(line)
        if self.target in ("terminal", "lines"):
            clear = "\r\033[K" if self.target == "terminal" else ""
            self.stream.write(f"{clear}{self.prefix}{line}\n")
        self._draw(force=True)

    def training(self, step, score=None) -> None:
        """Listener of :func:`training_listener`."""
        self.step = int(step)
        self._mark()
        self._draw()

    def close(self) -> None:
        """Draw the final state and end the terminal line."""
        if self.closed:
            return
        self.closed = True
        self._draw(force=True)
        if self.target == "terminal":
            self.stream.write("\n")
            self.stream.flush()

    # -- rendering ---------------------------------------------------------------------------
    def html(self) -> str:
        rows = "".join(f"<div>{html.escape(x)}</div>" for x in self.log)
        return (f"<div style='font-family:monospace'><progress value='{self.fraction:.4f}' "
                f"max='1' style='width:40ex'></progress> {html.escape(self.text())}"
                f"<div style='font-size:85%;opacity:.8'>{rows}</div></div>")

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < self.MIN_INTERVAL:
            return
        self._last = now
        if self.target == "terminal":
            width = 20
            full = int(round(self.fraction * width))
            self.stream.write(f"\r\033[K[{'#' * full}{'.' * (width - full)}] {self.text()}")
            self.stream.flush()
        elif self.target == "notebook":
            from IPython.display import HTML, display

            if self._handle is None:
                self._handle = display(HTML(self.html()), display_id=True)
            else:
                self._handle.update(HTML(self.html()))
        elif self.target == "lines":
            self.stream.flush()


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
