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


# ----------------------------------------------------------------------------------------
# Multi-class initialisation (multi-level Otsu, label images, boxes per class), N-D.
# ----------------------------------------------------------------------------------------


def multiotsu_thresholds(image: np.ndarray, classes: int, nbins: int = 256) -> np.ndarray:
    """Multi-level Otsu: ``classes - 1`` thresholds maximising the between-class variance.

    Exact optimum over the ``nbins`` histogram (same histogram and objective as
    ``skimage.filters.threshold_multiotsu``) by dynamic programming over contiguous bin
    ranges, ``O(classes * nbins^2)``. Class ``k`` is ``t[k-1] < x <= t[k]``
    (``np.digitize(x, t, right=True)``).

    Raises:
      ValueError: fewer than ``classes`` distinct occupied histogram bins.
    """
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    x = np.asarray(image, np.float64).ravel()
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        raise ValueError("multi-level Otsu of a constant image is undefined")
    hist, edges = np.histogram(x, bins=nbins, range=(lo, hi))
    if np.count_nonzero(hist) < classes:
        raise ValueError(
            f"the image has only {np.count_nonzero(hist)} distinct intensity levels; "
            f"cannot initialise {classes} classes by multi-level Otsu"
        )
    centers = (edges[:-1] + edges[1:]) / 2
    p = hist.astype(np.float64) / hist.sum()
    P = np.concatenate([[0.0], np.cumsum(p)])
    S = np.concatenate([[0.0], np.cumsum(p * centers)])
    # between-class variance = sum_k S_k^2 / P_k - const: maximise sum over classes of
    # score(i, j) = (S[j] - S[i])^2 / (P[j] - P[i]) for bins i..j-1 (empty ranges -> -inf).
    n = nbins
    ii, jj = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    w = P[jj] - P[ii]
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where((jj > ii) & (w > 0), (S[jj] - S[ii]) ** 2 / np.where(w > 0, w, 1.0), -np.inf)
    best = score[0].copy()  # best[j]: one class on bins 0..j-1
    arg = np.zeros((classes, n + 1), int)
    for k in range(1, classes):
        cand = best[:, None] + score  # (i, j)
        arg[k] = np.argmax(cand, axis=0)
        best = cand[arg[k], np.arange(n + 1)]
    cuts, j = [], n
    for k in range(classes - 1, 0, -1):
        j = arg[k][j]
        cuts.append(j)
    cuts = sorted(cuts)
    return np.array([centers[c - 1] for c in cuts])


@dataclasses.dataclass(frozen=True)
class ClassBoxes:
    """Boxes per class for multi-class initialisation: ``boxes[i]`` is a list of boxes of
    class ``i``, each ``(y0, x0, y1, x1)`` in 2-D or ``(z0, y0, x0, z1, y1, x1)`` in 3-D
    (half-open). Class 0 is the background. Every class needs at least one box."""

    boxes: Sequence[Sequence[tuple[int, ...]]] = ()


def _box_mask_nd(boxes, shape, which) -> np.ndarray:
    nd = len(shape)
    m = np.zeros(shape, bool)
    for b in boxes:
        try:
            v = tuple(int(t) for t in b)
        except (TypeError, ValueError):
            raise ValueError(f"{which} box {b!r} is not {2 * nd} integers") from None
        if len(v) != 2 * nd:
            raise ValueError(f"{which} box {b!r} must have {2 * nd} integers for a {nd}-D image")
        lo, hi = v[:nd], v[nd:]
        if not all(0 <= a < c <= n for a, c, n in zip(lo, hi, shape)):
            raise ValueError(f"{which} box {v} is empty or outside the image of shape {tuple(shape)}")
        m[tuple(slice(a, c) for a, c in zip(lo, hi))] = True
    return m


def class_weights_from_boxes(boxes: ClassBoxes, shape, num_classes: int) -> np.ndarray:
    """Bool ``(C, *shape)`` first-W-step regions from :class:`ClassBoxes` (validated)."""
    if len(boxes.boxes) != num_classes:
        raise ValueError(f"ClassBoxes has boxes for {len(boxes.boxes)} classes, num_classes is {num_classes}")
    out = []
    for i, bs in enumerate(boxes.boxes):
        if not bs:
            raise ValueError(f"class {i} has no box")
        out.append(_box_mask_nd(bs, shape, f"class {i}"))
    w = np.stack(out)
    if (w.sum(axis=0) > 1).any():
        raise ValueError("boxes of different classes overlap")
    return w


def check_labels(labels, shape, num_classes: int, name: str = "initial label image") -> np.ndarray:
    """Validate an integer label image with values ``0..C-1``, every class present."""
    a = np.asarray(labels)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, the image has spatial shape {tuple(shape)}")
    if a.dtype == bool:
        a = a.astype(np.int32)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer (or boolean) array, got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= num_classes:
        raise ValueError(f"{name} has values in [{a.min()}, {a.max()}], expected 0..{num_classes - 1}")
    missing = sorted(set(range(num_classes)) - set(np.unique(a).tolist()))
    if missing:
        raise ValueError(f"{name} has no pixel of class(es) {missing}")
    return a.astype(np.int32)
