"""Energy functions: joint energy (5)/(10), data terms, Chan–Vese special case, region means."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from self2seg_jax import energy, ops

joint_energy = jax.jit(energy.joint_energy, static_argnames=("isotropic",))
binary_energy = jax.jit(energy.binary_energy, static_argnames=("isotropic",))
chan_vese_energy = jax.jit(energy.chan_vese_energy, static_argnames=("isotropic",))
data_term = jax.jit(energy.data_term, static_argnames=("filter_size",))
region_means = jax.jit(energy.region_means)

F32 = jnp.float32


def test_joint_energy_hand_example_2x2():
    u = jnp.asarray([[1.0, 0.0], [0.0, 0.0]], F32)
    d_fg = jnp.asarray([[0.1, 0.2], [0.3, 0.4]], F32)
    d_bg = jnp.asarray([[0.5, 0.6], [0.7, 0.8]], F32)
    # data: u*d_fg + (1-u)*d_bg = 0.1 + 0.6 + 0.7 + 0.8 = 2.2
    # TV: only pixel (0,0) has a gradient (-1, -1): sqrt(2) isotropic, 2 anisotropic
    assert float(joint_energy(u, d_fg, d_bg, 0.5)) == pytest.approx(0.5 * math.sqrt(2) + 2.2, rel=1e-6)
    assert float(joint_energy(u, d_fg, d_bg, 0.5, isotropic=False)) == pytest.approx(3.2, rel=1e-6)
    # reference-mask term mu/2 ||u - u_ref||^2 with u_ref = 0: + 0.5 * 2 * 1
    e_mu = joint_energy(u, d_fg, d_bg, 0.5, mu=2.0, u_ref=jnp.zeros_like(u), isotropic=False)
    assert float(e_mu) == pytest.approx(4.2, rel=1e-6)
    # mu is ignored without u_ref
    assert float(joint_energy(u, d_fg, d_bg, 0.5, mu=2.0, isotropic=False)) == pytest.approx(3.2, rel=1e-6)


def test_joint_energy_hand_example_relaxed_3x3_and_batch():
    u1 = jnp.asarray([[0.0, 0.5, 1.0]] * 3, F32)  # TV = 3 * (0.5 + 0.5) = 3 (iso = aniso)
    u2 = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], F32)
    # u2: pixel (0,1): gy = 1; (1,0): gx = 1; (1,1): (gy, gx) = (-1, -1); total iso 2 + sqrt2
    d_fg = jnp.ones((3, 3), F32)
    d_bg = jnp.zeros((3, 3), F32)
    lam = 0.1
    e = joint_energy(jnp.stack([u1, u2]), d_fg, d_bg, lam)
    assert e.shape == (2,)
    assert float(e[0]) == pytest.approx(lam * 3 + 4.5, rel=1e-6)
    assert float(e[1]) == pytest.approx(lam * (2 + math.sqrt(2)) + 1.0, rel=1e-6)
    e_an = joint_energy(jnp.stack([u1, u2]), d_fg, d_bg, lam, isotropic=False)
    assert float(e_an[0]) == pytest.approx(lam * 3 + 4.5, rel=1e-6)
    assert float(e_an[1]) == pytest.approx(lam * 4 + 1.0, rel=1e-6)


def test_joint_energy_is_affine_in_data_terms(rng):
    u = jnp.asarray(rng.random((2, 6, 7)), F32)
    d_fg = jnp.asarray(rng.random((2, 6, 7)), F32)
    d_bg = jnp.asarray(rng.random((2, 6, 7)), F32)
    e = np.asarray(joint_energy(u, d_fg, d_bg, 0.3))
    ref = 0.3 * np.asarray(ops.tv(u)) + np.sum(
        np.asarray(u) * np.asarray(d_fg) + (1 - np.asarray(u)) * np.asarray(d_bg), axis=(-2, -1)
    )
    np.testing.assert_allclose(e, ref, rtol=1e-5)


@pytest.mark.parametrize("tau", [0.25, 0.5, 0.8])
def test_binary_energy_is_energy_of_thresholded_mask(tau, rng):
    u = jnp.asarray(rng.random((9, 8)), F32)
    d_fg = jnp.asarray(rng.random((9, 8)), F32)
    d_bg = jnp.asarray(rng.random((9, 8)), F32)
    m = (np.asarray(u) >= tau).astype(np.float32)
    for iso in (True, False):
        got = float(binary_energy(u, d_fg, d_bg, 0.2, tau=tau, isotropic=iso))
        want = float(joint_energy(jnp.asarray(m), d_fg, d_bg, 0.2, isotropic=iso))
        assert got == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------------------
# data terms
# --------------------------------------------------------------------------------------


def test_data_term_unfiltered(rng):
    f = rng.random((7, 9)).astype(np.float32)
    den = rng.random((7, 9)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(data_term(f, den)), (f - den) ** 2, rtol=1e-6)


def test_data_term_filter_constant_residual_keeps_bias():
    """A biased expert (constant residual c) keeps c^2 everywhere, also at the border."""
    f = jnp.full((8, 10), 0.7, F32)
    den = jnp.full((8, 10), 0.4, F32)
    np.testing.assert_allclose(np.asarray(data_term(f, den, filter_size=5)), 0.09, rtol=1e-5)


def test_data_term_filter_averages_out_zero_mean_residual():
    """A checkerboard residual +-a averages to +-a/9 in the interior of a 3x3 window."""
    a = 0.2
    i, j = np.mgrid[:8, :8]
    res = a * np.where((i + j) % 2 == 0, 1.0, -1.0).astype(np.float32)
    f = jnp.asarray(0.5 + res)
    den = jnp.full((8, 8), 0.5, F32)
    d = np.asarray(data_term(f, den, filter_size=3))
    np.testing.assert_allclose(d[1:-1, 1:-1], (a / 9) ** 2, rtol=1e-4)
    assert d.max() < (a**2) / 4  # much smaller than the unfiltered a^2


@pytest.mark.parametrize("size", [3, 5])
def test_data_term_filter_matches_bruteforce(size, rng):
    f = rng.random((2, 7, 9)).astype(np.float32)
    den = rng.random((2, 7, 9)).astype(np.float32)
    res = (f - den).astype(np.float64)
    r = size // 2
    ref = np.zeros_like(res)
    for i in range(7):
        for j in range(9):
            ref[:, i, j] = res[:, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].mean(axis=(-2, -1))
    np.testing.assert_allclose(np.asarray(data_term(f, den, filter_size=size)), ref**2, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------------------
# Chan–Vese
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("isotropic", [True, False])
def test_chan_vese_energy_is_joint_energy_with_constant_experts(isotropic, rng):
    f = jnp.asarray(rng.random((3, 8, 8)), F32)
    u = jnp.asarray(rng.random((3, 8, 8)), F32)
    c1 = jnp.asarray([0.2, 0.5, 0.9], F32)[:, None, None]
    c2 = jnp.asarray([0.1, 0.6, 0.3], F32)[:, None, None]
    got = np.asarray(chan_vese_energy(u, f, c1, c2, 0.07, isotropic=isotropic))
    want = np.asarray(joint_energy(u, (f - c1) ** 2, (f - c2) ** 2, 0.07, isotropic=isotropic))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # and by hand for the first image
    fn, un = np.asarray(f[0], np.float64), np.asarray(u[0], np.float64)
    hand = 0.07 * float(ops.tv(u[0], isotropic=isotropic)) + np.sum(
        un * (fn - 0.2) ** 2 + (1 - un) * (fn - 0.1) ** 2
    )
    assert float(got[0]) == pytest.approx(hand, rel=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_region_means_are_exact_minimisers(binary, rng):
    f = rng.random((10, 12))
    u = (rng.random((10, 12)) < 0.4).astype(np.float64) if binary else rng.random((10, 12))
    c1, c2 = (float(v) for v in region_means(jnp.asarray(f, F32), jnp.asarray(u, F32)))
    assert c1 == pytest.approx(np.sum(u * f) / np.sum(u), rel=1e-5)
    assert c2 == pytest.approx(np.sum((1 - u) * f) / np.sum(1 - u), rel=1e-5)

    def data(a, b):  # float64, the part of the CV energy that depends on (c1, c2)
        return np.sum(u * (f - a) ** 2 + (1 - u) * (f - b) ** 2)

    e0 = data(c1, c2)
    for eps in (1e-2, -1e-2, 1e-1):
        assert data(c1 + eps, c2) > e0
        assert data(c1, c2 + eps) > e0
        assert data(c1 + eps, c2 - eps) > e0


def test_region_means_batch_axes(rng):
    f = rng.random((4, 6, 6)).astype(np.float32)
    u = (rng.random((4, 6, 6)) < 0.5).astype(np.float32)
    c1, c2 = region_means(jnp.asarray(f), jnp.asarray(u))
    assert c1.shape == c2.shape == (4,)
    for b in range(4):
        assert float(c1[b]) == pytest.approx(f[b][u[b] > 0].mean(), rel=1e-5)
        assert float(c2[b]) == pytest.approx(f[b][u[b] == 0].mean(), rel=1e-5)
