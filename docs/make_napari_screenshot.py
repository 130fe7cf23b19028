"""The README's napari screenshot: the Self2Seg widget docked next to the noisy sample and its
result layers, written to ``docs/napari.png``. Needs a display (run under ``xvfb-run`` on a
headless machine) and ``pip install -e ".[napari]"``.

    xvfb-run -a python docs/make_napari_screenshot.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from self2seg_jax.napari_plugin import _sample, _widget

OUT = Path(__file__).with_name("napari.png")


def main() -> int:
    viewer = napari.Viewer(show=True)
    [(img, meta)] = _sample.noisy_nuclei()
    viewer.add_image(img, **meta)
    w = _widget.Self2SegWidget(viewer)
    viewer.window.add_dock_widget(w, name="Self2Seg", area="right")
    w.run()
    while w.worker is not None:  # wait for the run, keeping the GUI alive
        QApplication.processEvents()
        time.sleep(0.05)
    if "noisy nuclei labels" not in viewer.layers:
        print(f"run failed: {w._status.value}", file=sys.stderr)
        return 1
    viewer.layers["noisy nuclei labels"].opacity = 0.4
    viewer.layers["noisy nuclei denoised"].visible = False
    viewer.window.resize(1200, 700)
    QApplication.processEvents()
    viewer.screenshot(str(OUT), canvas_only=False)
    print(f"wrote {OUT} ({w._status.value})")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
