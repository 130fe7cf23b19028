"""Figures: the overview panel written by the CLI and the demo (``<name>_overlay.png``).

The figure is a plain :class:`matplotlib.figure.Figure` (no ``pyplot``): building it neither
changes the matplotlib backend nor registers it with a GUI, so it can be made from scripts,
worker threads or a notebook alike and needs no ``plt.close``; save it with
``fig.savefig(...)`` or :func:`self2seg_jax.io.write_figure`.
"""

from __future__ import annotations

import warnings

import numpy as np


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
    lo, hi = np.percentile(img, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(img.min()), float(img.max()) + 1e-12
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
