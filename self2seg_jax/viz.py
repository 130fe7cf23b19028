"""Figures (matplotlib, Agg backend): the overview panel written by the CLI and the demo."""

from __future__ import annotations

import numpy as np


def overview_figure(image, result, *, gt=None, title: str = ""):
    """Input | denoised | mask contour on the input | energy per outer iteration."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4.3))
    img = np.asarray(image, np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    axes[0].imshow(img, cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title("input")
    axes[1].imshow(result.denoised, cmap="gray", vmin=lo, vmax=hi)
    axes[1].set_title("denoised (u·D_F + (1−u)·D_B)")
    axes[2].imshow(img, cmap="gray", vmin=lo, vmax=hi)
    axes[2].contour(result.mask.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
    if gt is not None:
        axes[2].contour(np.asarray(gt, float), levels=[0.5], colors="cyan", linewidths=0.6)
        axes[2].set_title("mask (yellow), ground truth (cyan)")
    else:
        axes[2].set_title("mask contour")
    for ax in axes[:3]:
        ax.set_axis_off()
    e = np.asarray(result.energies)
    axes[3].plot(np.arange(1, len(e) + 1), e, "o-")
    axes[3].set_xlabel("outer iteration")
    axes[3].set_ylabel("energy (5)")
    axes[3].set_title(f"energy ({result.status})")
    axes[3].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
