"""self2seg_jax.energy: the Self2Seg energy for C classes (eqs. (5), (10), (13)), data terms,
one-hot labels and the energy of a label image (Chan–Vese as the constant-expert case)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from self2seg_jax import energy, ops

energy_fn = jax.jit(energy.energy, static_argnames=("ndim", "spacing", "isotropic"))
labels_energy = jax.jit(energy.labels_energy,
                        static_argnames=("ndim", "spacing", "isotropic"))
data_terms = jax.jit(energy.data_terms, static_argnames=("filter_size", "ndim", "channels"))
tv = jax.jit(ops.tv, static_argnames=("ndim", "spacing", "isotropic"))
mean_filter = jax.jit(ops.mean_filter, static_argnames=("size", "ndim"))

F32 = jnp.float32


def two_class(v):
    """u = (1 - v, v): background first."""
    return jnp.stack([1.0 - v, v])


def joint_energy(v, d_fg, d_bg, lam, **kw):
    """The OLD two-class joint_energy(v, d_fg, d_bg, lam) in the new API."""
    return energy_fn(two_class(v), jnp.stack([d_bg, d_fg]), lam, **kw)


# --------------------------------------------------------------------------------------
# hand-computed energies
# --------------------------------------------------------------------------------------


def test_two_class_energy_hand_example_2x2():
    v = jnp.asarray([[1.0, 0.0], [0.0, 0.0]], F32)
    d_fg = jnp.asarray([[0.1, 0.2], [0.3, 0.4]], F32)
    d_bg = jnp.asarray([[0.5, 0.6], [0.7, 0.8]], F32)
    # data: v*d_fg + (1-v)*d_bg = 0.1 + 0.6 + 0.7 + 0.8 = 2.2
    # TV: only pixel (0,0) has a gradient (-1, -1): sqrt(2) isotropic, 2 anisotropic; the
    # two classes' TVs are equal and weighted lam/2 each
    e_iso = float(joint_energy(v, d_fg, d_bg, 0.5))
    assert e_iso == pytest.approx(0.5 * math.sqrt(2) + 2.2, rel=1e-6)
    assert float(joint_energy(v, d_fg, d_bg, 0.5, isotropic=False)) == pytest.approx(3.2, rel=1e-6)
    # reference-mask term: mu/4 ||u - u_ref||^2 over both classes = mu/2 (v - v_R)^2 with
    # v_R = 0: + 0.5 * 2 * 1
    u_ref = two_class(jnp.zeros_like(v))
    e_mu = joint_energy(v, d_fg, d_bg, 0.5, mu=2.0, u_ref=u_ref, isotropic=False)
    assert float(e_mu) == pytest.approx(4.2, rel=1e-6)
    # mu is ignored without u_ref
    e_no_ref = float(joint_energy(v, d_fg, d_bg, 0.5, mu=2.0, isotropic=False))
    assert e_no_ref == pytest.approx(3.2, rel=1e-6)


def test_two_class_energy_hand_example_relaxed_3x3_and_batch():
    u1 = jnp.asarray([[0.0, 0.5, 1.0]] * 3, F32)  # TV = 3 * (0.5 + 0.5) = 3 (iso = aniso)
    u2 = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], F32)
    # u2: pixel (0,1): gy = 1; (1,0): gx = 1; (1,1): (gy, gx) = (-1, -1); total iso 2 + sqrt2
    d_fg = jnp.ones((3, 3), F32)
    d_bg = jnp.zeros((3, 3), F32)
    lam = 0.1
    for iso, tv2 in ((True, 2 + math.sqrt(2)), (False, 4.0)):
        def one(v, iso=iso):
            return energy.energy(two_class(v), jnp.stack([d_bg, d_fg]), lam, isotropic=iso)

        batched = jax.jit(jax.vmap(one))
        e = batched(jnp.stack([u1, u2]))
        assert e.shape == (2,)
        assert float(e[0]) == pytest.approx(lam * 3 + 4.5, rel=1e-6)
        assert float(e[1]) == pytest.approx(lam * tv2 + 1.0, rel=1e-6)
        assert float(e[1]) == pytest.approx(float(joint_energy(u2, d_fg, d_bg, lam, isotropic=iso)),
                                            rel=1e-6)


def test_three_class_energy_counts_each_interface_once():
    """Three vertical stripes: each interface is in the TV of two classes, weighted lam/2, so
    the (anisotropic) TV part is lam * total interface length."""
    h, w = 5, 9
    labels = jnp.asarray(np.repeat(np.array([[0] * 3 + [1] * 3 + [2] * 3]), h, 0), jnp.int32)
    u = energy.one_hot(labels, 3)
    assert u.shape == (3, h, w) and u.dtype == jnp.float32
    d = jnp.asarray(np.random.default_rng(0).random((3, h, w)), F32)
    lam = 0.3
    data = float(np.sum(np.take_along_axis(np.asarray(d), np.asarray(labels)[None], 0)))
    for iso in (True, False):  # straight interfaces: iso = aniso
        got = float(energy_fn(u, d, lam, isotropic=iso))
        assert got == pytest.approx(data + lam * 2 * h, rel=1e-6)
        assert float(labels_energy(labels, d, lam, isotropic=iso)) == pytest.approx(got, rel=1e-6)


def test_three_class_reference_term(rng):
    u = jnp.asarray(rng.random((3, 4, 5)), F32)
    u_ref = jnp.asarray(rng.random((3, 4, 5)), F32)
    d = jnp.asarray(rng.random((3, 4, 5)), F32)
    e0 = float(energy_fn(u, d, 0.2))
    e = float(energy_fn(u, d, 0.2, mu=0.6, u_ref=u_ref))
    ref = 0.25 * 0.6 * float(np.sum((np.asarray(u) - np.asarray(u_ref)) ** 2))
    assert e - e0 == pytest.approx(ref, rel=1e-5)


def test_energy_is_affine_in_data_terms_and_matches_formula(rng):
    c = 3
    u = jnp.asarray(rng.random((c, 6, 7)), F32)
    d = jnp.asarray(rng.random((c, 6, 7)), F32)
    e = float(energy_fn(u, d, 0.3))
    un, dn = np.asarray(u, np.float64), np.asarray(d, np.float64)
    ref = 0.15 * float(np.sum(np.asarray(tv(u)))) + np.sum(un * dn)
    assert e == pytest.approx(ref, rel=1e-5)
    # affine in d: E(d1 + d2) - E(0) = (E(d1) - E(0)) + (E(d2) - E(0))
    d2 = jnp.asarray(rng.random((c, 6, 7)), F32)
    z = jnp.zeros_like(d)
    lhs = float(energy_fn(u, d + d2, 0.3)) - float(energy_fn(u, z, 0.3))
    e_z = float(energy_fn(u, z, 0.3))
    rhs = float(energy_fn(u, d, 0.3)) + float(energy_fn(u, d2, 0.3)) - 2 * e_z
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_energy_3d_with_spacing(rng):
    v = jnp.zeros((4, 5, 6), F32).at[1:3, 1:4, 2:5].set(1.0)
    d = jnp.asarray(rng.random((2, 4, 5, 6)), F32)
    sp = (2.0, 1.0, 1.0)
    got = float(energy_fn(two_class(v), d, 0.4, ndim=3, spacing=sp, isotropic=False))
    # faces of the 2x3x3 box: z faces 2 * 3*3 (halved by h_z = 2), y faces 2 * 2*3, x faces 2 * 2*3
    tv_v = 0.5 * 2 * 9 + 2 * 6 + 2 * 6
    data = float(np.sum(np.asarray(v) * np.asarray(d[1]) + (1 - np.asarray(v)) * np.asarray(d[0])))
    assert got == pytest.approx(0.4 * tv_v + data, rel=1e-6)


@pytest.mark.parametrize("tau", [0.25, 0.5, 0.8])
def test_labels_energy_is_energy_of_thresholded_mask(tau, rng):
    """OLD binary_energy(u, d_fg, d_bg, lam, tau) = labels_energy(u >= tau, (d_bg, d_fg), lam)."""
    v = jnp.asarray(rng.random((9, 8)), F32)
    d_fg = jnp.asarray(rng.random((9, 8)), F32)
    d_bg = jnp.asarray(rng.random((9, 8)), F32)
    labels = (v >= tau).astype(jnp.int32)
    m = labels.astype(F32)
    for iso in (True, False):
        got = float(labels_energy(labels, jnp.stack([d_bg, d_fg]), 0.2, isotropic=iso))
        want = float(joint_energy(m, d_fg, d_bg, 0.2, isotropic=iso))
        assert got == pytest.approx(want, rel=1e-6)
        # and by hand
        mn = np.asarray(m, np.float64)
        hand = 0.2 * float(tv(m, isotropic=iso)) + np.sum(
            mn * np.asarray(d_fg) + (1 - mn) * np.asarray(d_bg))
        assert got == pytest.approx(hand, rel=1e-5)


def test_one_hot(rng):
    labels = jnp.asarray(rng.integers(0, 4, size=(5, 6)), jnp.int32)
    oh = np.asarray(energy.one_hot(labels, 4))
    assert oh.shape == (4, 5, 6)
    np.testing.assert_array_equal(oh.sum(0), 1.0)
    np.testing.assert_array_equal(oh.argmax(0), np.asarray(labels))
    assert energy.one_hot(labels, 4, jnp.int32).dtype == jnp.int32


# --------------------------------------------------------------------------------------
# data terms
# --------------------------------------------------------------------------------------


def test_data_terms_unfiltered(rng):
    f = rng.random((7, 9)).astype(np.float32)
    preds = rng.random((3, 7, 9)).astype(np.float32)
    d = np.asarray(data_terms(f, preds))
    assert d.shape == (3, 7, 9)
    np.testing.assert_allclose(d, (f[None] - preds) ** 2, rtol=1e-6)


def test_data_terms_filter_constant_residual_keeps_bias():
    """A biased expert (constant residual c) keeps c^2 everywhere, also at the border."""
    f = jnp.full((8, 10), 0.7, F32)
    preds = jnp.stack([jnp.full((8, 10), 0.4, F32), jnp.full((8, 10), 0.7, F32)])
    d = np.asarray(data_terms(f, preds, filter_size=5))
    np.testing.assert_allclose(d[0], 0.09, rtol=1e-5)
    np.testing.assert_allclose(d[1], 0.0, atol=1e-12)


def test_data_terms_filter_averages_out_zero_mean_residual():
    """A checkerboard residual +-a averages to +-a/9 in the interior of a 3x3 window."""
    a = 0.2
    i, j = np.mgrid[:8, :8]
    res = a * np.where((i + j) % 2 == 0, 1.0, -1.0).astype(np.float32)
    f = jnp.asarray(0.5 + res)
    preds = jnp.full((1, 8, 8), 0.5, F32)
    d = np.asarray(data_terms(f, preds, filter_size=3))[0]
    np.testing.assert_allclose(d[1:-1, 1:-1], (a / 9) ** 2, rtol=1e-4)
    assert d.max() < (a**2) / 4  # much smaller than the unfiltered a^2
    np.testing.assert_allclose(np.asarray(data_terms(f, preds))[0], a**2, rtol=1e-5)


@pytest.mark.parametrize("size", [3, 5])
def test_data_terms_filter_matches_bruteforce(size, rng):
    f = rng.random((7, 9)).astype(np.float32)
    preds = rng.random((2, 7, 9)).astype(np.float32)
    res = (f[None] - preds).astype(np.float64)
    r = size // 2
    ref = np.zeros_like(res)
    for i in range(7):
        for j in range(9):
            win = res[:, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
            ref[:, i, j] = win.mean(axis=(-2, -1))
    got = np.asarray(data_terms(f, preds, filter_size=size))
    np.testing.assert_allclose(got, ref**2, rtol=1e-4, atol=1e-7)


def test_data_terms_channels_sum_the_filtered_residuals(rng):
    """Colour: d_i = sum_channels [K (f_l - P_il)]^2 (filter per channel, then sum)."""
    f = rng.random((3, 6, 7)).astype(np.float32)  # (L, h, w)
    preds = rng.random((2, 3, 6, 7)).astype(np.float32)  # (C, L, h, w)
    d = np.asarray(data_terms(f, preds, filter_size=3, channels=True))
    assert d.shape == (2, 6, 7)
    per_channel = np.asarray(mean_filter(jnp.asarray(f[None] - preds), 3)) ** 2
    np.testing.assert_allclose(d, per_channel.sum(1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(data_terms(f, preds, channels=True)),
                               ((f[None] - preds) ** 2).sum(1), rtol=1e-5)


def test_data_terms_3d_filter(rng):
    f = rng.random((4, 5, 6)).astype(np.float32)
    preds = rng.random((2, 4, 5, 6)).astype(np.float32)
    d = np.asarray(data_terms(f, preds, filter_size=3, ndim=3))
    ref = np.asarray(mean_filter(jnp.asarray(f[None] - preds), 3, ndim=3)) ** 2
    np.testing.assert_allclose(d, ref, rtol=1e-5)
    # the interior voxel (1, 2, 3) is the square of the 3x3x3 mean residual
    res = f[None] - preds
    np.testing.assert_allclose(d[:, 1, 2, 3], res[:, 0:3, 1:4, 2:5].mean(axis=(1, 2, 3)) ** 2,
                               rtol=1e-4)


# --------------------------------------------------------------------------------------
# Chan–Vese = the energy with constant experts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("isotropic", [True, False])
def test_chan_vese_energy_is_energy_with_constant_experts(isotropic, rng):
    f = jnp.asarray(rng.random((8, 8)), F32)
    v = jnp.asarray(rng.random((8, 8)), F32)
    c1, c2 = 0.5, 0.1  # foreground, background constants
    preds = jnp.stack([jnp.full_like(f, c2), jnp.full_like(f, c1)])
    d = data_terms(f, preds)
    got = float(energy_fn(two_class(v), d, 0.07, isotropic=isotropic))
    fn, un = np.asarray(f, np.float64), np.asarray(v, np.float64)
    hand = 0.07 * float(tv(v, isotropic=isotropic)) + np.sum(
        un * (fn - c1) ** 2 + (1 - un) * (fn - c2) ** 2
    )
    assert got == pytest.approx(hand, rel=1e-5)
