"""Metrics (Dice, IoU, PSNR, SSIM) against hand values / SciPy / scikit-image, and Otsu's
threshold against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import dice as scipy_dice_dissimilarity
from skimage.filters import threshold_otsu
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from self2seg_jax import metrics
from self2seg_jax.initialisation import otsu_threshold


def test_dice_iou_hand_examples():
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[1, 0, 1, 0]], bool)
    # |A∩B| = 1, |A| = |B| = 2, |A∪B| = 3
    assert metrics.dice(a, b) == pytest.approx(0.5)
    assert metrics.iou(a, b) == pytest.approx(1 / 3)
    assert metrics.dice(a, a) == 1.0 and metrics.iou(a, a) == 1.0
    assert metrics.dice(a, ~a) == 0.0 and metrics.iou(a, ~a) == 0.0
    z = np.zeros((3, 3), bool)
    assert metrics.dice(z, z) == 1.0 and metrics.iou(z, z) == 1.0
    assert metrics.dice(z, ~z) == 0.0
    # non-bool inputs are binarised
    assert metrics.dice(a.astype(np.uint8) * 255, b.astype(float)) == pytest.approx(0.5)


def test_metrics_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes"):
        metrics.dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="shapes"):
        metrics.psnr(np.zeros((3, 3)), np.zeros((4, 3)))


@pytest.mark.parametrize("seed", range(5))
def test_dice_iou_vs_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((13, 17)) < rng.uniform(0.1, 0.9)
    b = rng.random((13, 17)) < rng.uniform(0.1, 0.9)
    d = metrics.dice(a, b)
    assert d == pytest.approx(1 - scipy_dice_dissimilarity(a.ravel(), b.ravel()), abs=1e-12)
    # IoU = D / (2 - D)
    assert metrics.iou(a, b) == pytest.approx(d / (2 - d), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_psnr_vs_skimage(seed):
    rng = np.random.default_rng(seed)
    ref = rng.random((20, 24))
    img = ref + rng.uniform(0.01, 0.3) * rng.standard_normal(ref.shape)
    for dr in (1.0, 2.5):
        got = metrics.psnr(img, ref, data_range=dr)
        want = peak_signal_noise_ratio(ref, img, data_range=dr)
        assert got == pytest.approx(want, abs=1e-6)
    # default data range: max - min of the reference
    got = metrics.psnr(img.astype(np.float32), ref.astype(np.float32))
    want = peak_signal_noise_ratio(ref, img, data_range=ref.max() - ref.min())
    assert got == pytest.approx(want, abs=1e-4)
    assert metrics.psnr(ref, ref) == float("inf")


@pytest.mark.parametrize("seed", range(4))
def test_ssim_vs_skimage(seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :28]
    ref = 0.5 + 0.4 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    img = ref + rng.uniform(0.02, 0.3) * rng.standard_normal(ref.shape)
    for dr in (1.0, 2.0):
        got = metrics.ssim(img, ref, data_range=dr)
        want = structural_similarity(ref, img, data_range=dr)
        assert got == pytest.approx(want, abs=1e-4)
    got = metrics.ssim(img, ref)
    want = structural_similarity(ref, img, data_range=ref.max() - ref.min())
    assert got == pytest.approx(want, abs=1e-4)
    assert metrics.ssim(ref, ref, data_range=1.0) == pytest.approx(1.0, abs=1e-12)


def _otsu_images():
    rng = np.random.default_rng(11)
    out = []
    for _ in range(3):
        out.append(rng.random((17, 23)))
    for mu0, mu1, s, frac in ((0.2, 0.7, 0.05, 0.5), (0.3, 0.5, 0.1, 0.2), (-3.0, 4.0, 1.0, 0.8)):
        n = 600
        k = int(frac * n)
        x = np.concatenate([rng.normal(mu0, s, n - k), rng.normal(mu1, s, k)])
        out.append(rng.permutation(x).reshape(20, 30))
    out.append(np.repeat(np.array([0.1, 0.9]), 50).reshape(10, 10))  # two values only
    return out


@pytest.mark.parametrize("i", range(7))
def test_otsu_threshold_matches_skimage(i):
    img = _otsu_images()[i]
    assert otsu_threshold(img) == pytest.approx(float(threshold_otsu(img)), abs=1e-9)


def test_otsu_threshold_float32_images():
    rng = np.random.default_rng(2)
    for _ in range(5):
        x = np.concatenate([rng.normal(0.3, 0.05, 300), rng.normal(0.75, 0.1, 200)]).astype(np.float32)
        img = x.reshape(20, 25)
        # skimage bins float32 data in float32: the centres agree to float32 rounding
        assert otsu_threshold(img) == pytest.approx(float(threshold_otsu(img)), abs=1e-6)


def test_otsu_separates_bimodal_classes():
    rng = np.random.default_rng(0)
    img = np.concatenate([rng.normal(0.2, 0.03, 200), rng.normal(0.8, 0.03, 100)]).reshape(15, 20)
    t = otsu_threshold(img)
    flat = img.ravel()
    # any threshold in the gap is optimal; the partition must be the two clusters
    assert flat[:200].max() <= t < flat[200:].min()
    assert (img > t).sum() == 100


def test_otsu_constant_image_raises():
    with pytest.raises(ValueError, match="constant"):
        otsu_threshold(np.full((5, 5), 0.4))
