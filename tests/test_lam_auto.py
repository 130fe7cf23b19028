"""lam="auto" (self2seg_jax.lam_auto): the noise scale, the choice, and the runs it drives."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import baselines, lam_auto, metrics
from self2seg_jax.config import Self2SegConfig


def _terms(rng, shape, sigma, classes=2):
    """Data terms with smooth, structured signal and i.i.d. noise of std ``sigma`` on every
    class except the first."""
    grids = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    smooth = sum(np.sin(3 * g) for g in grids)
    step = (grids[0] > 0.5).astype(np.float64)
    d = [smooth]
    for c in range(1, classes):
        d.append(smooth + c * step + sigma * rng.standard_normal(shape))
    return np.stack(d).astype(np.float32)


@pytest.mark.parametrize("shape", [(256, 256), (255, 130), (40, 40, 40)])
def test_noise_scale_measures_the_noise_of_the_data_term_difference(rng, shape):
    """Signal (a smooth field and a step) cancels in the diagonal differences; the i.i.d.
    noise of the difference is what remains (edges add under 5 %)."""
    for sigma in (0.05, 0.2):
        d = _terms(rng, shape, sigma)
        got = float(lam_auto.noise_scale(d))
        assert got == pytest.approx(sigma, rel=0.05), (shape, sigma, got)


def test_noise_scale_of_several_classes_is_the_rms_over_pairs(rng):
    # classes 1 and 2 carry independent noise s, class 0 none: pairs (0,1), (0,2) have noise s,
    # pair (1,2) has sqrt(2) s -> rms over the three pairs = s * sqrt((1 + 1 + 2) / 3)
    s = 0.1
    d = _terms(rng, (256, 256), s, classes=3)
    assert float(lam_auto.noise_scale(d)) == pytest.approx(s * np.sqrt(4 / 3), rel=0.05)


def test_choose_snaps_to_the_nearest_grid_value_in_log_scale():
    k = lam_auto.KAPPA
    for lam in lam_auto.LAM_GRID:
        assert lam_auto.choose(lam / k) == lam
        assert lam_auto.choose(lam * 1.1 / k) == lam
    assert lam_auto.choose(1e3) == max(lam_auto.LAM_GRID)
    assert lam_auto.choose(1e-9) == min(lam_auto.LAM_GRID)
    assert lam_auto.choose(0.1, kappa=0.3, grid=(0.01, 0.03, 0.1)) == 0.03
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise scale"):
            lam_auto.choose(bad)


def test_config_accepts_auto_and_names_bad_values():
    cfg = Self2SegConfig(lam="auto")
    assert cfg.lam == "auto"
    with pytest.raises(ValueError, match="lam='auto' is chosen per image"):
        cfg.hyper()
    for bad in ("Auto", "0.03", -1.0, 0.0, float("nan"), True):
        with pytest.raises(ValueError, match="lam must be"):
            Self2SegConfig(lam=bad)


def _cv(lam="auto"):
    return baselines.chan_vese_config(lam, max_outer=20, mask_tol=1e-3)


def test_auto_run_equals_the_fixed_run_at_the_chosen_value(make_blob, tiny_n2f_config):
    """segment(lam="auto") goes on from the W-step it chose with (two compiled programs instead
    of one: equal up to float rounding); segment_iter and a progress callback give the same."""
    img, _ = make_blob(3, 48, 0.15)
    for cfg in (_cv(), tiny_n2f_config.replace(lam="auto")):
        key = jax.random.key(5)
        auto = s2s.segment(key, img, config=cfg)
        assert auto.lam in lam_auto.LAM_GRID
        fixed = s2s.segment(key, img, config=cfg.replace(lam=auto.lam))
        assert fixed.lam == auto.lam and fixed.num_outer == auto.num_outer
        assert np.mean(auto.labels != fixed.labels) <= 1e-3
        np.testing.assert_allclose(auto.energies, fixed.energies, rtol=1e-4)
        events = []
        watched = s2s.segment(key, img, config=cfg, progress=events.append)
        assert len(events) == watched.num_outer == auto.num_outer and watched.lam == auto.lam
        np.testing.assert_array_equal(watched.labels, auto.labels)
        gen = s2s.segment_iter(key, img, config=cfg)
        n = 0
        try:
            while True:
                next(gen)
                n += 1
        except StopIteration as stop:
            it = stop.value
        assert n == it.num_outer and it.lam == auto.lam
        np.testing.assert_array_equal(it.labels, auto.labels)
    assert s2s.segment(key, img, config=_cv(0.02)).lam == pytest.approx(0.02)


def test_auto_lies_in_the_good_lam_range():
    """On synthetic nuclei (two noise levels) the chosen lam is among the grid values whose
    Dice is within 0.03 of the grid's best — a range that excludes most of the grid. (Known
    limit, not tested: a noise scale cannot see object size; on nuclei of radius 3-6 at the
    same noise a scratch check found the choice one grid step above the best.)"""
    for noise, radius in ((40.0, (5.0, 14.0)), (70.0, (5.0, 14.0))):
        noisy, _, gt = s2s.data.synthetic_nuclei(3, (96, 96), noise=noise, contrast=(60., 150.),
                                                 radius=radius)
        key = jax.random.key(0)
        auto = s2s.segment(key, noisy, config=_cv())
        dice = {lam: metrics.dice(s2s.segment(key, noisy, config=_cv(lam)).mask, gt)
                for lam in lam_auto.LAM_GRID}
        best = max(dice.values())
        good = [lam for lam, d in dice.items() if d >= best - 0.03]
        assert len(good) <= len(dice) // 2, dice
        assert auto.lam in good, (noise, auto.lam, dice)
        assert metrics.dice(auto.mask, gt) == pytest.approx(dice[auto.lam], abs=1e-6)


def test_segment_batch_chooses_per_image(make_blob):
    imgs = np.stack([make_blob(s, 40, n)[0] for s, n in ((0, 0.05), (1, 0.3))])
    key = jax.random.key(2)
    res = s2s.segment_batch(key, imgs, config=_cv())
    keys = jax.random.split(key, 2)
    singles = [s2s.segment(keys[i], imgs[i], config=_cv()) for i in range(2)]
    np.testing.assert_array_equal(res.lam, [r.lam for r in singles])
    assert res.lam[0] != res.lam[1]  # each image its own value
    for i in range(2):
        np.testing.assert_array_equal(res.labels[i], singles[i].labels)
        assert res.item(i).lam == singles[i].lam


def test_cli_parses_auto_and_reports_the_value(tmp_path):
    import tifffile

    from self2seg_jax.cli import main
    from self2seg_jax.cli.parser import build_parser, config_from_args

    args = build_parser().parse_args(["segment", "x.tif", "-o", "out", "--lam", "auto"])
    assert config_from_args(args)[0].lam == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "x.tif", "-o", "out", "--lam", "big"])
    toml = tmp_path / "c.toml"
    toml.write_text('lam = "auto"\nfg_expert = "constant"\nmax_outer = 3\n')
    img, _ = s2s.data.load_sample(crop=(0, 0, 48, 48))
    tifffile.imwrite(tmp_path / "im.tif", img)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "im.tif"), "-o", str(out), "--config", str(toml),
                 "--quiet"]) == 0
    import json

    rep = json.loads((out / "im_report.json").read_text())
    assert rep["options"]["lam"] == "auto" and rep["lam"] in lam_auto.LAM_GRID


def test_auto_for_volumes_and_several_classes(rng):
    """The choice works on any class count and spatial rank: a 3-class image and a volume."""
    yy, xx = np.mgrid[:40, :40]
    three = np.where(xx < 13, 0.1, np.where(xx < 26, 0.5, 0.9)) + 0.08 * rng.standard_normal(
        (40, 40))
    res = s2s.segment(jax.random.key(0), three.astype(np.float32), num_classes=3, config=_cv())
    assert res.lam in lam_auto.LAM_GRID
    truth = np.where(xx < 13, 0, np.where(xx < 26, 1, 2))
    assert np.mean(res.labels == truth) > 0.95
    zz, yy, xx = np.mgrid[:16, :24, :24]
    ball = (zz - 8) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 < 36
    vol = (0.2 + 0.5 * ball + 0.1 * rng.standard_normal(ball.shape)).astype(np.float32)
    res = s2s.segment(jax.random.key(0), vol, volume=True, config=_cv())
    assert res.lam in lam_auto.LAM_GRID and metrics.dice(res.mask, ball) > 0.9
