"""Initial regions of Self2Seg, for every kind of start (host side, NumPy, eager).

:func:`start` turns ``init`` — ``"otsu"``, a threshold, a mask or label image, :class:`Boxes`
or :class:`ClassBoxes` — into the first W-step's region weights and the initial labels, and
raises ``ValueError`` naming the problem before anything is compiled. Thresholds apply to the
normalised image (in ``[0, 1]``), or to its min–max normalised Noise2Fast-denoised version
(the paper's DSB2018 protocol) through the ``denoise`` callable; colour images are
thresholded along their first principal component.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np


class Start(NamedTuple):
    """Where the scheme starts.

    Attributes:
      weights: ``(C, *s)`` float32 region weight of each class expert in the first W-step
        (one-hot labels, or the user's boxes — pixels in no box train no expert).
      labels: ``(*s)`` int32 initial labels (box starts: pixels in no box are background).
    """

    weights: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Boxes:
    """Two-class user boxes ``(y0, x0, y1, x1)`` (half-open ``[y0, y1) x [x0, x1)``), 2-D.

    The first W-step trains the foreground expert only inside ``fg`` and the background
    expert only inside ``bg`` (paper Fig. 1, 3, 8, 10); without ``bg`` boxes the background
    expert trains on everything outside the foreground boxes.
    """

    fg: Sequence[tuple[int, int, int, int]] = ()
    bg: Sequence[tuple[int, int, int, int]] = ()


@dataclasses.dataclass(frozen=True)
class ClassBoxes:
    """Boxes per class: ``boxes[i]`` lists boxes of class ``i`` (0 = background), each
    ``(y0, x0, y1, x1)`` in 2-D or ``(z0, y0, x0, z1, y1, x1)`` in 3-D (half-open). Every
    class needs at least one box."""

    boxes: Sequence[Sequence[tuple[int, ...]]] = ()


# ----------------------------------------------------------------------------------------
# thresholds
# ----------------------------------------------------------------------------------------


def _histogram(image, nbins):
    x = np.asarray(image, np.float64).ravel()
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        raise ValueError("the threshold of a constant image is undefined")
    hist, edges = np.histogram(x, bins=nbins, range=(lo, hi))
    return hist.astype(np.float64), (edges[:-1] + edges[1:]) / 2


def otsu_threshold(image: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold (maximal between-class variance of a ``nbins`` histogram); for float
    images the same histogram and result as ``skimage.filters.threshold_otsu`` (which bins
    integer images differently); foreground is ``x > t``."""
    hist, centers = _histogram(image, nbins)
    w1 = np.cumsum(hist)
    w2 = np.cumsum(hist[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        m1 = np.cumsum(hist * centers) / w1
        m2 = (np.cumsum((hist * centers)[::-1]) / w2[::-1])[::-1]
    var = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[int(np.nanargmax(var))])


def multiotsu_thresholds(image: np.ndarray, classes: int, nbins: int = 256) -> np.ndarray:
    """Multi-level Otsu: ``classes - 1`` thresholds maximising the between-class variance.

    Exact optimum over the ``nbins`` histogram (as ``skimage.filters.threshold_multiotsu``) by
    dynamic programming over contiguous bin ranges, ``O(classes * nbins^2)``. Class ``k`` is
    ``t[k-1] < x <= t[k]`` (``np.digitize(x, t, right=True)``).
    """
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    hist, centers = _histogram(image, nbins)
    if np.count_nonzero(hist) < classes:
        raise ValueError(
            f"the image has only {np.count_nonzero(hist)} distinct intensity levels; "
            f"cannot initialise {classes} classes by multi-level Otsu")
    p = hist / hist.sum()
    P = np.concatenate([[0.0], np.cumsum(p)])
    S = np.concatenate([[0.0], np.cumsum(p * centers)])
    # maximise sum over classes of (S[j] - S[i])^2 / (P[j] - P[i]) for bins i..j-1
    ii, jj = np.meshgrid(np.arange(nbins + 1), np.arange(nbins + 1), indexing="ij")
    w = P[jj] - P[ii]
    with np.errstate(invalid="ignore", divide="ignore"):
        score = (S[jj] - S[ii]) ** 2 / np.where(w > 0, w, 1.0)
        score = np.where((jj > ii) & (w > 0), score, -np.inf)
    best = score[0].copy()  # best[j]: one class on bins 0..j-1
    arg = np.zeros((classes, nbins + 1), int)
    for k in range(1, classes):
        cand = best[:, None] + score
        arg[k] = np.argmax(cand, axis=0)
        best = cand[arg[k], np.arange(nbins + 1)]
    cuts, j = [], nbins
    for k in range(classes - 1, 0, -1):
        j = arg[k][j]
        cuts.append(j)
    return np.array([centers[c - 1] for c in sorted(cuts)])


def first_principal_component(g: np.ndarray) -> np.ndarray:
    """Project an ``(L, *s)`` image on the first principal component of its pixel colours
    (oriented to correlate positively with the channel mean), so colour differences that
    cancel in the channel mean stay visible to a threshold."""
    x = g.reshape(g.shape[0], -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(x @ x.T)
    proj = vecs[:, -1] @ x
    if np.dot(proj, x.mean(axis=0)) < 0:
        proj = -proj
    return proj.reshape(g.shape[1:])


# ----------------------------------------------------------------------------------------
# labels and boxes
# ----------------------------------------------------------------------------------------


def check_labels(labels, shape, num_classes: int, name: str = "initial mask") -> np.ndarray:
    """Validate a boolean / 0-1 mask (two classes) or an integer label image ``0..C-1`` with
    every class present; returns int32 labels."""
    a = np.asarray(labels)
    if a.shape != tuple(shape):
        raise ValueError(f"{name} has shape {a.shape}, the image has spatial shape {tuple(shape)}")
    if a.dtype == bool:
        a = a.astype(np.int32)
    if not np.issubdtype(a.dtype, np.integer) and not np.all(np.isin(a, np.arange(num_classes))):
        raise ValueError(f"{name} must be an integer (or boolean) array, got dtype {a.dtype}")
    if a.min() < 0 or a.max() >= num_classes:
        what = "boolean (or 0/1)" if num_classes == 2 else f"labels 0..{num_classes - 1}"
        raise ValueError(f"{name} must be {what}, got values in [{a.min()}, {a.max()}]")
    a = a.astype(np.int32)
    present = np.bincount(a.ravel(), minlength=num_classes) > 0
    if num_classes == 2 and not present[1]:
        raise ValueError(f"{name} is empty (no foreground pixel)")
    if num_classes == 2 and not present[0]:
        raise ValueError(f"{name} is full (no background pixel)")
    if not present.all():
        raise ValueError(f"{name} has no pixel of class(es) {np.flatnonzero(~present).tolist()}")
    return a


def _box_mask(boxes, shape, which: str) -> np.ndarray:
    nd = len(shape)
    m = np.zeros(shape, bool)
    for b in boxes:
        try:
            v = tuple(int(t) for t in b)
        except (TypeError, ValueError):
            v = ()
        if len(v) != 2 * nd:
            what = "four" if nd == 2 else str(2 * nd)
            raise ValueError(f"{which} box {b!r} is not {what} integers "
                             f"({'y0, x0, y1, x1' if nd == 2 else 'z0, y0, x0, z1, y1, x1'})")
        lo, hi = v[:nd], v[nd:]
        if not all(0 <= a < c <= n for a, c, n in zip(lo, hi, shape)):
            raise ValueError(f"{which} box {v} is empty or outside the image of shape "
                             f"{tuple(shape)} (need 0 <= start < end <= size on every axis)")
        m[tuple(slice(a, c) for a, c in zip(lo, hi))] = True
    return m


def box_weights(init: Boxes | ClassBoxes, shape, num_classes: int) -> np.ndarray:
    """Bool ``(C, *shape)`` first-W-step regions from boxes (validated)."""
    if isinstance(init, Boxes):
        if num_classes != 2:
            raise ValueError("Boxes(fg, bg) is a two-class start; use ClassBoxes for more classes")
        if len(shape) != 2:
            raise ValueError("Boxes are 2-D; use ClassBoxes with (z0, y0, x0, z1, y1, x1) for "
                             "volumes")
        if not init.fg:
            raise ValueError("Boxes needs at least one foreground box (fg=[(y0, x0, y1, x1)])")
        fg = _box_mask(init.fg, shape, "foreground")
        bg = _box_mask(init.bg, shape, "background") if init.bg else ~fg
        if not bg.any():
            raise ValueError("the foreground boxes cover the whole image: no background left")
        w = np.stack([bg, fg])
    else:
        if len(init.boxes) != num_classes:
            raise ValueError(f"ClassBoxes has boxes for {len(init.boxes)} classes, num_classes is "
                             f"{num_classes}")
        for i, bs in enumerate(init.boxes):
            if not bs:
                raise ValueError(f"class {i} has no box")
        w = np.stack([_box_mask(bs, shape, f"class {i}") for i, bs in enumerate(init.boxes)])
    if (w.sum(axis=0) > 1).any():
        raise ValueError("boxes of different classes overlap" if num_classes > 2
                         else "foreground and background boxes overlap")
    return w


# ----------------------------------------------------------------------------------------
# the start
# ----------------------------------------------------------------------------------------


#: The threshold starts by name: foreground brighter ("otsu") or darker ("otsu_dark").
OTSU_INITS = ("otsu", "otsu_dark")
_INIT_CHOICES = ("use 'otsu' (bright objects), 'otsu_dark' (dark objects), a threshold in (0, 1), "
                 "a mask or label image, Boxes or ClassBoxes")


def start(key, f: np.ndarray, init, *, num_classes: int, ndim: int,
          denoise: Callable | None) -> Start:
    """Resolve ``init`` for the normalised image ``f`` (``(*s)`` or channel-first ``(L, *s)``).

    Args:
      key: PRNG key handed to ``denoise``.
      init: ``"otsu"`` (multi-level for ``C > 2``; the foreground is the brighter class, class
        ``k`` brighter than class ``k - 1``), ``"otsu_dark"`` (the same thresholds, the order
        reversed: the foreground is the darker class, the background the brightest), a
        threshold in ``(0, 1)`` (two classes, foreground brighter), a boolean / 0-1 mask (two
        classes) or integer label image, :class:`Boxes` (two classes, 2-D) or
        :class:`ClassBoxes`.
      denoise: ``(key, f) -> g`` image to threshold instead of ``f`` (None: ``f`` itself).
    """
    spatial = f.shape[f.ndim - ndim:]
    c = num_classes
    if isinstance(init, (Boxes, ClassBoxes)):
        w = box_weights(init, spatial, c)
        labels = np.where(w.any(axis=0), np.argmax(w, axis=0), 0).astype(np.int32)
        return Start(w.astype(np.float32), labels)
    if isinstance(init, str):
        if init not in OTSU_INITS:
            raise ValueError(f"unknown init {init!r}: {_INIT_CHOICES}")
        g = _to_threshold(key, f, ndim, denoise)
        if c == 2:
            labels = (g > otsu_threshold(g)).astype(np.int32)
            name = "Otsu initial mask"
        else:
            labels = np.digitize(g, multiotsu_thresholds(g, c), right=True).astype(np.int32)
            name = f"multi-level Otsu start ({c} classes)"
        if init == "otsu_dark":
            labels = (c - 1 - labels).astype(np.int32)
            name += " (dark objects)"
    elif isinstance(init, (bool, np.bool_)) or init is None:
        raise ValueError(f"unknown init {init!r}: {_INIT_CHOICES}")
    elif isinstance(init, (int, float, np.integer, np.floating)):
        eps = float(init)
        if c != 2:
            raise ValueError(f"unknown init {init!r} for {c} classes: a threshold is a two-class "
                             "start; use 'otsu', a label image or ClassBoxes")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"threshold init must be in (0, 1) (the image is normalised to "
                             f"[0, 1]), got {eps}")
        labels = (_to_threshold(key, f, ndim, denoise) > eps).astype(np.int32)
        name = f"initial mask (threshold {eps})"
    else:
        try:
            labels = np.asarray(init)
        except Exception:
            raise ValueError(f"unknown init of type {type(init).__name__}") from None
        if labels.ndim != ndim:
            raise ValueError(f"unknown init: arrays must be masks or label images of the image's "
                             f"spatial shape {tuple(spatial)}, got shape {labels.shape}")
        name = "initial mask" if c == 2 else "initial label image"
    labels = check_labels(labels, spatial, c, name)
    onehot = labels[None] == np.arange(c).reshape((c,) + (1,) * ndim)
    return Start(onehot.astype(np.float32), labels)


def _to_threshold(key, f, ndim, denoise) -> np.ndarray:
    """The image a threshold start looks at, min–max normalised to ``[0, 1]``."""
    g = np.asarray(denoise(key, f)) if denoise is not None else f
    if not np.all(np.isfinite(g)):
        raise FloatingPointError("Noise2Fast denoising of the start produced non-finite values")
    if g.ndim > ndim:
        g = first_principal_component(g)
    return (g - g.min()) / max(float(g.max() - g.min()), 1e-12)
