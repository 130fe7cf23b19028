"""Progress reporting: Event / event_of / format_event, the compilation counter, the
Python-driven outer loop (alternating.iterate) and segment(progress=callback): one Event per
outer iteration that matches the result, routed only to its own callback, with no
recompilation when the callback changes; config.progress prints to stderr."""

from __future__ import annotations

import io
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import alternating, api, initialisation, progress
from self2seg_jax.progress import Event


class Recorder:
    def __init__(self):
        self.events: list[Event] = []

    def __call__(self, ev):
        self.events.append(ev)


def _check_events(events, res):
    """One Event per outer iteration, in order, equal to the result's per-iteration records."""
    assert len(events) == res.num_outer >= 1
    assert [e.outer for e in events] == list(range(1, res.num_outer + 1))
    for k, e in enumerate(events):
        assert isinstance(e, Event)
        assert (
            isinstance(e.outer, int) and isinstance(e.energy, float) and isinstance(e.change, float)
        )
        assert isinstance(e.pd_iters, int) and isinstance(e.status, int)
        assert isinstance(e.train_steps, tuple) and all(isinstance(v, int) for v in e.train_steps)
        assert e.energy == pytest.approx(float(res.energies[k]), rel=1e-6)
        assert e.change == pytest.approx(float(res.mask_changes[k]), abs=1e-7)
        assert e.pd_iters == int(res.pd_iterations[k])
        assert e.train_steps == tuple(int(v) for v in res.train_steps[k])
    assert all(e.status == alternating.RUNNING for e in events[:-1])
    assert alternating.STATUS_NAMES[events[-1].status] == res.status


# --------------------------------------------------------------------------------------
# helpers of the module
# --------------------------------------------------------------------------------------


def test_format_event():
    ev = Event(2, 12.3456789, 0.0041, 120, (0, 150), 0)
    line = progress.format_event(ev)
    assert (
        line == "outer 2: energy 12.3457, mask change 0.4100%, pd iters 120, train steps [0, 150]"
    )


def test_event_of_reads_the_last_iteration(const_config, make_blob):
    img, _ = make_blob(1, 24, 0.1)
    a, _ = api.validate_image(img)
    f, _, _ = api.normalise(a, "minmax")
    st = initialisation.start(None, f, "otsu", num_classes=2, ndim=2, denoise=None)
    spec = const_config.replace(mask_tol=0.0, energy_p=0.0).spec()
    s = alternating.run(
        jax.random.key(0),
        jnp.asarray(f),
        jnp.asarray(st.weights),
        jnp.asarray(st.labels),
        const_config.replace(mask_tol=0.0, energy_p=0.0).hyper(),
        spec=spec,
    )
    n = int(s.it)
    ev = progress.event_of(s)
    assert ev.outer == n and ev.status == int(s.status)
    assert ev.energy == pytest.approx(float(s.energies[n - 1]))
    assert ev.change == pytest.approx(float(s.changes[n - 1]))
    assert ev.pd_iters == int(s.pd_iters[n - 1])
    assert ev.train_steps == tuple(int(v) for v in s.train_steps[n - 1])


def test_compilations_counts_xla_compilations():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.25)
    with progress.compilations() as c:
        f(jnp.ones(3))
        f(jnp.ones(3) * 2)  # cached: not compiled again
    assert c["count"] >= 1 and c["seconds"] > 0
    n = c["count"]
    with progress.compilations() as c2:
        f(jnp.ones(3) * 3)
    assert c2["count"] == 0
    f(jnp.ones(4))  # compiled after the block: not seen by it
    assert c["count"] == n


# --------------------------------------------------------------------------------------
# iterate: the Python-driven loop of the same compiled outer step
# --------------------------------------------------------------------------------------


def test_iterate_equals_run_and_calls_back_once_per_iteration(const_config, make_blob):
    img, _ = make_blob(2, 24, 0.15)
    a, _ = api.validate_image(img)
    f, _, _ = api.normalise(a, "minmax")
    st = initialisation.start(None, f, "otsu", num_classes=2, ndim=2, denoise=None)
    cfg = const_config.replace(mask_tol=0.0, energy_p=0.0, max_outer=5)
    args = (
        jax.random.key(0),
        jnp.asarray(f),
        jnp.asarray(st.weights),
        jnp.asarray(st.labels),
        cfg.hyper(),
        cfg.spec(),
    )
    rec = Recorder()
    s_it = alternating.iterate(*args, rec)
    s_run = alternating.run(*args)
    assert int(s_it.it) == int(s_run.it) == len(rec.events)
    assert int(s_it.status) == int(s_run.status)
    np.testing.assert_array_equal(np.asarray(s_it.labels), np.asarray(s_run.labels))
    n = int(s_run.it)
    np.testing.assert_allclose(
        np.asarray(s_it.energies[:n]), np.asarray(s_run.energies[:n]), rtol=1e-6
    )
    assert [e.energy for e in rec.events] == pytest.approx(
        np.asarray(s_run.energies[:n]).tolist(), rel=1e-6
    )


# --------------------------------------------------------------------------------------
# segment(progress=callback)
# --------------------------------------------------------------------------------------


def test_segment_progress_events_match_the_result(blob32, tiny_n2f_config, tiny_n2f_result):
    """CNN experts (non-zero train steps), shared TINY_N2F configuration; the result is the
    same as without a callback."""
    img, _ = blob32
    rec = Recorder()
    res = s2s.segment(jax.random.key(0), img, config=tiny_n2f_config, progress=rec)
    _check_events(rec.events, res)
    assert all(e.train_steps[1] >= tiny_n2f_config.train_min_steps for e in rec.events)
    np.testing.assert_array_equal(res.labels, tiny_n2f_result.labels)
    np.testing.assert_allclose(res.energies, tiny_n2f_result.energies, rtol=1e-5)
    assert res.num_outer == tiny_n2f_result.num_outer and res.status == tiny_n2f_result.status


def test_new_callback_does_not_recompile(blob32, tiny_n2f_config, make_blob):
    img, _ = blob32
    first = Recorder()
    # compiled here (or by an earlier test of this worker)
    s2s.segment(jax.random.key(0), img, config=tiny_n2f_config, progress=first)
    # the programs that segment(progress=...) runs: the Python-driven loop's init and step
    sizes = (
        alternating._init_jit._cache_size(),
        alternating._step_jit._cache_size(),
        alternating.run._cache_size(),
    )
    n_first = len(first.events)
    second, third = Recorder(), []
    img2, _ = make_blob(5, 32, 0.12)
    with progress.compilations() as c:
        r2 = s2s.segment(
            jax.random.key(1), img2, config=tiny_n2f_config.replace(lam=0.04), progress=second
        )
        r3 = s2s.segment(jax.random.key(2), img, config=tiny_n2f_config, progress=third.append)
    assert c["count"] == 0, c
    assert sizes == (
        alternating._init_jit._cache_size(),
        alternating._step_jit._cache_size(),
        alternating.run._cache_size(),
    )
    # each run's events went to its own callback only
    assert len(first.events) == n_first
    _check_events(second.events, r2)
    _check_events(third, r3)


def test_concurrent_runs_get_their_own_events(const_config, make_blob):
    cfg = const_config.replace(mask_tol=0.0, energy_p=0.0, max_outer=4)
    imgs = [make_blob(s, 24, 0.2)[0] for s in (0, 1)]
    s2s.segment(jax.random.key(0), imgs[0], config=cfg, progress=lambda e: None)  # compile first
    recs, results, errors = [Recorder(), Recorder()], [None, None], []

    def work(i):
        try:
            results[i] = s2s.segment(jax.random.key(i), imgs[i], config=cfg, progress=recs[i])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for rec, res in zip(recs, results, strict=True):
        _check_events(rec.events, res)
    assert [e.energy for e in recs[0].events] != [e.energy for e in recs[1].events]


def test_no_callback_no_events_and_same_result(const_config, make_blob, capsys):
    img, _ = make_blob(3, 24, 0.15)
    rec = Recorder()
    with_cb = s2s.segment(jax.random.key(0), img, config=const_config, progress=rec)
    without = s2s.segment(jax.random.key(0), img, config=const_config)
    assert len(rec.events) == with_cb.num_outer
    np.testing.assert_array_equal(with_cb.labels, without.labels)
    np.testing.assert_allclose(with_cb.energies, without.energies, rtol=1e-6)
    assert capsys.readouterr().err == ""  # nothing printed without config.progress


def test_config_progress_prints_one_line_per_iteration(const_config, make_blob, capsys):
    img, _ = make_blob(3, 24, 0.15)
    cfg = const_config.replace(progress=True)
    res = s2s.segment(jax.random.key(0), img, config=cfg)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("[self2seg] outer ")]
    assert len(lines) == res.num_outer
    assert lines[0].startswith("[self2seg] outer 1: energy ")
    assert f"{res.energies[-1]:.6g}" in lines[-1]
    # a callback replaces the printer
    rec = Recorder()
    s2s.segment(jax.random.key(0), img, config=cfg, progress=rec)
    assert capsys.readouterr().err == "" and len(rec.events) == res.num_outer


@pytest.mark.parametrize("bad", [42, "print", object()], ids=["int", "str", "object"])
def test_non_callable_progress_is_rejected_before_anything_runs(bad, const_config, monkeypatch):
    from self2seg_jax import experts

    def boom(*a, **k):
        raise AssertionError("progress was not validated before the scheme / Noise2Fast start")

    monkeypatch.setattr(alternating, "run", boom)
    monkeypatch.setattr(alternating, "iterate", boom)
    monkeypatch.setattr(experts, "denoise", boom)
    img = np.random.default_rng(0).uniform(size=(16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="progress must be a callable"):
        s2s.segment(
            jax.random.key(0), img, config=const_config.replace(init_denoise=True), progress=bad
        )


def test_falsy_callable_progress_still_gets_events(const_config, make_blob):
    class Log(list):
        def __call__(self, ev):
            self.append(ev)

    img, _ = make_blob(3, 24, 0.15)
    log = Log()
    res = s2s.segment(jax.random.key(0), img, config=const_config, progress=log)
    assert len(log) == res.num_outer


def test_training_steps_are_reported_from_inside_the_compiled_loop(blob32, tiny_n2f_config,
                                                                     tiny_n2f_result):
    """``progress_training=True``: one tick per validation of every CNN expert's W-step (two
    experts here), steps rising within a W-step to its recorded count; the result is the same
    as without reporting; nothing is reported outside the listener's block."""
    img, _ = blob32
    cfg = tiny_n2f_config.replace(progress_training=True)
    assert cfg.spec().train.report and not tiny_n2f_config.spec().train.report
    ticks = []
    with progress.training_listener(lambda s, v: ticks.append((s, v))):
        res = s2s.segment(jax.random.key(0), img, config=cfg)
    np.testing.assert_array_equal(res.labels, tiny_n2f_result.labels)
    every = cfg.val_every
    # experts of one W-step are stacked or mapped: count the validations of all of them
    expected = int(sum(-(-int(n) // every) for row in res.train_steps for n in row if n > 0))
    stacked = cfg.spec().batch == "vmap"  # a vmapped pair reports both at once
    assert len(ticks) == (expected // 2 if stacked else expected), (len(ticks), res.train_steps)
    steps = [s for s, _ in ticks]
    assert all(s % every == 0 and s > 0 for s in steps)
    assert max(steps) == int(res.train_steps.max())
    assert all(np.isfinite(v) and v >= 0 for _, v in ticks)
    n = len(ticks)
    s2s.segment(jax.random.key(0), img, config=cfg)  # no listener: nothing recorded
    assert len(ticks) == n


# ------------------------------------------------------------------------------ the bar


class _TTY(io.StringIO):
    def isatty(self):
        return True


def _ev(k, status=0):
    return progress.Event(k, 1.0 / k, 0.1, 10, (0, 100), status)


def test_bar_fraction_and_upper_estimate(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    bar = progress.Bar(4, 100, target="none")  # t0 = 0
    assert bar.fraction == 0 and bar.remaining() is None
    now[0] = 4.0  # compiled: the first report
    bar.training(50)
    f1 = 0.5 * progress.Bar.TRAIN_SHARE / 4
    assert bar.fraction == pytest.approx(f1)
    assert bar.remaining() is None  # no rate from one report
    now[0] = 6.0
    bar.outer(_ev(1))  # the W-step's steps are reset by the finished iteration
    assert bar.step == 0 and bar.fraction == pytest.approx(0.25)
    # the rate since the first report (compilation left out): 2 s for 0.25 - f1
    assert bar.remaining() == pytest.approx(2.0 / (0.25 - f1) * 0.75)
    bar.training(1000)  # more steps than the cap count as a full W-step
    assert bar.fraction == pytest.approx((1 + progress.Bar.TRAIN_SHARE) / 4)
    bar.outer(_ev(4, status=1))
    assert bar.fraction == 1.0


def test_bar_on_a_terminal_redraws_one_line_and_keeps_the_iteration_lines():
    out = _TTY()
    bar = progress.Bar(3, 100, name="cells.tif", stream=out)
    assert bar.target == "terminal"  # auto: a TTY stream outside a notebook
    bar.training(40)
    bar.outer(_ev(1))
    bar.close()
    text = out.getvalue()
    assert "\r\033[K[" in text and "cells.tif: outer 1/3 · training step 40/100" in text
    assert "\r\033[K  cells.tif: outer 1: energy 1, mask change 10.0000%" in text
    assert "left" in text and text.endswith("\n")
    lines = progress.Bar(3, 100, stream=io.StringIO(), prefix="> ")
    assert lines.target == "lines"  # auto: not a TTY
    lines.training(40)
    lines.outer(_ev(1))
    lines.close()
    assert lines.stream.getvalue().startswith("> outer 1: energy 1") and "\r" not in \
        lines.stream.getvalue()
    with pytest.raises(ValueError, match="target must be"):
        progress.Bar(3, 100, target="gui")


def test_bar_in_a_notebook_updates_one_html_display(monkeypatch):
    import sys
    import types

    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj.data))

    def display(obj, display_id=False):
        assert display_id is True
        shown.append(("display", obj.data))
        return Handle()

    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {})  # noqa: N806
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    fake_display = types.ModuleType("IPython.display")
    fake_display.display, fake_display.HTML = display, types.SimpleNamespace
    fake_display.HTML = lambda s: types.SimpleNamespace(data=s)
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setitem(sys.modules, "IPython.display", fake_display)
    assert progress.in_notebook()
    out = io.StringIO()
    bar = progress.Bar(2, 10, stream=out)
    assert bar.target == "notebook"
    bar.outer(_ev(1))
    bar.training(5)
    bar.outer(_ev(2, status=1))
    bar.close()
    assert shown[0][0] == "display" and {k for k, _ in shown[1:]} == {"update"}
    assert "<progress value='1.0000'" in shown[-1][1] and "outer 2: energy 0.5" in shown[-1][1]
    assert out.getvalue() == ""  # nothing on stderr in a notebook
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not progress.in_notebook()


def test_config_progress_in_segment_closes_its_bar(const_config, make_blob, monkeypatch):
    bars = []
    real = progress.Bar

    class Spy(real):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "target": "none"})
            bars.append(self)

    monkeypatch.setattr(progress, "Bar", Spy)
    img, _ = make_blob(3, 24, 0.15)
    res = s2s.segment(jax.random.key(0), img, config=const_config.replace(progress=True))
    [bar] = bars
    assert bar.closed and bar.done == res.num_outer and len(bar.log) == res.num_outer
