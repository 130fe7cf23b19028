"""The "Self2Seg" dock widget: choose an image layer, a preset, λ, µ, the number of classes and
optional foreground/background box layers; Run segments it off the GUI thread (napari's
thread worker, progress per outer iteration in the activity dock) and adds or updates the
result layers; Cancel stops the run between two outer iterations.

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


class Self2SegWidget(widgets.Container):
    """Dock widget; ``viewer`` is given by napari."""

    def __init__(self, viewer=None):
        import napari

        self._viewer = viewer if viewer is not None else napari.current_viewer()
        self._image = widgets.ComboBox(label="image", choices=self._layers("Image"))
        self._preset = widgets.ComboBox(label="preset", choices=list(PRESETS), value="nuclei")
        self._lam = widgets.FloatSpinBox(label="λ (TV weight)", value=Self2SegConfig().lam,
                                         min=1e-4, max=10.0, step=0.005)
        self._mu = widgets.FloatSpinBox(label="µ (reference mask)", value=Self2SegConfig().mu,
                                        min=0.0, max=10.0, step=0.005)
        self._classes = widgets.SpinBox(label="classes", value=2, min=2, max=8)
        self._fg = widgets.ComboBox(label="foreground boxes",
                                    choices=lambda _: [None] + self._layers("Shapes"))
        self._bg = widgets.ComboBox(label="background boxes",
                                    choices=lambda _: [None] + self._layers("Shapes"))
        self._seed = widgets.SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self._run = widgets.PushButton(text="Run")
        self._cancel = widgets.PushButton(text="Cancel", enabled=False)
        self._status = widgets.Label(value="")
        super().__init__(widgets=[self._image, self._preset, self._lam, self._mu, self._classes,
                                  self._fg, self._bg, self._seed, self._run, self._cancel,
                                  self._status])
        self._image.choices = lambda _: self._layers("Image")
        self._preset.changed.connect(self._on_preset)
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._viewer.layers.events.inserted.connect(self._refresh)
        self._viewer.layers.events.removed.connect(self._refresh)
        self.worker = None
        self.last_result = None
        self.config_override: Self2SegConfig | None = None  # scripts and tests: replaces the form

    # -- choices -------------------------------------------------------------------------
    def _layers(self, kind: str) -> list:
        import napari.layers

        cls = getattr(napari.layers, kind)
        return [lay for lay in self._viewer.layers if isinstance(lay, cls)]

    def _refresh(self, *_):
        for w in (self._image, self._fg, self._bg):
            w.reset_choices()

    def _on_preset(self, name):
        cfg = Self2SegConfig.preset(name)
        self._lam.value, self._mu.value = cfg.lam, cfg.mu

    # -- the run -------------------------------------------------------------------------
    def config(self) -> Self2SegConfig:
        if self.config_override is not None:
            return self.config_override
        return Self2SegConfig.preset(self._preset.value, lam=float(self._lam.value),
                                     mu=float(self._mu.value))

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
        if bg and not fg:
            raise ValueError("background boxes need foreground boxes too")
        if fg:
            if kw["num_classes"] != 2 or kw.get("volume"):
                raise ValueError("boxes start two-class 2-D runs; for more classes or stacks "
                                 "use the Python API (ClassBoxes)")
            kw["init"] = Boxes(fg=fg, bg=bg)
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

        def work():
            import jax

            return (yield from s2s.segment_iter(jax.random.key(key_seed), data, config=cfg,
                                                **kw))

        worker = create_worker(work, _progress={"total": cfg.max_outer,
                                                "desc": f"Self2Seg {layer.name}"})
        worker.yielded.connect(self._on_event)
        worker.returned.connect(lambda res: self._show(layer, res, kw))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._run.enabled, self._cancel.enabled = False, True
        self._status.value = "compiling and training ..."
        worker.start()
        return worker

    def cancel(self, *_):
        if self.worker is not None:
            self.worker.quit()
            self._status.value = "cancelling ..."

    def _on_event(self, ev):
        self._status.value = (f"outer {ev.outer}: mask change {ev.change:.2%}, "
                              f"train steps {list(ev.train_steps)}")

    def _on_error(self, e):
        from napari.utils.notifications import show_error

        show_error(_one_line(e))
        self._status.value = f"error: {_one_line(e)}"

    def _on_finished(self):
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
        self._status.value = (f"done: {res.num_outer} outer iterations ({res.status}), "
                              f"foreground {float(res.mask.mean()):.1%}")
