"""Figures of a result: what the CLI writes as ``<name>_overlay.png``.

* :func:`overlay_rgb` — the image at its own resolution with the segmentation drawn on it
  (pure NumPy, no matplotlib: the CLI's default, ``--figure overlay``). Importing matplotlib and
  drawing a figure costs a ``self2seg segment`` process about a second on a 2-core CPU, and a
  figure panel shows a 2048^2 image at a fifth of its resolution.
* :func:`overview_figure` — input | denoised | mask contour | energy per outer iteration
  (``--figure overview``; the demo's default). A plain :class:`matplotlib.figure.Figure` (no
  ``pyplot``): building it neither changes the matplotlib backend nor registers it with a GUI,
  so it can be made from scripts, worker threads or a notebook alike and needs no
  ``plt.close``; save it with ``fig.savefig(...)`` or :func:`self2seg_jax.io.write_figure`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

# class 1, 2, ... (cycled): yellow, magenta, lime, orange, sky blue, red
CLASS_COLOURS = np.array([[255, 255, 0], [255, 0, 255], [0, 255, 0], [255, 140, 0],
                          [0, 170, 255], [255, 0, 0]], np.float32) / 255.0
GT_COLOUR = np.array([0, 255, 255], np.float32) / 255.0  # cyan


def display_range(image) -> tuple[float, float]:
    """Grey-level window of a figure: the 0.5 / 99.5 percentiles of ``image`` (its min / max if
    those coincide)."""
    img = np.asarray(image, np.float32)
    lo, hi = (float(v) for v in np.percentile(img, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max()) + 1e-12
    return lo, hi


def _edges(labels: np.ndarray) -> np.ndarray:
    """``(h, w)`` bool: pixels with a 4-neighbour of another label."""
    e = np.zeros(labels.shape, bool)
    for ax in (0, 1):
        d = np.diff(labels, axis=ax) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        e[tuple(lo)] |= d
        e[tuple(hi)] |= d
    return e


def overlay_rgb(image, labels, *, gt=None, alpha: float = 0.25, min_side: int = 256,
                max_scale: int = 8) -> np.ndarray:
    """The segmentation drawn on the image, at the image's resolution: ``(H, W, 3)`` uint8.

    The image in grey (window :func:`display_range`); every class ``c >= 1`` tinted with its
    colour (:data:`CLASS_COLOURS`, class 1 yellow) at opacity ``alpha``, and its boundary — its
    pixels with a 4-neighbour of another class — in that colour. The ground truth's outline is
    drawn *outside* its objects (background pixels next to a ground-truth pixel) in cyan, so
    that it never hides the mask's own boundary where the two agree. Images whose shorter side
    is under ``min_side`` are enlarged by an integer factor (nearest neighbour, at most
    ``max_scale``) before the outlines are drawn, so that they stay one display pixel thin.

    Args:
      image: ``(h, w)`` real image.
      labels: ``(h, w)`` int (or bool) class of every pixel, 0 = background (a mask is fine).
      gt: optional ``(h, w)`` ground-truth mask (non-zero = foreground).

    Returns:
      ``(h * k, w * k, 3)`` uint8 RGB, ``k = clip(ceil(min_side / min(h, w)), 1, max_scale)``.
    """
    img = np.asarray(image, np.float32)
    lab = np.asarray(labels).astype(np.int32)
    if img.ndim != 2 or lab.shape != img.shape:
        raise ValueError(f"overlay_rgb needs a 2-D image and labels of its shape, got "
                         f"{img.shape} and {lab.shape}")
    g = None if gt is None else np.asarray(gt) != 0
    if g is not None and g.shape != img.shape:
        raise ValueError(f"ground truth shape {g.shape} != image shape {img.shape}")
    lo, hi = display_range(img)
    k = int(min(max(math.ceil(min_side / max(min(img.shape), 1)), 1), max_scale))

    def big(a):
        return np.repeat(np.repeat(a, k, 0), k, 1) if k > 1 else a

    grey = big(np.clip((img - lo) / (hi - lo), 0.0, 1.0))
    lab = big(lab)
    ncls = int(lab.max()) + 1 if lab.size else 1
    table = np.concatenate([np.zeros((1, 3), np.float32),
                            CLASS_COLOURS[np.arange(ncls - 1) % len(CLASS_COLOURS)]])
    a = np.where(lab > 0, np.where(_edges(lab), np.float32(1), np.float32(alpha)),
                 np.float32(0))[..., None]
    rgb = grey[..., None] * (1 - a) + a * table[np.clip(lab, 0, None)]
    if g is not None:
        g = big(g)
        rgb[_edges(g.astype(np.int8)) & ~g] = GT_COLOUR
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overview_figure(image, result, *, gt=None, title: str = ""):
    """Input | denoised | mask contour on the input (and ground truth) | energy per iteration.

    Args:
      image: ``(h, w)`` input image.
      result: a :class:`self2seg_jax.Self2SegResult`.
      gt: optional ``(h, w)`` ground-truth mask, drawn in cyan.
      title: figure title.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 4.3))
    axes = fig.subplots(1, 4)
    img = np.asarray(image, np.float32)
    lo, hi = display_range(img)
    axes[0].imshow(img, cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title("input")
    axes[1].imshow(np.asarray(result.denoised), cmap="gray", vmin=lo, vmax=hi)
    axes[1].set_title("denoised (u·D_F + (1−u)·D_B)")
    axes[2].imshow(img, cmap="gray", vmin=lo, vmax=hi)
    mask = np.asarray(result.mask, float)
    with warnings.catch_warnings():  # "no contour levels" for an empty / full mask
        warnings.simplefilter("ignore", UserWarning)
        axes[2].imshow(np.ma.masked_where(mask < 0.5, mask), cmap="autumn", alpha=0.25,
                       vmin=0, vmax=1)
        axes[2].contour(mask, levels=[0.5], colors="yellow", linewidths=0.8)
        if gt is not None:
            axes[2].contour(np.asarray(gt, float), levels=[0.5], colors="cyan", linewidths=0.6)
    if gt is not None:
        axes[2].set_title("mask (yellow), ground truth (cyan)")
    else:
        axes[2].set_title(f"mask ({mask.mean():.1%} foreground)")
    for ax in axes[:3]:
        ax.set_axis_off()
    e = np.asarray(result.energies, float)
    axes[3].plot(np.arange(1, len(e) + 1), e, "o-")
    axes[3].set_xlabel("outer iteration")
    axes[3].set_ylabel("energy (5)")
    axes[3].set_title(f"energy ({result.status})")
    axes[3].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
