"""Initial regions for Self2Seg: Otsu / fixed threshold, a user mask, or user boxes.

Host-side (NumPy) and eager: everything here runs before tracing and raises ``ValueError``
with a message naming the problem.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


def otsu_threshold(image: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold (maximal between-class variance of a ``nbins`` histogram).

    Same algorithm and histogram as ``skimage.filters.threshold_otsu``; foreground is
    ``image > threshold``.
    """
    x = np.asarray(image, np.float64).ravel()
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        raise ValueError("Otsu threshold of a constant image is undefined")
    hist, edges = np.histogram(x, bins=nbins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    hist = hist.astype(np.float64)
    w1 = np.cumsum(hist)
    w2 = np.cumsum(hist[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = np.cumsum(hist * centers) / w1
        m2 = (np.cumsum((hist * centers)[::-1]) / w2[::-1])[::-1]
    var = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[int(np.nanargmax(var))])


@dataclasses.dataclass(frozen=True)
class Boxes:
    """User boxes ``(y0, x0, y1, x1)`` (half-open pixel ranges ``[y0, y1) x [x0, x1)``).

    With boxes the first W-step trains the foreground expert only inside ``fg`` and the
    background expert only inside ``bg`` (paper Fig. 1, 3, 8, 10); if ``bg`` is empty the
    background expert trains on everything outside the foreground boxes.
    """

    fg: Sequence[tuple[int, int, int, int]] = ()
    bg: Sequence[tuple[int, int, int, int]] = ()


def _box_mask(boxes, shape, which) -> np.ndarray:
    m = np.zeros(shape, bool)
    h, w = shape
    for b in boxes:
        try:
            y0, x0, y1, x1 = (int(v) for v in b)
        except (TypeError, ValueError):
            raise ValueError(f"{which} box {b!r} is not four integers (y0, x0, y1, x1)") from None
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(
                f"{which} box {(y0, x0, y1, x1)} is empty or outside the {h}x{w} image "
                "(need 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width)"
            )
        m[y0:y1, x0:x1] = True
    return m


def check_mask(mask: np.ndarray, shape, name: str = "initial mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape}, the image has shape {tuple(shape)}")
    if m.dtype != bool:
        if not np.all(np.isin(m, (0, 1))):
            raise ValueError(f"{name} must be boolean (or 0/1), got values other than 0 and 1")
        m = m.astype(bool)
    if not m.any():
        raise ValueError(f"{name} is empty (no foreground pixel)")
    if m.all():
        raise ValueError(f"{name} is full (no background pixel)")
    return m


def regions_from_boxes(boxes: Boxes, shape) -> tuple[np.ndarray, np.ndarray]:
    """``(fg_weight, bg_weight)`` boolean arrays from :class:`Boxes`."""
    if not boxes.fg:
        raise ValueError("Boxes needs at least one foreground box (fg=[(y0, x0, y1, x1)])")
    fg = _box_mask(boxes.fg, shape, "foreground")
    bg = _box_mask(boxes.bg, shape, "background") if boxes.bg else ~fg
    if (fg & bg).any():
        raise ValueError("foreground and background boxes overlap")
    if not bg.any():
        raise ValueError("the foreground boxes cover the whole image: no background left")
    return fg, bg
