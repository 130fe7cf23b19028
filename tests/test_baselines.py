"""The comparison methods: convex Chan–Vese (= Self2Seg with two constant experts, checked
against an independent NumPy reference), Noise2Fast on the whole image, and the sequential
baseline (Noise2Fast, then Chan–Vese)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import alternating, api, baselines, experts, initialisation, metrics
from self2seg_jax.config import Self2SegConfig


def _cv_image(seed=0, n=24, noise=0.2):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    gt = ((yy - n / 2) ** 2 + (xx - 0.42 * n) ** 2 < (n / 4) ** 2) | (
        (yy - 0.2 * n) ** 2 + (xx - 0.8 * n) ** 2 < (n / 8) ** 2
    )
    img = 0.3 + 0.3 * gt + noise * rng.standard_normal((n, n))
    return img.astype(np.float32), gt


# --------------------------------------------------------------------------------------
# independent reference: NumPy Chambolle–Pock for min_{u in [0,1]} lam TV(u) + <r, u>
# --------------------------------------------------------------------------------------


def _grad(u):
    gy, gx = np.zeros_like(u), np.zeros_like(u)
    gy[:-1] = u[1:] - u[:-1]
    gx[:, :-1] = u[:, 1:] - u[:, :-1]
    return gy, gx


def _div(py, px):
    """-grad^T (forward differences with Neumann boundary)."""
    d = np.zeros_like(py)
    d[0] += py[0]
    d[1:-1] += py[1:-1] - py[:-2]
    d[-1] -= py[-2]
    d[:, 0] += px[:, 0]
    d[:, 1:-1] += px[:, 1:-1] - px[:, :-2]
    d[:, -1] -= px[:, -2]
    return d


def _tv(u, isotropic):
    gy, gx = _grad(u)
    return float(np.sum(np.hypot(gy, gx)) if isotropic else np.sum(np.abs(gy) + np.abs(gx)))


def reference_mask_step(r, lam, *, isotropic, tol=1e-6, max_iter=20000, check_every=50):
    """Cold-started primal-dual on the box, stopped on the relative primal-dual gap."""
    u = (r < 0).astype(np.float64)
    ub, py, px = u.copy(), np.zeros_like(u), np.zeros_like(u)
    step = 0.99 / np.sqrt(8.0)
    for it in range(1, max_iter + 1):
        gy, gx = _grad(ub)
        py, px = py + step * gy, px + step * gx
        if isotropic:
            scale = np.maximum(1.0, np.hypot(py, px) / lam)
            py, px = py / scale, px / scale
        else:
            py, px = np.clip(py, -lam, lam), np.clip(px, -lam, lam)
        u_new = np.clip(u + step * (_div(py, px) - r), 0.0, 1.0)
        ub, u = 2 * u_new - u, u_new
        if it % check_every == 0:
            primal = lam * _tv(u, isotropic) + np.sum(r * u)
            dual = np.sum(np.minimum(0.0, r - _div(py, px)))
            if (primal - dual) / (np.sum(np.abs(r)) + lam * _tv(u, isotropic)) <= tol:
                return u
    raise AssertionError("reference primal-dual did not converge")


def reference_chan_vese(f, m0, lam, *, isotropic, max_outer=30):
    """Alternate exact region means and the reference u-step, threshold 1/2."""
    m = m0.copy()
    for _ in range(max_outer):
        c1, c2 = f[m].mean(), f[~m].mean()
        r = (f - c1) ** 2 - (f - c2) ** 2
        new = reference_mask_step(r, lam, isotropic=isotropic) >= 0.5
        if np.array_equal(new, m):
            return new
        m = new
    raise AssertionError("reference Chan-Vese did not converge")


def cv_energy(f, m, lam, isotropic):
    """Binary Chan-Vese energy lam TV(m) + sum_in (f - c1)^2 + sum_out (f - c2)^2."""
    c1, c2 = f[m].mean(), f[~m].mean()
    return (
        lam * _tv(m.astype(np.float64), isotropic)
        + np.sum((f[m] - c1) ** 2)
        + np.sum((f[~m] - c2) ** 2)
    )


def test_reference_operators_are_adjoint(rng):
    u, py, px = rng.normal(size=(3, 7, 9))
    gy, gx = _grad(u)
    assert np.sum(gy * py + gx * px) == pytest.approx(-np.sum(u * _div(py, px)), rel=1e-12)


def test_reference_mask_step_is_optimal(rng):
    """The reference solver is itself right: no feasible perturbation does better."""
    r = rng.normal(size=(10, 12)) * 0.2
    u = reference_mask_step(r, 0.15, isotropic=False, tol=1e-9)
    e = lambda v: 0.15 * _tv(v, False) + np.sum(r * v)  # noqa: E731
    for k in range(30):
        v = np.clip(u + 0.05 * np.random.default_rng(k).normal(size=u.shape), 0, 1)
        assert e(v) >= e(u) - 1e-7


@pytest.mark.parametrize("isotropic", [False, True], ids=["aniso", "iso"])
def test_chan_vese_is_the_constant_expert_scheme_and_matches_reference(isotropic):
    img, gt = _cv_image(0, 20, 0.2)
    lam = 0.03
    cfg = s2s.Self2SegConfig(
        lam=lam,
        mu=0.0,
        fg_expert="constant",
        bg_expert="constant",
        init_denoise=False,
        max_outer=30,
        mask_tol=0.0,
        energy_p=0.0,
        isotropic_tv=isotropic,
        pd_tol=1e-5,
        normalise="minmax",  # no clipping: the experts are then the raw region means
    )
    res = s2s.segment(jax.random.key(0), img, config=cfg)
    assert res.status == alternating.STATUS_NAMES[alternating.CONVERGED]

    f, _, _ = api.normalise(api.validate_image(img)[0], "minmax")
    m0 = f > initialisation.otsu_threshold(f)
    np.testing.assert_array_equal(res.init_mask, m0)
    f64 = f.astype(np.float64)
    ref = reference_chan_vese(f64, m0, lam, isotropic=isotropic)
    # the same segmentation up to a pixel or two (binary minimisers need not be unique, and
    # with isotropic TV thresholding is exact only up to the discretisation)
    assert np.mean(ref != res.mask) <= (0.005 if not isotropic else 0.01)
    # ...and the same Chan-Vese energy: both are minimisers
    assert cv_energy(f64, res.mask, lam, isotropic) == pytest.approx(
        cv_energy(f64, ref, lam, isotropic), rel=1e-3
    )
    # converged = the mask did not change, so the last W-step fitted the region means of the
    # final mask: the constant experts are the Chan-Vese c1, c2 (in the input's scale)
    np.testing.assert_allclose(res.denoised_fg, img[res.mask].mean(), rtol=1e-4)
    np.testing.assert_allclose(res.denoised_bg, img[~res.mask].mean(), rtol=1e-4)
    assert metrics.dice(res.mask, gt) > 0.8
    # baselines.chan_vese is this very scheme
    cv = s2s.chan_vese(img, lam=lam, max_outer=30, config=cfg)
    assert cv.dtype == np.bool_ and cv.shape == img.shape
    np.testing.assert_array_equal(cv, res.mask)
    full = s2s.chan_vese(img, lam=lam, max_outer=30, config=cfg, return_result=True)
    assert isinstance(full, s2s.Self2SegResult)
    np.testing.assert_array_equal(full.mask, res.mask)
    np.testing.assert_array_equal(full.energies, res.energies)


def test_chan_vese_config_overrides_experts_keeps_solver_options():
    base = s2s.Self2SegConfig(
        fg_expert="n2f",
        bg_expert="n2f",
        mu=0.3,
        data_filter=3,
        energy_p=0.4,
        init_denoise=True,
        pd_tol=3e-6,
        pd_max_iter=1234,
        isotropic_tv=False,
    )
    cfg = baselines.chan_vese_config(0.07, max_outer=9, mask_tol=0.01, config=base)
    assert (cfg.lam, cfg.fg_expert, cfg.bg_expert, cfg.init_denoise) == (
        0.07,
        "constant",
        "constant",
        False,
    )
    assert (cfg.max_outer, cfg.mask_tol, cfg.energy_p, cfg.mu, cfg.data_filter) == (
        9,
        0.01,
        0.0,
        0.0,
        1,
    )
    assert (cfg.pd_tol, cfg.pd_max_iter, cfg.isotropic_tv) == (3e-6, 1234, False)
    assert baselines.chan_vese_config(0.05) == s2s.Self2SegConfig().replace(
        lam=0.05,
        fg_expert="constant",
        bg_expert="constant",
        init_denoise=False,
        max_outer=50,
        mask_tol=0.0,
        energy_p=0.0,
        mu=0.0,
        data_filter=1,
        refine_size=0,  # plain convex Chan-Vese: no local refinement step after it
    )
    assert baselines.chan_vese_config(0.07, config=base.replace(refine_size=31)).refine_size == 0
    with pytest.raises(ValueError, match="lam"):
        baselines.chan_vese_config(-1.0)


def test_chan_vese_energy_non_increasing_and_init():
    img, gt = _cv_image(3, 24, 0.25)
    res = s2s.chan_vese(
        img,
        lam=0.03,
        max_outer=20,
        return_result=True,
        config=s2s.Self2SegConfig(pd_tol=1e-6, pd_max_iter=20000, isotropic_tv=False),
    )
    e = res.energies
    assert np.all(np.diff(e) <= 1e-5 * np.abs(e[1:])), e
    # a mask init is used as given
    m = s2s.chan_vese(img, lam=0.03, init=gt, max_outer=20, return_result=True)
    np.testing.assert_array_equal(m.init_mask, gt)
    assert metrics.dice(m.mask, gt) > 0.8


# --------------------------------------------------------------------------------------
# Noise2Fast and the sequential baseline
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smooth_noisy():
    n = 32
    yy, xx = np.mgrid[:n, :n] / n
    clean = (0.3 + 0.4 * ((yy - 0.5) ** 2 + (xx - 0.45) ** 2 < 0.07) + 0.1 * np.sin(3 * xx)).astype(
        np.float32
    )
    noisy = s2s.data.add_gaussian_noise(0, clean, 0.15)
    return clean, noisy


def test_denoise_n2f_improves_psnr(smooth_noisy, tiny_n2f_config):
    """(Whole-image training: with the tiny budget of 40 steps, crop training's gain on this
    32x32 image depends on the key — 17.2..24.0 dB over five keys.)"""
    clean, noisy = smooth_noisy
    tiny_n2f_config = tiny_n2f_config.replace(learning_rate=1e-2, train_mode="full")  # traced: no new compilation
    key = jax.random.key(0)
    den = s2s.denoise_n2f(key, noisy, config=tiny_n2f_config)
    assert den.shape == noisy.shape and den.dtype == np.float32
    assert np.all(np.isfinite(den))
    # in the input's intensity scale
    assert noisy.min() - 1e-3 <= den.min() and den.max() <= noisy.max() + 1e-3
    p_noisy = metrics.psnr(noisy, clean, data_range=1.0)
    p_den = metrics.psnr(den, clean, data_range=1.0)
    print(f"Noise2Fast PSNR {p_noisy:.2f} -> {p_den:.2f} dB")
    assert p_den > p_noisy + 1.0
    # deterministic given the key; affine-equivariant in the intensity scale
    np.testing.assert_array_equal(s2s.denoise_n2f(key, noisy, config=tiny_n2f_config), den)
    big = s2s.denoise_n2f(key, noisy.astype(np.float64) * 100 + 7, config=tiny_n2f_config)
    np.testing.assert_allclose(big, den * 100 + 7, rtol=1e-4, atol=1e-2)
    with pytest.raises(ValueError, match="non-finite"):
        s2s.denoise_n2f(key, np.where(clean > 0.5, np.nan, noisy), config=tiny_n2f_config)


def test_denoiser_trains_on_the_whole_image_whatever_the_experts_mode():
    """The stand-alone denoiser (Otsu start of ``init_denoise``, sequential baseline) is
    Noise2Fast on the whole image with at least 400 steps, also when the experts train on crops
    (crop training made a poor denoiser: issue 15)."""
    crops = Self2SegConfig(train_mode="crops").spec().train
    d = experts.denoiser_config(crops)
    assert d.mode == "full" and d.max_steps >= 400 and d.patience >= 100 and d.min_steps >= 100
    assert experts.denoiser_config(dataclasses.replace(crops, max_steps=900)).max_steps == 900


def test_default_denoiser_reaches_noise2fast_quality_on_a_dsb_patch():
    """Default configuration, a 128² DSB2018 patch at noise 30 (0..255): the denoiser must gain
    over 10.5 dB (measured 18.5 -> 30.0 dB; the crop-trained denoiser reached 27.6 dB here)."""
    patches = s2s.data.sample_patches(128)
    clean = patches[1][1].astype(np.float32)
    noisy = s2s.data.add_gaussian_noise(30001, clean, 30.0)
    den = s2s.denoise_n2f(jax.random.key(0), noisy)
    p0, p1 = (metrics.psnr(x, clean, data_range=255.0) for x in (noisy, den))
    print(f"PSNR {p0:.2f} -> {p1:.2f} dB")
    assert p1 > p0 + 10.5


def test_sequential_is_denoise_then_chan_vese(smooth_noisy, tiny_n2f_config):
    clean, noisy = smooth_noisy
    tiny_n2f_config = tiny_n2f_config.replace(learning_rate=1e-2, train_mode="full")
    key = jax.random.key(0)
    mask, den = s2s.sequential(key, noisy, lam=0.02, config=tiny_n2f_config, max_outer=10)
    assert mask.dtype == np.bool_ and mask.shape == noisy.shape
    np.testing.assert_array_equal(den, s2s.denoise_n2f(key, noisy, config=tiny_n2f_config))
    cv = s2s.chan_vese(den, lam=0.02, max_outer=10, config=tiny_n2f_config)
    np.testing.assert_array_equal(mask, cv)
    assert metrics.dice(mask, clean > 0.55) > 0.9
    # a threshold init applies to the denoised image
    m2, _ = s2s.sequential(key, noisy, lam=0.02, init=0.5, config=tiny_n2f_config, max_outer=10)
    np.testing.assert_array_equal(
        m2, s2s.chan_vese(den, lam=0.02, init=0.5, max_outer=10, config=tiny_n2f_config)
    )
