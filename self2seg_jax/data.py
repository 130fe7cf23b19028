"""Bundled sample data and synthetic test images.

The sample is one 512x512 fluorescence image of cell nuclei from the 2018 Data Science Bowl
(BBBC038, Caicedo et al., Nature Methods 16(12), 2019; images CC0) with its instance labels,
as shipped in the ``stardist`` 0.9.2 wheel (BSD-3-Clause). See ``self2seg_jax/data/README.md``.
"""

from __future__ import annotations

from importlib import resources

import numpy as np


def _read_tif(name: str) -> np.ndarray:
    import tifffile

    with resources.files("self2seg_jax").joinpath("data", name).open("rb") as fh:
        return tifffile.imread(fh)


def load_sample(*, crop: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The DSB2018 nuclei sample: ``(image float32 (h, w) on 0..255, ground truth bool (h, w))``.

    Args:
      crop: optional ``(y0, x0, y1, x1)`` window.
    """
    img = _read_tif("img2d.tif").astype(np.float32)
    gt = _read_tif("mask2d.tif") > 0
    if crop is not None:
        y0, x0, y1, x1 = crop
        img, gt = img[y0:y1, x0:x1], gt[y0:y1, x0:x1]
    return img, gt


def load_sample_3d() -> tuple[np.ndarray, np.ndarray]:
    """The small synthetic 3-D nuclei stack: ``(volume float32 (31, 61, 57) z-y-x, gt bool)``.

    From the ``stardist`` 0.9.2 wheel (BSD-3-Clause); see ``self2seg_jax/data/README.md``.
    """
    return _read_tif("img3d.tif").astype(np.float32), _read_tif("mask3d.tif") > 0


def sample_patches(size: int = 128) -> list[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
    """The non-overlapping ``size x size`` patches of the sample: ``[((y, x), image, gt), ...]``."""
    img, gt = load_sample()
    out = []
    for y in range(0, img.shape[0] - size + 1, size):
        for x in range(0, img.shape[1] - size + 1, size):
            out.append(((y, x), img[y : y + size, x : x + size], gt[y : y + size, x : x + size]))
    return out


def add_gaussian_noise(seed: int, image: np.ndarray, sigma: float) -> np.ndarray:
    """``image + sigma * N(0, 1)`` (float32, not clipped), with a NumPy generator of ``seed``."""
    rng = np.random.default_rng(seed)
    noise = sigma * rng.standard_normal(image.shape)
    return (np.asarray(image, np.float32) + noise).astype(np.float32)


def stripes(
    seed: int = 0,
    size: int = 128,
    *,
    period: float = 6.0,
    noise: float = 0.1,
    radius: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Toy of paper Fig. 1: a disc of horizontal stripes in a field of vertical stripes.

    Both textures have the same mean (0.5), so intensity-based Chan–Vese cannot separate them.

    Returns:
      ``(noisy, clean, gt)``: float32 ``(size, size)`` images and the bool disc mask.
    """
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    r = radius if radius is not None else size / 4
    gt = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r**2
    vertical = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period)
    horizontal = 0.5 + 0.5 * np.sin(2 * np.pi * yy / period)
    clean = np.where(gt, horizontal, vertical).astype(np.float32)
    noisy = add_gaussian_noise(seed, clean, noise)
    return noisy, clean, gt


def synthetic_nuclei(seed: int, shape=(256, 256), *, noise: float = 30.0, radius=(5.0, 14.0),
                     coverage: float = 0.2, contrast=(15.0, 150.0), glow: float = 0.0,
                     glow_sigma: float = 3.0):
    """Synthetic fluorescence nuclei on an N-D grid, for development and tests (never the
    reported data): ellipsoids of random size, orientation and brightness (log-uniform
    contrast, so dim nuclei lie next to bright ones), textured inside, blurred edges, on a dark
    background with a gentle gradient, plus Gaussian noise — on a 0..255 scale.

    Args:
      seed: NumPy seed (everything, noise included, follows from it).
      shape: spatial shape (2-D or 3-D).
      noise: Gaussian noise std on the 0..255 scale.
      radius: range of the nuclei's mean radii in pixels.
      coverage: target foreground fraction.
      contrast: range of the nuclei's intensity above the background (log-uniform).
      glow: out-of-focus light (widefield stacks): ``glow`` times the nuclei blurred by a
        Gaussian of ``glow_sigma`` pixels is added, so the background is brighter next to
        nuclei than far from them (0 = none).

    Returns:
      ``(noisy, clean, gt)``: float32 images and the bool foreground.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    ball = (4 / 3 * np.pi) if nd == 3 else np.pi
    count = max(1, int(coverage * np.prod(shape) / (ball * np.mean(radius) ** nd)))
    gt = np.zeros(shape, bool)
    clean = np.zeros(shape, np.float32)
    for _ in range(count):
        r = rng.uniform(*radius)
        axes = r * rng.uniform(0.7, 1.3, nd)
        centre = [rng.uniform(0, n) for n in shape]
        rot, _ = np.linalg.qr(rng.standard_normal((nd, nd)))
        d = np.stack([g - c for g, c in zip(grids, centre)], -1) @ rot
        inside = np.sum((d / axes) ** 2, -1) < 1
        if (inside & gt).sum() > 0.2 * inside.sum():  # keep nuclei mostly apart
            continue
        level = np.exp(rng.uniform(np.log(contrast[0]), np.log(contrast[1])))
        gt |= inside
        clean = np.maximum(clean, level * inside)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    texture /= texture.std() + 1e-12
    clean = ndimage.gaussian_filter(clean * (1 + 0.12 * texture), 1.0)
    if glow:
        clean = clean + glow * ndimage.gaussian_filter(clean, glow_sigma)
    ramp = sum(g / n for g, n in zip(grids, shape)) / nd
    clean = (clean + 15 + 10 * ramp).astype(np.float32)
    return add_gaussian_noise(seed + 1, clean, noise), clean, gt
