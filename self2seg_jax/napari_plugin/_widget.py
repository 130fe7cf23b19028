"""The "Self2Seg" dock widget: choose an image layer, a preset, λ, µ, the number of classes and
optional foreground/background box layers or one class-box layer (Shapes with a ``class``
feature); Run segments it off the GUI thread (napari's thread worker, progress per outer
iteration in the activity dock, training steps in the status line with ``progress_training``)
and adds or updates the result layers; Cancel stops the run between two outer iterations.

Layouts follow the layer: an RGB layer is a colour image (channels last), any other 3-D layer a
``(z, y, x)`` stack, a 2-D layer an image.
"""

from __future__ import annotations

import numpy as np
from magicgui import widgets

from self2seg_jax.config import PRESETS, Self2SegConfig


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def boxes_of(layer) -> list[tuple[int, int, int, int]]:
    """``(y0, x0, y1, x1)`` bounding boxes (half-open, in pixels) of a Shapes layer's shapes
    (their last two coordinates; a 3-D layer's shapes are boxes on every slice)."""
    out = []
    for shape in layer.data:
        yx = np.asarray(shape)[:, -2:]
        y0, x0 = np.floor(yx.min(0)).astype(int)
        y1, x1 = np.ceil(yx.max(0)).astype(int)
        out.append((int(y0), int(x0), int(y1), int(x1)))
    return out


def class_boxes_of(layer, num_classes: int, ndim: int):
    """:class:`~self2seg_jax.initialisation.ClassBoxes` from a Shapes layer whose shapes carry a
    ``class`` feature (0 = background, 1 .. C-1). 2-D: ``(y0, x0, y1, x1)`` boxes; a ``(z, y,
    x)`` stack: a rectangle drawn on slice ``z`` is the box ``(z, y0, x0, z + 1, y1, x1)``.
    Raises ``ValueError`` naming what is missing."""
    from self2seg_jax.initialisation import ClassBoxes

    feats = getattr(layer, "features", None)
    if feats is None or "class" not in getattr(feats, "columns", ()):
        raise ValueError(f"Shapes layer {layer.name!r} has no 'class' feature: give every box "
                         "its class (0 = background) in the layer's features table")
    classes = [int(c) for c in np.asarray(feats["class"])]
    per = [[] for _ in range(num_classes)]
    for shape, c in zip(layer.data, classes):
        if not 0 <= c < num_classes:
            raise ValueError(f"box of class {c} in layer {layer.name!r}: classes are "
                             f"0..{num_classes - 1}")
        pts = np.asarray(shape)
        (y0, x0), (y1, x1) = np.floor(pts[:, -2:].min(0)).astype(int), np.ceil(
            pts[:, -2:].max(0)).astype(int)
        if ndim == 3:
            if pts.shape[1] < 3:
                raise ValueError(f"layer {layer.name!r}: 2-D boxes cannot start a (z, y, x) stack")
            z = int(round(float(pts[0, -3])))
            per[c].append((z, int(y0), int(x0), z + 1, int(y1), int(x1)))
        else:
            per[c].append((int(y0), int(x0), int(y1), int(x1)))
    missing = [i for i, b in enumerate(per) if not b]
    if missing:
        raise ValueError(f"layer {layer.name!r} has no box of class(es) {missing}: every class "
                         "needs one")
    return ClassBoxes(per)


class Self2SegWidget(widgets.Container):
    """Dock widget; ``viewer`` is given by napari."""

    def __init__(self, viewer=None):
        import napari

        self._viewer = viewer if viewer is not None else napari.current_viewer()
        self._image = widgets.ComboBox(label="image", choices=self._layers("Image"))
        self._preset = widgets.ComboBox(label="preset", choices=list(PRESETS), value="nuclei")
        self._lam = widgets.FloatSpinBox(label="λ (TV weight)", value=Self2SegConfig().lam,
                                         min=1e-4, max=10.0, step=0.005)
        self._lam_auto = widgets.CheckBox(text="choose λ from the image's noise (auto)",
                                          value=False)
        self._mu = widgets.FloatSpinBox(label="µ (reference mask)", value=Self2SegConfig().mu,
                                        min=0.0, max=10.0, step=0.005)
        self._classes = widgets.SpinBox(label="classes", value=2, min=2, max=8)
        self._objects = widgets.ComboBox(label="objects (Otsu start)", value="bright",
                                         choices=["bright", "dark"])
        self._fg = widgets.ComboBox(label="foreground boxes",
                                    choices=lambda _: [None] + self._layers("Shapes"))
        self._bg = widgets.ComboBox(label="background boxes",
                                    choices=lambda _: [None] + self._layers("Shapes"))
        self._cls = widgets.ComboBox(label="class boxes ('class' feature)",
                                     choices=lambda _: [None] + self._layers("Shapes"))
        self._seed = widgets.SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self._run = widgets.PushButton(text="Run")
        self._cancel = widgets.PushButton(text="Cancel", enabled=False)
        self._status = widgets.Label(value="")
        super().__init__(widgets=[self._image, self._preset, self._lam, self._lam_auto, self._mu,
                                  self._classes, self._objects,
                                  self._fg, self._bg, self._cls, self._seed, self._run,
                                  self._cancel,
                                  self._status])
        self._image.choices = lambda _: self._layers("Image")
        self._preset.changed.connect(self._on_preset)
        self._lam_auto.changed.connect(lambda on: setattr(self._lam, "enabled", not on))
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._viewer.layers.events.inserted.connect(self._refresh)
        self._viewer.layers.events.removed.connect(self._refresh)
        self.worker = None
        self.last_result = None
        self.config_override: Self2SegConfig | None = None  # scripts and tests: replaces the form
        self.last_tick = None
        self._ticker = None
        self._outer_done = 0

    # -- choices -------------------------------------------------------------------------
    def _layers(self, kind: str) -> list:
        import napari.layers

        cls = getattr(napari.layers, kind)
        return [lay for lay in self._viewer.layers if isinstance(lay, cls)]

    def _refresh(self, *_):
        for w in (self._image, self._fg, self._bg, self._cls):
            w.reset_choices()

    def _on_preset(self, name):
        cfg = Self2SegConfig.preset(name)
        self._lam.value, self._mu.value = cfg.lam, cfg.mu

    # -- the run -------------------------------------------------------------------------
    def config(self) -> Self2SegConfig:
        if self.config_override is not None:
            return self.config_override
        lam = "auto" if self._lam_auto.value else float(self._lam.value)
        return Self2SegConfig.preset(self._preset.value, lam=lam, mu=float(self._mu.value))

    def _request(self):
        """``(layer, data, keyword arguments of segment_iter)``; ``ValueError`` if unusable."""
        from self2seg_jax.initialisation import Boxes

        layer = self._image.value
        if layer is None:
            raise ValueError("no image layer: open an image (File > Open Sample > Self2Seg)")
        data = np.asarray(layer.data)
        kw = {"num_classes": int(self._classes.value)}
        if getattr(layer, "rgb", False):
            kw["channel_axis"] = -1
        elif data.ndim == 3:
            kw["volume"] = True
        elif data.ndim != 2:
            raise ValueError(f"layer {layer.name!r} has shape {data.shape}; supported: 2-D, RGB "
                             "or a (z, y, x) stack")
        from self2seg_jax import api

        # eager checks in the GUI thread: a bad image is a notification, not a worker crash
        api.validate_image(data, channel_axis=kw.get("channel_axis"),
                           volume=kw.get("volume", False))
        fg = boxes_of(self._fg.value) if self._fg.value is not None else []
        bg = boxes_of(self._bg.value) if self._bg.value is not None else []
        if self._cls.value is not None:
            if fg or bg:
                raise ValueError("choose either class boxes or foreground/background boxes")
            if kw.get("channel_axis") is not None:
                raise ValueError("class boxes start grey-value images and stacks; for colour "
                                 "images use foreground/background boxes or no boxes")
            kw["init"] = class_boxes_of(self._cls.value, kw["num_classes"],
                                        3 if kw.get("volume") else 2)
            return layer, data, kw
        if bg and not fg:
            raise ValueError("background boxes need foreground boxes too")
        if fg:
            if kw["num_classes"] != 2 or kw.get("volume"):
                raise ValueError("foreground/background boxes start two-class 2-D runs; for "
                                 "more classes or stacks use class boxes")
            kw["init"] = Boxes(fg=fg, bg=bg)
        elif self._objects.value == "dark":  # no boxes: an Otsu start, foreground the darker side
            kw["init"] = "otsu_dark"
        return layer, data, kw

    def run(self, *_):
        """Start a run (from the Run button); returns the worker."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error

        import self2seg_jax as s2s

        try:
            layer, data, kw = self._request()
            cfg = self.config()
        except ValueError as e:
            show_error(_one_line(e))
            self._status.value = f"error: {_one_line(e)}"
            return None
        key_seed = int(self._seed.value)
        self.last_tick = None  # (steps, validation score) of the W-step in progress

        def on_tick(step, score):  # compute thread: store only; the GUI timer shows it
            self.last_tick = (step, score)

        def work():
            import jax

            from self2seg_jax.progress import training_listener

            with training_listener(on_tick):
                return (yield from s2s.segment_iter(jax.random.key(key_seed), data,
                                                    config=cfg, **kw))

        worker = create_worker(work, _progress={"total": cfg.max_outer,
                                                "desc": f"Self2Seg {layer.name}"})
        worker.yielded.connect(self._on_event)
        worker.returned.connect(lambda res: self._show(layer, res, kw))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._run.enabled, self._cancel.enabled = False, True
        self._status.value = "compiling and training ..."
        self._outer_done = 0
        if cfg.progress_training:
            self._start_ticker(cfg, layer.name)
        worker.start()
        return worker

    def _start_ticker(self, cfg, name: str):
        """Show the experts' training steps (reported from inside the compiled loop with
        ``progress_training``) in the status line and in the description of the run's bar in
        the activity dock, polled from the GUI thread."""
        from qtpy.QtCore import QTimer

        def show():
            if self.last_tick is not None and self.worker is not None:
                step, score = self.last_tick
                where = (f"outer {self._outer_done + 1}/{cfg.max_outer}: training step "
                         f"{step}/{cfg.train_max_steps}")
                self._status.value = f"{where}, validation {score:.4g}"
                pbar = getattr(self.worker, "pbar", None)
                if pbar is not None:
                    pbar.set_description(f"Self2Seg {name}: {where}")

        self._ticker = QTimer()
        self._ticker.timeout.connect(show)
        self._ticker.start(200)

    def cancel(self, *_):
        if self.worker is not None:
            self.worker.quit()
            self._status.value = "cancelling ..."

    def _on_event(self, ev):
        self._outer_done = ev.outer
        self.last_tick = None
        self._status.value = (f"outer {ev.outer}: mask change {ev.change:.2%}, "
                              f"train steps {list(ev.train_steps)}")

    def _on_error(self, e):
        from napari.utils.notifications import show_error

        show_error(_one_line(e))
        self._status.value = f"error: {_one_line(e)}"

    def _on_finished(self):
        if getattr(self, "_ticker", None) is not None:
            self._ticker.stop()
            self._ticker = None
        self._run.enabled, self._cancel.enabled = True, False
        if self.worker is not None and self.worker.abort_requested:
            self._status.value = "cancelled"
        self.worker = None

    def _show(self, layer, res, kw):
        """Add (or update) ``<name> labels`` and ``<name> denoised``."""
        self.last_result = res
        labels = res.labels.astype(np.uint8) if kw["num_classes"] > 2 else \
            res.mask.astype(np.uint8)
        den = res.denoised.astype(np.float32)
        for name, value, add in ((f"{layer.name} labels", labels, self._viewer.add_labels),
                                 (f"{layer.name} denoised", den, self._viewer.add_image)):
            if name in self._viewer.layers:
                self._viewer.layers[name].data = value
            else:
                add(value, name=name)
        chosen = f", λ {res.lam:g} (auto)" if self.config().lam == "auto" else ""
        self._status.value = (f"done: {res.num_outer} outer iterations ({res.status}){chosen}, "
                              f"foreground {float(res.mask.mean()):.1%}")
        from self2seg_jax import api

        drift = api.drift_message(res.mask_changes, res.status)
        if drift is not None:  # warnings of the worker thread would only reach stderr
            from napari.utils.notifications import show_warning

            show_warning(drift)
            self._status.value += " — the mask was drifting (see the warning)"
