"""Initial regions (host side): Otsu / multi-level Otsu thresholds against scikit-image, the
first principal component of colour images, label/mask validation, box weights, and
``start`` for every kind of ``init``."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from self2seg_jax import initialisation as ini
from self2seg_jax.initialisation import Boxes, ClassBoxes

skf = pytest.importorskip("skimage.filters")


def _blob(n=24, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    gt = (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 4) ** 2
    f = 0.3 + 0.4 * gt + 0.05 * rng.standard_normal((n, n))
    f = (f - f.min()) / (f.max() - f.min())
    return f.astype(np.float32), gt


# --------------------------------------------------------------------------------------
# thresholds
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda r: np.concatenate([r.normal(0.2, 0.05, 3000), r.normal(0.7, 0.1, 1000)]),
        lambda r: r.uniform(size=(40, 50)),
        lambda r: r.gamma(2.0, 1.0, size=5000),
        lambda r: (r.uniform(size=(32, 32)) * 255).astype(np.uint8).astype(np.float32),
        lambda r: r.normal(size=(5, 9, 11)) * 1e3 - 7,
    ],
    ids=["bimodal", "uniform", "gamma", "8-bit-values", "3d-large-scale"],
)
def test_otsu_matches_skimage(make, rng):
    x = make(rng)
    assert ini.otsu_threshold(x) == pytest.approx(float(skf.threshold_otsu(x)), rel=1e-9, abs=1e-9)


def test_otsu_separates_a_bimodal_image(rng):
    x = np.concatenate([rng.normal(0.2, 0.02, 500), rng.normal(0.8, 0.02, 500)])
    t = ini.otsu_threshold(x)
    assert x[:500].max() <= t < x[500:].min()
    assert t == pytest.approx(float(skf.threshold_otsu(x)))
    assert np.array_equal(x > t, np.arange(1000) >= 500)


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_multiotsu_matches_skimage(classes, rng):
    means = np.linspace(0.1, 0.9, classes)
    x = np.concatenate([rng.normal(m, 0.06, 2000) for m in means])
    np.testing.assert_allclose(
        ini.multiotsu_thresholds(x, classes), skf.threshold_multiotsu(x, classes)
    )
    if classes == 2:
        assert ini.multiotsu_thresholds(x, 2)[0] == pytest.approx(ini.otsu_threshold(x))


def test_multiotsu_skewed_classes_match_skimage(rng):
    x = np.concatenate(
        [rng.normal(0.1, 0.05, 5000), rng.normal(0.5, 0.1, 300), rng.normal(0.8, 0.02, 1500)]
    )
    np.testing.assert_allclose(ini.multiotsu_thresholds(x, 3), skf.threshold_multiotsu(x, 3))


def test_threshold_errors():
    with pytest.raises(ValueError, match="constant image is undefined"):
        ini.otsu_threshold(np.full((8, 8), 0.4))
    with pytest.raises(ValueError, match="constant image is undefined"):
        ini.multiotsu_thresholds(np.full((8, 8), 0.4), 3)
    with pytest.raises(ValueError, match="classes must be >= 2"):
        ini.multiotsu_thresholds(np.arange(10.0), 1)
    two_levels = np.repeat([0.0, 1.0], 50)
    with pytest.raises(ValueError, match="only 2 distinct intensity levels"):
        ini.multiotsu_thresholds(two_levels, 3)


def test_first_principal_component(rng):
    """Two regions with the same channel mean but different colours: the channel mean cannot
    tell them apart, the first principal component can; orientation follows the channel mean."""
    n = 16
    left = np.zeros((n, n), bool)
    left[:, : n // 2] = True
    g = np.stack([np.where(left, 0.8, 0.2), np.where(left, 0.2, 0.8), np.full((n, n), 0.5)])
    g = g + 0.01 * rng.standard_normal(g.shape)
    assert abs(g.mean(0)[left].mean() - g.mean(0)[~left].mean()) < 0.02
    p = ini.first_principal_component(g)
    assert p.shape == (n, n)
    assert p[left].min() > p[~left].max() or p[left].max() < p[~left].min()
    # equals the projection on the top eigenvector of the colour covariance (up to sign)
    x = g.reshape(3, -1) - g.reshape(3, -1).mean(1, keepdims=True)
    v = np.linalg.svd(x, full_matrices=False)[0][:, 0]
    np.testing.assert_allclose(np.abs(p.ravel()), np.abs(v @ x), rtol=1e-6, atol=1e-9)
    # oriented to correlate positively with the channel mean
    bright = np.stack([np.where(left, 0.9, 0.1)] * 3) + 0.01 * rng.standard_normal(g.shape)
    q = ini.first_principal_component(bright)
    assert np.corrcoef(q.ravel(), bright.mean(0).ravel())[0, 1] > 0.99
    assert (
        np.corrcoef(ini.first_principal_component(-bright).ravel(), -bright.mean(0).ravel())[0, 1]
        > 0.99
    )


# --------------------------------------------------------------------------------------
# check_labels
# --------------------------------------------------------------------------------------


def test_check_labels_accepts_masks_and_label_images():
    m = np.zeros((6, 7), bool)
    m[2:4, 1:5] = True
    for a in (m, m.astype(np.uint8), m.astype(np.int64), m.astype(np.float32)):
        out = ini.check_labels(a, (6, 7), 2)
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, m)
    lab = np.arange(42).reshape(6, 7) % 3
    np.testing.assert_array_equal(ini.check_labels(lab, (6, 7), 3), lab)


@pytest.mark.parametrize(
    "labels,c,match",
    [
        (np.zeros((6, 7), bool), 2, r"my mask is empty \(no foreground pixel\)"),
        (np.ones((6, 7), bool), 2, r"my mask is full \(no background pixel\)"),
        (
            np.ones((6, 8), bool),
            2,
            r"my mask has shape \(6, 8\), the image has spatial shape \(6, 7\)",
        ),
        (np.full((6, 7), 0.5), 2, "must be an integer \\(or boolean\\) array, got dtype float64"),
        (np.arange(42).reshape(6, 7) % 3, 2, r"must be boolean \(or 0/1\), got values in \[0, 2\]"),
        (
            np.arange(42).reshape(6, 7) % 2 - 1,
            2,
            r"must be boolean \(or 0/1\), got values in \[-1, 0\]",
        ),
        (np.full((6, 7), 3), 3, r"must be labels 0..2, got values in \[3, 3\]"),
        (np.arange(42).reshape(6, 7) % 2 * 2, 3, r"has no pixel of class\(es\) \[1\]"),
        (np.zeros((6, 7), int), 4, r"has no pixel of class\(es\) \[1, 2, 3\]"),
    ],
    ids=[
        "empty",
        "full",
        "shape",
        "not boolean",
        "values 2",
        "negative",
        "labels 3",
        "missing class",
        "missing classes",
    ],
)
def test_check_labels_messages(labels, c, match):
    with pytest.raises(ValueError, match=match):
        ini.check_labels(labels, (6, 7), c, name="my mask")


# --------------------------------------------------------------------------------------
# box weights
# --------------------------------------------------------------------------------------


def test_boxes_weights_default_background_is_the_complement():
    w = ini.box_weights(Boxes(fg=[(4, 4, 12, 12)]), (16, 16), 2)
    assert w.shape == (2, 16, 16) and w.dtype == bool
    np.testing.assert_array_equal(w[1], np.pad(np.ones((8, 8), bool), 4))
    np.testing.assert_array_equal(w[0], ~w[1])


def test_boxes_weights_with_background_boxes_are_only_inside_boxes():
    w = ini.box_weights(Boxes(fg=[(4, 4, 8, 8), (9, 9, 12, 12)], bg=[(0, 0, 3, 3)]), (16, 16), 2)
    assert w[1].sum() == 16 + 9 and w[0].sum() == 9 and not (w[0] & w[1]).any()
    assert w[1][4:8, 4:8].all() and w[1][9:12, 9:12].all() and w[0][:3, :3].all()
    # half-open boxes: the end row / column is excluded
    assert not w[1][8, 4] and not w[1][4, 8] and not w[0][3, 0]


def test_class_boxes_weights_2d_and_3d():
    cb = ClassBoxes([[(0, 0, 4, 4)], [(5, 5, 8, 8), (10, 0, 12, 2)], [(12, 12, 16, 16)]])
    w = ini.box_weights(cb, (16, 16), 3)
    assert w.shape == (3, 16, 16)
    assert [int(w[i].sum()) for i in range(3)] == [16, 9 + 4, 16]
    assert w.sum(0).max() == 1
    vol = ClassBoxes([[(0, 0, 0, 2, 3, 4)], [(3, 4, 5, 6, 8, 9)]])
    w3 = ini.box_weights(vol, (6, 8, 9), 2)
    assert w3.shape == (2, 6, 8, 9)
    assert w3[0].sum() == 2 * 3 * 4 and w3[1].sum() == 3 * 4 * 4
    assert w3[0][:2, :3, :4].all() and w3[1][3:, 4:, 5:].all()


@pytest.mark.parametrize(
    "init,shape,c,match",
    [
        (Boxes(fg=[(4, 4, 8, 8)], bg=[(10, 10, 20, 20)]), (16, 16), 2, "outside"),
        (Boxes(fg=[(-1, 4, 8, 8)]), (16, 16), 2, "outside"),
        (Boxes(fg=[(4, 4, 4, 8)]), (16, 16), 2, "empty"),
        (Boxes(fg=[(4, 9, 8, 8)]), (16, 16), 2, "empty"),
        (Boxes(fg=[], bg=[(0, 0, 4, 4)]), (16, 16), 2, "at least one foreground box"),
        (Boxes(fg=[(1, 2, 3)]), (16, 16), 2, "is not four integers"),
        (Boxes(fg=[("a", 2, 3, 4)]), (16, 16), 2, "is not four integers"),
        (Boxes(fg=[None]), (16, 16), 2, "is not four integers"),
        (
            Boxes(fg=[(2, 2, 8, 8)], bg=[(6, 6, 10, 10)]),
            (16, 16),
            2,
            "foreground and background boxes overlap",
        ),
        (Boxes(fg=[(0, 0, 16, 16)]), (16, 16), 2, "whole image"),
        (Boxes(fg=[(0, 0, 4, 4)]), (16, 16), 3, "two-class start"),
        (Boxes(fg=[(0, 0, 4, 4)]), (8, 16, 16), 2, "Boxes are 2-D"),
        (
            ClassBoxes([[(0, 0, 5, 5)], [(6, 6, 9, 9)]]),
            (16, 16),
            3,
            "ClassBoxes has boxes for 2 classes",
        ),
        (ClassBoxes([[(0, 0, 5, 5)], []]), (16, 16), 2, "class 1 has no box"),
        (
            ClassBoxes([[(0, 0, 5, 5)], [(3, 3, 9, 9)]]),
            (16, 16),
            2,
            "foreground and background boxes overlap",
        ),
        (
            ClassBoxes([[(0, 0, 5, 5)], [(6, 6, 9, 9)], [(8, 8, 12, 12)]]),
            (16, 16),
            3,
            "boxes of different classes overlap",
        ),
        (ClassBoxes([[(0, 0, 5, 5)], [(6, 6, 30, 9)]]), (16, 16), 2, "outside"),
        (ClassBoxes([[(0, 0, 5, 5)], [(6, 6, 9, 9)]]), (8, 16, 16), 2, "is not 6 integers"),
        (ClassBoxes([[(0, 0, 0, 2, 5, 5)], [(2, 6, 6, 9, 9, 9)]]), (8, 16, 16), 2, "outside"),
    ],
    ids=[
        "bg outside",
        "negative",
        "empty rows",
        "empty cols",
        "no fg",
        "three ints",
        "not ints",
        "None box",
        "overlap",
        "covers all",
        "Boxes C=3",
        "Boxes 3-D",
        "class count",
        "class without box",
        "class overlap C=2",
        "class overlap C=3",
        "class outside",
        "2-D box in 3-D",
        "3-D outside",
    ],
)
def test_box_weights_errors(init, shape, c, match):
    with pytest.raises(ValueError, match=match):
        ini.box_weights(init, shape, c)


# --------------------------------------------------------------------------------------
# start() for every kind of init
# --------------------------------------------------------------------------------------


class _Spy:
    """A ``denoise`` callable recording its calls (returns a fixed image)."""

    def __init__(self, out):
        self.out, self.calls = out, []

    def __call__(self, key, f):
        self.calls.append((key, np.asarray(f)))
        return self.out


def _check_start(s, shape, c):
    assert isinstance(s, ini.Start)
    assert s.weights.shape == (c,) + shape and s.weights.dtype == np.float32
    assert s.labels.shape == shape and s.labels.dtype == np.int32


def test_start_otsu_two_classes(key):
    f, gt = _blob()
    s = ini.start(key, f, "otsu", num_classes=2, ndim=2, denoise=None)
    _check_start(s, f.shape, 2)
    np.testing.assert_array_equal(s.labels, f > skf.threshold_otsu(f))
    np.testing.assert_array_equal(s.labels, gt)
    np.testing.assert_array_equal(s.weights, np.stack([s.labels == 0, s.labels == 1]))


def test_start_otsu_dark_makes_the_darker_side_the_foreground(key, rng):
    """``"otsu_dark"``: the same thresholds as ``"otsu"``, the classes in reverse order."""
    f, gt = _blob()
    s = ini.start(key, 1.0 - f, "otsu_dark", num_classes=2, ndim=2, denoise=None)
    _check_start(s, f.shape, 2)
    np.testing.assert_array_equal(s.labels, gt)  # the dark disc of the inverted image
    bright = ini.start(key, 1.0 - f, "otsu", num_classes=2, ndim=2, denoise=None)
    np.testing.assert_array_equal(s.labels, 1 - bright.labels)
    lab = np.repeat(np.arange(3), 8 * 24).reshape(24, 24)
    g = (0.2 + 0.3 * lab + 0.03 * rng.standard_normal(lab.shape)).astype(np.float32)
    g = (g - g.min()) / (g.max() - g.min())
    s3 = ini.start(key, g, "otsu_dark", num_classes=3, ndim=2, denoise=None)
    np.testing.assert_array_equal(s3.labels, 2 - lab)  # class 0 (background) the brightest
    np.testing.assert_array_equal(s3.weights.argmax(0), s3.labels)


def test_start_otsu_thresholds_the_denoised_image_only_when_given(key):
    """With ``denoise`` the threshold looks at its (normalised) output; without it at ``f``."""
    f, gt = _blob()
    other = np.zeros_like(f)
    other[:, :10] = 5.0  # a different image: its Otsu split is the left columns
    other[0, 0] = 7.0
    spy = _Spy(other)
    s = ini.start(key, f, "otsu", num_classes=2, ndim=2, denoise=spy)
    assert len(spy.calls) == 1
    assert spy.calls[0][0] is key
    np.testing.assert_array_equal(spy.calls[0][1], f)
    np.testing.assert_array_equal(s.labels, other > 0)
    # the threshold start uses it too (on its min-max normalised version: 5/7 > 0.5)
    s = ini.start(key, f, 0.5, num_classes=2, ndim=2, denoise=spy)
    assert len(spy.calls) == 2
    np.testing.assert_array_equal(s.labels, other / 7.0 > 0.5)
    # masks, label images and boxes never call it
    for init in (
        gt,
        gt.astype(np.int32),
        Boxes(fg=[(4, 4, 12, 12)]),
        ClassBoxes([[(0, 0, 4, 4)], [(8, 8, 12, 12)]]),
    ):
        ini.start(key, f, init, num_classes=2, ndim=2, denoise=spy)
    assert len(spy.calls) == 2


def test_start_non_finite_denoised_image_raises(key):
    f, _ = _blob()
    bad = np.full_like(f, np.nan)
    with pytest.raises(FloatingPointError, match="non-finite"):
        ini.start(key, f, "otsu", num_classes=2, ndim=2, denoise=_Spy(bad))


def test_start_multiotsu_three_classes(key, rng):
    lab = np.repeat(np.arange(3), 8 * 24).reshape(24, 24)
    f = (0.2 + 0.3 * lab + 0.03 * rng.standard_normal(lab.shape)).astype(np.float32)
    f = (f - f.min()) / (f.max() - f.min())
    s = ini.start(key, f, "otsu", num_classes=3, ndim=2, denoise=None)
    _check_start(s, f.shape, 3)
    t = skf.threshold_multiotsu(f, 3)
    np.testing.assert_array_equal(s.labels, np.digitize(f, t, right=True))
    np.testing.assert_array_equal(s.labels, lab)
    np.testing.assert_array_equal(s.weights.argmax(0), s.labels)
    np.testing.assert_array_equal(s.weights.sum(0), 1.0)


def test_start_otsu_colour_uses_first_principal_component(key, rng):
    n = 16
    left = np.zeros((n, n), bool)
    left[:, : n // 2] = True
    g = np.stack([np.where(left, 0.9, 0.1), np.where(left, 0.1, 0.9), np.full((n, n), 0.5)])
    g = (g + 0.02 * rng.standard_normal(g.shape)).astype(np.float32)
    s = ini.start(key, g, "otsu", num_classes=2, ndim=2, denoise=None)
    _check_start(s, (n, n), 2)
    assert np.array_equal(s.labels, left) or np.array_equal(s.labels, ~left)
    # the channel mean alone would not have split the halves
    m = g.mean(0)
    assert not np.array_equal(m > skf.threshold_otsu(m), left)


def test_start_threshold(key):
    f, _ = _blob()
    s = ini.start(key, f, 0.4, num_classes=2, ndim=2, denoise=None)
    _check_start(s, f.shape, 2)
    np.testing.assert_array_equal(s.labels, f > 0.4)
    s2 = ini.start(key, f, np.float32(0.6), num_classes=2, ndim=2, denoise=None)
    np.testing.assert_array_equal(s2.labels, f > np.float32(0.6))


def test_start_masks_and_label_images(key):
    f, gt = _blob()
    for m in (gt, gt.astype(np.uint8), gt.astype(np.int32)):
        s = ini.start(key, f, m, num_classes=2, ndim=2, denoise=None)
        _check_start(s, f.shape, 2)
        np.testing.assert_array_equal(s.labels, gt)
        np.testing.assert_array_equal(s.weights[1], gt)
        np.testing.assert_array_equal(s.weights[0], ~gt)
    lab = np.zeros(f.shape, np.int32)
    lab[:8], lab[8:16] = 1, 2
    s = ini.start(key, f, lab, num_classes=3, ndim=2, denoise=None)
    _check_start(s, f.shape, 3)
    np.testing.assert_array_equal(s.labels, lab)
    for i in range(3):
        np.testing.assert_array_equal(s.weights[i], lab == i)
    # a list is an array too
    s = ini.start(key, f, lab.tolist(), num_classes=3, ndim=2, denoise=None)
    np.testing.assert_array_equal(s.labels, lab)


def test_start_boxes_label_zero_outside_and_weights_only_inside(key):
    f, _ = _blob()
    s = ini.start(
        key,
        f,
        Boxes(fg=[(4, 4, 8, 8), (9, 9, 12, 12)], bg=[(0, 0, 3, 3)]),
        num_classes=2,
        ndim=2,
        denoise=None,
    )
    _check_start(s, f.shape, 2)
    fg = np.zeros(f.shape, bool)
    fg[4:8, 4:8] = fg[9:12, 9:12] = True
    bg = np.zeros(f.shape, bool)
    bg[:3, :3] = True
    np.testing.assert_array_equal(s.weights[1], fg)
    np.testing.assert_array_equal(s.weights[0], bg)
    np.testing.assert_array_equal(s.labels, fg)  # outside the boxes: background (label 0)
    # default background box: the complement of the foreground boxes
    s = ini.start(key, f, Boxes(fg=[(4, 4, 12, 12)]), num_classes=2, ndim=2, denoise=None)
    np.testing.assert_array_equal(s.weights[1], np.pad(np.ones((8, 8)), (4, 12)))
    np.testing.assert_array_equal(s.weights[0], 1 - s.weights[1])


def test_start_class_boxes_three_classes_and_volume(key):
    f, _ = _blob()
    cb = ClassBoxes([[(0, 0, 4, 4)], [(5, 5, 8, 8)], [(12, 12, 16, 16), (20, 0, 24, 3)]])
    s = ini.start(key, f, cb, num_classes=3, ndim=2, denoise=None)
    _check_start(s, f.shape, 3)
    np.testing.assert_array_equal(s.weights, ini.box_weights(cb, f.shape, 3))
    expect = np.zeros(f.shape, np.int32)
    expect[5:8, 5:8] = 1
    expect[12:16, 12:16] = 2
    expect[20:24, 0:3] = 2
    np.testing.assert_array_equal(s.labels, expect)  # 0 outside every box (also for C > 2)
    assert s.weights.sum() == 16 + 9 + 16 + 12  # pixels in no box train no expert
    # 3-D, with a colour (channel-first) volume: spatial shape from the last ndim axes
    vol = np.random.default_rng(0).uniform(size=(2, 6, 8, 9)).astype(np.float32)
    cb3 = ClassBoxes([[(0, 0, 0, 2, 3, 4)], [(3, 4, 5, 6, 8, 9)]])
    s3 = ini.start(key, vol, cb3, num_classes=2, ndim=3, denoise=None)
    _check_start(s3, (6, 8, 9), 2)
    np.testing.assert_array_equal(s3.labels, s3.weights[1])


def test_start_otsu_volume(key, rng):
    gt = np.zeros((6, 10, 10), bool)
    gt[2:5, 3:8, 2:7] = True
    f = (gt * 0.6 + 0.2 + 0.03 * rng.standard_normal(gt.shape)).astype(np.float32)
    s = ini.start(key, f, "otsu", num_classes=2, ndim=3, denoise=None)
    _check_start(s, gt.shape, 2)
    np.testing.assert_array_equal(s.labels, gt)


@pytest.mark.parametrize(
    "init,c,match",
    [
        ("kmeans", 2, "unknown init 'kmeans'"),
        (None, 2, "unknown init None"),
        (True, 2, "unknown init True"),
        (np.True_, 2, "unknown init"),
        (0.5, 3, "a threshold is a two-class start"),
        (0.0, 2, r"threshold init must be in \(0, 1\)"),
        (1.0, 2, "threshold init"),
        (-0.2, 2, "threshold init"),
        (1, 2, "threshold init"),
        (np.zeros((2, 24, 24), bool), 2, "unknown init: arrays must be masks or label images"),
        (np.zeros(24, bool), 2, "unknown init"),
        (np.zeros((24, 24), bool), 2, r"initial mask is empty"),
        (np.zeros((24, 24), int), 3, r"initial label image has no pixel of class"),
        (np.zeros((20, 24), bool), 2, "shape"),
        (object(), 2, "unknown init"),
    ],
    ids=[
        "string",
        "None",
        "bool",
        "numpy bool",
        "threshold C=3",
        "threshold 0",
        "threshold 1",
        "threshold<0",
        "int 1",
        "3-D mask",
        "1-D mask",
        "empty mask",
        "missing class",
        "shape",
        "object",
    ],
)
def test_start_rejects_bad_inits(init, c, match, key):
    f, _ = _blob()
    spy = _Spy(f)
    with pytest.raises(ValueError, match=match):
        ini.start(key, f, init, num_classes=c, ndim=2, denoise=spy)
    assert not spy.calls  # rejected before any denoising


def test_start_key_is_passed_to_denoise():
    f, _ = _blob()
    spy = _Spy(f)
    k = jax.random.key(7)
    ini.start(k, f, "otsu", num_classes=2, ndim=2, denoise=spy)
    assert spy.calls[0][0] is k
