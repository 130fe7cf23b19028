"""The local Chan–Vese step after the scheme (``Self2SegConfig.refine_size``, ``api.refine``)."""

import types

import jax
import numpy as np
import pytest
from scipy import ndimage

import self2seg_jax as s2s
from self2seg_jax import api

CHEAP = dict(train_max_steps=20, train_min_steps=10, train_patience=10, max_outer=2)


def _blurred_discs(seed=0, shape=(96, 96), noise=5.0):
    """Discs of two brightness levels (dim and bright), blurred edges, low noise, and their
    truth: a mask placed midway up each edge is the truth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.zeros(shape, bool)
    clean = np.full(shape, 20.0, np.float32)
    for (cy, cx, r, level) in ((28, 28, 11, 200.0), (66, 64, 13, 70.0), (26, 72, 8, 140.0)):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        truth |= disc
        clean += (level - 20.0) * disc
    clean = ndimage.gaussian_filter(clean, 1.5).astype(np.float32)
    noisy = clean + rng.normal(0, noise, shape).astype(np.float32)
    return noisy, truth


def test_refine_moves_a_dilated_mask_back_to_the_edges():
    """Started from the truth dilated by 2 pixels (what a CNN expert's rim makes), one step
    moves the boundary most of the way back to the edges' midpoints (the local foreground mean
    still includes part of the rim, so one step does not go all the way) — on the dim disc
    too, which one foreground mean (plain Chan–Vese) would pull towards the background."""
    noisy, truth = _blurred_discs()
    cfg = s2s.Self2SegConfig(refine_size=15, refine_min_cnr=0.0)
    p = api.prepare(jax.random.key(0), noisy, config=cfg)
    fat = ndimage.binary_dilation(truth, iterations=2)
    out = api.refine(types.SimpleNamespace(labels=fat.astype(np.int32)), p, cfg)
    assert out is not None
    refined = np.asarray(out[0].labels) == 1
    assert s2s.metrics.dice(fat, truth) < 0.87
    assert s2s.metrics.dice(refined, truth) > 0.94
    assert 1.0 < refined.sum() / truth.sum() < 1.12 < fat.sum() / truth.sum()
    yy, xx = np.mgrid[:96, :96]
    dim = (yy - 66) ** 2 + (xx - 64) ** 2 < 17 ** 2  # around the dim disc only
    assert s2s.metrics.dice(refined & dim, truth & dim) > 0.93


def test_refine_is_skipped_when_a_class_is_missing():
    noisy, _ = _blurred_discs()
    cfg = s2s.Self2SegConfig(refine_size=15, refine_min_cnr=0.0)
    p = api.prepare(jax.random.key(0), noisy, config=cfg)
    full = types.SimpleNamespace(labels=np.ones(noisy.shape, np.int32))
    assert api.refine(full, p, cfg) is None


def test_segment_with_refine_keeps_the_schemes_record_and_is_deterministic():
    noisy, truth = _blurred_discs(seed=1, noise=10.0)
    plain = s2s.segment(jax.random.key(3), noisy,
                        config=s2s.Self2SegConfig(refine_size=0, **CHEAP))
    cfg = s2s.Self2SegConfig(refine_size=15, refine_min_cnr=0.0, **CHEAP)
    a = s2s.segment(jax.random.key(3), noisy, config=cfg)
    b = s2s.segment(jax.random.key(3), noisy, config=cfg)
    np.testing.assert_array_equal(a.labels, b.labels)
    # the scheme's record (energies, iterations, status, expert outputs) is the unrefined run's
    np.testing.assert_array_equal(a.energies, plain.energies)
    assert (a.num_outer, a.status) == (plain.num_outer, plain.status)
    np.testing.assert_array_equal(a.expert_outputs, plain.expert_outputs)
    # the mask is the refined one (it moved), consistent with the relaxed mask returned beside it
    assert (a.labels != plain.labels).any()
    np.testing.assert_array_equal(a.labels, np.argmax(a.probabilities, 0))
    assert s2s.metrics.dice(a.mask, truth) >= s2s.metrics.dice(plain.mask, truth) - 0.01


@pytest.mark.parametrize("bad", [1, 2, 4, -3])
def test_refine_size_is_validated(bad):
    with pytest.raises(ValueError, match="refine_size"):
        s2s.Self2SegConfig(refine_size=bad)


def test_refine_size_is_a_cli_flag():
    from self2seg_jax.cli.parser import build_parser, config_from_args

    args = build_parser().parse_args(["segment", "in.tif", "-o", "out", "--refine-size", "31"])
    assert config_from_args(args)[0].refine_size == 31


def _step(shape=(200, 200), gap=10.0, noise=2.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, noise, shape)
    lab = np.zeros(shape, np.int32)
    lab[:, shape[1] // 2:] = 1
    return x + gap * lab, lab


def test_contrast_to_noise_measures_the_gap_in_noise_stds():
    """A step of 10 under Gaussian noise of std 2: ratio 5, whatever the intensity scale and
    offset; the noise estimate ignores the one edge."""
    x, lab = _step()
    cnr = api.contrast_to_noise(x, lab, 2)
    assert cnr == pytest.approx(5.0, rel=0.04)
    assert api.contrast_to_noise(3.0 * x + 7.0, lab, 2) == pytest.approx(cnr, rel=1e-5)
    assert api.contrast_to_noise(x, lab, 2) > api.contrast_to_noise(*_step(noise=4.0), 2) * 1.8


def test_contrast_to_noise_channels_classes_and_edge_cases():
    x, lab = _step()
    # two channels with the same gap: the gap's norm grows by sqrt(2), the noise std stays
    two = np.stack([x, _step(seed=1)[0]])
    assert api.contrast_to_noise(two, lab, 2) == pytest.approx(
        np.sqrt(2) * api.contrast_to_noise(x, lab, 2), rel=0.05)
    # three classes: the smallest gap decides (levels 0, 10, 12: gap 2 over noise 2)
    lab3 = lab.copy()
    lab3[:100, 100:] = 2
    x3 = x + 2.0 * (lab3 == 2)
    assert api.contrast_to_noise(x3, lab3, 3) == pytest.approx(1.0, rel=0.08)
    assert api.contrast_to_noise(x, np.zeros_like(lab), 2) == 0.0  # an empty class
    assert api.contrast_to_noise(10.0 * lab, lab, 2) == float("inf")  # no noise


def test_refine_min_cnr_gates_the_step():
    """The step runs when the scheme's classes stand further apart than refine_min_cnr noise
    stds, and is skipped (the scheme's labels stand) when they do not."""
    noisy, truth = _blurred_discs()
    fat = types.SimpleNamespace(labels=ndimage.binary_dilation(truth, iterations=2)
                                .astype(np.int32))
    cfg = s2s.Self2SegConfig(refine_size=15, refine_min_cnr=0.0)
    p = api.prepare(jax.random.key(0), noisy, config=cfg)
    cnr = api.contrast_to_noise(p.f, fat.labels, 2)
    assert 3.0 < cnr < 100.0
    assert api.refine(fat, p, cfg.replace(refine_min_cnr=0.9 * cnr)) is not None
    assert api.refine(fat, p, cfg.replace(refine_min_cnr=1.1 * cnr)) is None


def test_the_default_refines_clean_images_and_leaves_noisy_ones():
    """Defaults: refine_size 15 with the gate at 2.2 noise stds — the step moves a mask at low
    noise and leaves the scheme's labels at high noise (same scheme record either way)."""
    cfg = s2s.Self2SegConfig(**CHEAP)
    assert (cfg.refine_size, cfg.refine_min_cnr) == (15, 2.2)
    for noise, moved in ((5.0, True), (60.0, False)):
        noisy, _ = _blurred_discs(seed=2, noise=noise)
        on = s2s.segment(jax.random.key(1), noisy, config=cfg)
        off = s2s.segment(jax.random.key(1), noisy, config=cfg.replace(refine_size=0))
        np.testing.assert_array_equal(on.energies, off.energies)
        assert bool((on.labels != off.labels).any()) is moved, noise


def test_contrast_to_noise_subsamples_large_images_consistently():
    """Above ``max_samples`` pixels the statistic uses a regular subsample: close to the full
    one, and identical across calls."""
    x, lab = _step(shape=(400, 400))
    full = api.contrast_to_noise(x, lab, 2)
    sub = api.contrast_to_noise(x, lab, 2, max_samples=20_000)
    assert sub == pytest.approx(full, rel=0.05)
    assert sub == api.contrast_to_noise(x, lab, 2, max_samples=20_000)
    assert sub != full  # the subsample was used


def test_iterated_refinement_goes_the_rest_of_the_way():
    """One step from a 3-pixel dilation leaves part of the rim (its local foreground mean still
    includes it); recomputing the local means from the new mask (refine_iters) brings the
    boundary to the edges' midpoints, and the iteration stops once the mask settles."""
    noisy, truth = _blurred_discs()
    cfg = s2s.Self2SegConfig(refine_size=15, refine_min_cnr=0.0)
    p = api.prepare(jax.random.key(0), noisy, config=cfg)
    fat = types.SimpleNamespace(labels=ndimage.binary_dilation(truth, iterations=3)
                                .astype(np.int32))
    one = np.asarray(api.refine(fat, p, cfg)[0].labels) == 1
    final, _ = api.refine(fat, p, cfg.replace(refine_iters=8))
    many = np.asarray(final.labels) == 1
    assert s2s.metrics.dice(one, truth) < 0.95
    assert s2s.metrics.dice(many, truth) > 0.98
    assert many.sum() / truth.sum() < 1.05
    assert 2 <= int(final.it) < 8
