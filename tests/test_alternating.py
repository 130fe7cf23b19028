"""The alternating scheme: energy decrease, equivalence with convex Chan–Vese, backends,
expert stacking, determinism, no recompilation, the paper's Fig. 1 toy, output invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import alternating, api, initialisation, metrics, pdhg


def _const_config(**kw):
    base = dict(
        lam=0.03,
        mu=0.0,
        fg_expert="constant",
        bg_expert="constant",
        init_denoise=False,
        max_outer=30,
        mask_tol=0.0,
        energy_p=0.0,
    )
    base.update(kw)
    return s2s.Self2SegConfig(**base)


def _cv_image(seed=0, n=24, noise=0.2):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    gt = ((yy - n / 2) ** 2 + (xx - 0.42 * n) ** 2 < (n / 4) ** 2) | (
        (yy - 0.2 * n) ** 2 + (xx - 0.8 * n) ** 2 < (n / 8) ** 2
    )
    img = 0.3 + 0.3 * gt + noise * rng.standard_normal((n, n))
    return img.astype(np.float32), gt


# --------------------------------------------------------------------------------------
# (a) Remark 1: with exact (constant) experts the energy never increases
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "isotropic,pd_tol,slack", [(False, 1e-6, 1e-5), (True, 1e-5, 1e-4)], ids=["aniso", "iso"]
)
def test_constant_experts_energy_non_increasing(isotropic, pd_tol, slack):
    img, _ = _cv_image(1, 24, 0.25)
    cfg = _const_config(isotropic_tv=isotropic, pd_tol=pd_tol, pd_max_iter=20000)
    res = s2s.segment(jax.random.key(0), img, config=cfg)
    e = res.energies
    assert res.num_outer >= 3, "too few iterations for the test to mean anything"
    assert np.all(np.isfinite(e))
    assert np.all(np.diff(e) <= slack * np.abs(e[1:])), e
    assert e[-1] < e[0]


# --------------------------------------------------------------------------------------
# (b) constant-expert Self2Seg == convex Chan–Vese (independent reference)
# --------------------------------------------------------------------------------------


def reference_chan_vese(f, m0, lam, *, isotropic, tol, max_outer=30):
    """Alternate exact region means and a cold-started Python-loop primal-dual u-step."""
    m = m0.copy()
    for _ in range(max_outer):
        c1, c2 = f[m].mean(), f[~m].mean()
        r = jnp.asarray((f - c1) ** 2 - (f - c2) ** 2, jnp.float32)
        state, _ = pdhg.pdhg_solve_python(
            r, lam, tol=tol, max_iter=3000, check_every=50, isotropic=isotropic
        )
        new = np.asarray(state.u) >= 0.5
        if np.array_equal(new, m):
            return new
        m = new
    raise AssertionError("reference Chan-Vese did not converge")


@pytest.mark.parametrize("isotropic", [False, True], ids=["aniso", "iso"])
def test_constant_experts_equal_reference_chan_vese(isotropic):
    img, gt = _cv_image(0, 20, 0.2)
    lam = 0.03
    cfg = _const_config(lam=lam, isotropic_tv=isotropic, pd_tol=1e-5)
    res = s2s.segment(jax.random.key(0), img, config=cfg)
    assert res.status == alternating.STATUS_NAMES[alternating.CONVERGED]

    f, _, _ = api.normalise(api.validate_image(img))
    m0 = f > initialisation.otsu_threshold(f)
    np.testing.assert_array_equal(res.init_mask, m0)
    ref = reference_chan_vese(f, m0, lam, isotropic=isotropic, tol=1e-5)
    assert np.mean(ref != res.mask) < 0.005
    # converged = the mask did not change, so the last W-step fitted the region means of the
    # final mask: the constant experts are the Chan-Vese c1, c2 (in the input's scale)
    np.testing.assert_allclose(res.denoised_fg, img[res.mask].mean(), rtol=1e-4)
    np.testing.assert_allclose(res.denoised_bg, img[~res.mask].mean(), rtol=1e-4)
    assert metrics.dice(res.mask, gt) > 0.8
    # baselines.chan_vese is this very scheme
    cv = s2s.chan_vese(img, lam=lam, max_outer=30, config=cfg)
    np.testing.assert_array_equal(cv, res.mask)


# --------------------------------------------------------------------------------------
# CNN-expert runs (all share the TINY_N2F compilation, 32x32)
# --------------------------------------------------------------------------------------


def _scheme_inputs(img, cfg):
    f, _, _ = api.normalise(api.validate_image(img))
    m = f > initialisation.otsu_threshold(f)
    w = jnp.asarray(m.astype(np.float32))
    return jnp.asarray(f), w, 1.0 - w, w


def test_run_scheme_jitted_vs_python(blob32, tiny_n2f_config):
    img, _ = blob32
    cfg = tiny_n2f_config
    f, w_fg, w_bg, u0 = _scheme_inputs(img, cfg)
    key = jax.random.key(3)
    a = alternating.run_scheme(key, f, w_fg, w_bg, u0, cfg.hyper(), st=cfg.static())
    b = alternating.run_scheme_python(key, f, w_fg, w_bg, u0, cfg.hyper(), st=cfg.static())
    assert int(a.it) == int(b.it) and int(a.status) == int(b.status)
    n = int(a.it)
    assert np.mean(np.asarray(a.mask) != np.asarray(b.mask)) < 0.01
    np.testing.assert_allclose(np.asarray(a.energies[:n]), np.asarray(b.energies[:n]), rtol=1e-3)
    np.testing.assert_allclose(np.asarray(a.den), np.asarray(b.den), atol=1e-3)
    np.testing.assert_array_equal(np.asarray(a.train_steps), np.asarray(b.train_steps))


def test_stacked_experts_equal_sequential(blob32, tiny_n2f_result, tiny_n2f_config):
    img, _ = blob32
    base = tiny_n2f_config
    never, always = base.replace(stack_experts="never"), base.replace(stack_experts="always")
    assert not never.static().stack_experts and always.static().stack_experts
    if jax.default_backend() == "cpu":  # "auto" is sequential on CPU: reuse the shared run
        assert never.static() == base.static()
        seq = tiny_n2f_result
    else:
        seq = s2s.segment(jax.random.key(0), img, config=never)
    stacked = s2s.segment(jax.random.key(0), img, config=always)
    np.testing.assert_array_equal(stacked.mask, seq.mask)
    assert stacked.num_outer == seq.num_outer
    np.testing.assert_allclose(stacked.energies, seq.energies, rtol=1e-4)
    np.testing.assert_allclose(stacked.denoised, seq.denoised, atol=1e-4 * np.ptp(img))


def test_deterministic_given_key(blob32, tiny_n2f_result, tiny_n2f_config):
    img, _ = blob32
    base = tiny_n2f_config
    again = s2s.segment(jax.random.key(0), img, config=base)
    for name in ("mask", "u", "denoised", "energies", "denoised_fg", "denoised_bg", "train_steps"):
        np.testing.assert_array_equal(getattr(again, name), getattr(tiny_n2f_result, name), err_msg=name)
    # a different key gives different CNN experts
    other = s2s.segment(jax.random.key(1), img, config=base)
    assert not np.array_equal(other.denoised_fg, tiny_n2f_result.denoised_fg)


def test_no_recompilation_for_new_image_key_and_numbers(
    blob32, tiny_n2f_config, tiny_n2f_result, make_blob
):
    base = tiny_n2f_config  # tiny_n2f_result: this worker has compiled it
    before = alternating.TRACE_COUNT[0]
    img2, _ = make_blob(seed=7, size=32, noise=0.15)
    cfg2 = base.replace(lam=0.05, mu=1e-3, learning_rate=2e-3, threshold=0.4, pd_tol=3e-4,
                            mask_tol=0.01, energy_p=0.2)
    res = s2s.segment(jax.random.key(42), img2, config=cfg2)
    res2 = s2s.segment(jax.random.key(43), img2 * 3 + 1, init=img2 > np.median(img2), config=cfg2)
    assert alternating.TRACE_COUNT[0] == before
    assert res.mask.shape == res2.mask.shape == (32, 32)


def test_trace_counter_counts_compilations(make_blob):
    """The counter the no-recompilation test relies on does move on a new static config / shape."""
    cfg = _const_config(max_outer=2, pd_check_every=7)  # static config used nowhere else
    img, _ = make_blob(seed=3, size=20)
    before = alternating.TRACE_COUNT[0]
    s2s.segment(jax.random.key(0), img, config=cfg)
    assert alternating.TRACE_COUNT[0] == before + 1
    img2, _ = make_blob(seed=4, size=20)
    s2s.segment(jax.random.key(5), img2, config=cfg.replace(lam=0.1, threshold=0.6))
    assert alternating.TRACE_COUNT[0] == before + 1
    img3, _ = make_blob(seed=4, size=18)
    s2s.segment(jax.random.key(5), img3, config=cfg)
    assert alternating.TRACE_COUNT[0] == before + 2


# --------------------------------------------------------------------------------------
# (g) paper Fig. 1: equal-mean stripe textures
# --------------------------------------------------------------------------------------


def test_stripes_toy_linear_experts_beat_chan_vese():
    noisy, clean, gt = s2s.data.stripes(0, size=64, noise=0.1)
    boxes = s2s.Boxes(fg=[(24, 24, 40, 40)], bg=[(0, 0, 16, 16)])
    assert gt[24:40, 24:40].all() and not gt[0:16, 0:16].any()
    cfg = s2s.Self2SegConfig(
        lam=0.02, mu=0.0, fg_expert="linear", bg_expert="linear", linear_size=7,
        init_denoise=False,
    )
    res = s2s.segment(jax.random.key(0), noisy, init=boxes, config=cfg)
    np.testing.assert_array_equal(res.init_mask, np.pad(np.ones((16, 16), bool), 24))
    d_s2s = metrics.dice(res.mask, gt)
    d_cv = metrics.dice(s2s.chan_vese(noisy, lam=0.02), gt)
    assert d_s2s >= 0.9, d_s2s
    assert d_cv < 0.7, d_cv
    # the joint denoising is better than the noisy input
    assert metrics.psnr(res.denoised, clean, data_range=1.0) > metrics.psnr(noisy, clean, data_range=1.0)


# --------------------------------------------------------------------------------------
# (h) output invariants
# --------------------------------------------------------------------------------------


def test_output_invariants(tiny_n2f_result, blob32, tiny_n2f_config):
    img, _ = blob32
    res = tiny_n2f_result
    assert res.u.min() >= 0.0 and res.u.max() <= 1.0
    np.testing.assert_array_equal(res.mask, res.u >= 0.5)
    assert np.all(np.isfinite(res.denoised))
    assert img.min() - 1e-4 <= res.denoised.min() and res.denoised.max() <= img.max() + 1e-4
    # the composite u D_F + (1 - u) D_B
    np.testing.assert_allclose(
        res.denoised, res.u * res.denoised_fg + (1 - res.u) * res.denoised_bg, atol=1e-5
    )
    assert 1 <= res.num_outer <= tiny_n2f_config.max_outer


def test_threshold_option(blob32, tiny_n2f_config):
    img, _ = blob32
    res = s2s.segment(jax.random.key(0), img, config=tiny_n2f_config.replace(threshold=0.3))
    np.testing.assert_array_equal(res.mask, res.u >= 0.3)


def test_intensity_scale_invariance(blob32, tiny_n2f_result, tiny_n2f_config):
    img, _ = blob32
    big = img.astype(np.float64) * 1000.0 + 5.0
    res = s2s.segment(jax.random.key(0), big, config=tiny_n2f_config)
    np.testing.assert_array_equal(res.mask, tiny_n2f_result.mask)
    assert np.all(np.isfinite(res.denoised))
    assert big.min() - 1e-2 <= res.denoised.min() and res.denoised.max() <= big.max() + 1e-2
    assert np.ptp(res.denoised) > 0.3 * np.ptp(big)  # really in the input's scale
    np.testing.assert_allclose(res.denoised, tiny_n2f_result.denoised * 1000.0 + 5.0, rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(res.energies, tiny_n2f_result.energies, rtol=1e-5)
