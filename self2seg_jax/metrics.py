"""Segmentation and denoising metrics: Dice, IoU, PSNR, SSIM.

NumPy/JAX agnostic inputs, returned as Python floats (host-side evaluation). SSIM follows
Wang et al. (2004) with the defaults of ``skimage.metrics.structural_similarity`` (7x7
uniform window, K1 = 0.01, K2 = 0.03, sample covariance, border of 3 px excluded), which the
tests cross-check.
"""

from __future__ import annotations

import numpy as np


def _pair(a, b, name):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ, {a.shape} vs {b.shape}")
    return a, b


def dice(pred, target) -> float:
    """Dice ``2|A∩B| / (|A| + |B|)`` of two binary masks (1.0 if both are empty)."""
    a, b = _pair(pred, target, "dice")
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def iou(pred, target) -> float:
    """Intersection over union (Jaccard) of two binary masks (1.0 if both are empty)."""
    a, b = _pair(pred, target, "iou")
    a, b = a.astype(bool), b.astype(bool)
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def psnr(image, reference, *, data_range: float | None = None) -> float:
    """PSNR in dB; ``data_range`` defaults to ``max - min`` of ``reference``."""
    x, ref = _pair(image, reference, "psnr")
    x, ref = x.astype(np.float64), ref.astype(np.float64)
    if data_range is None:
        data_range = float(ref.max() - ref.min())
    mse = float(np.mean((x - ref) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def _uniform(x, size):
    from scipy.ndimage import uniform_filter

    return uniform_filter(x, size=size, mode="reflect")


def ssim(image, reference, *, data_range: float | None = None, win_size: int = 7) -> float:
    """Mean structural similarity (2-D), matching scikit-image's defaults."""
    x, y = _pair(image, reference, "ssim")
    x, y = x.astype(np.float64), y.astype(np.float64)
    if data_range is None:
        data_range = float(y.max() - y.min())
    n = win_size**2
    cov_norm = n / (n - 1)
    ux, uy = _uniform(x, win_size), _uniform(y, win_size)
    uxx, uyy, uxy = _uniform(x * x, win_size), _uniform(y * y, win_size), _uniform(x * y, win_size)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())
