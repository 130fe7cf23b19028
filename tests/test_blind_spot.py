"""Blind-spot (J-invariant) expert predictions and the ``data_term="blind_spot"`` option."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import alternating, experts, ops


def _box3(z):
    k = jnp.asarray([[0.1, 0.2, 0.1], [0.2, 0.6, 0.3], [0.0, 0.1, 0.2]], z.dtype)
    f = lambda q: jax.scipy.signal.convolve2d(q, k, mode="same")  # noqa: E731
    return f(z) if z.ndim == 2 else jax.vmap(f)(z)


@pytest.mark.parametrize("shape", [(8, 10), (9, 11), (2, 6, 8)])
def test_blind_spot_output_never_sees_its_own_pixel(shape):
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    ndim = 2
    jac = jax.jacfwd(lambda z: ops.checkerboard_blind_spot_nd(_box3, z, ndim))(x)
    n = x.size
    jac = jac.reshape(n, n)
    # cropped border voxels (odd sizes) are copied from `full` (= x here): their own weight is 1
    own = np.asarray(jnp.diag(jac)).reshape(shape)
    crop = tuple(slice(0, s // 2 * 2) for s in shape[-2:])
    assert np.all(own[(Ellipsis,) + crop] == 0.0)
    # ...and the map is not trivial: every cropped output depends on some other pixel
    assert np.all(np.abs(np.asarray(jac)).sum(1).reshape(shape)[(Ellipsis,) + crop] > 0.1)
    # leading axes are batch axes: no mixing between images
    if len(shape) == 3:
        j = np.asarray(jac).reshape(shape + shape)
        assert np.all(j[0, :, :, 1] == 0.0) and np.all(j[1, :, :, 0] == 0.0)


def test_blind_spot_3d_is_j_invariant():
    y = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6, 8)), jnp.float32)
    net = lambda q: 2.0 * q + jnp.roll(q, 1, -1)  # noqa: E731  (sees the "centre" of the squeezed image)
    jac = jax.jacfwd(lambda z: ops.checkerboard_blind_spot_nd(net, z, 3))(y).reshape(y.size, y.size)
    assert np.all(np.diag(np.asarray(jac)) == 0.0)
    np.testing.assert_allclose(np.asarray(jac).sum(1), 3.0, rtol=1e-6)  # weights preserved


def test_blind_spot_residual_is_true_error_plus_noise_variance():
    """Noise2Self: for a J-invariant prediction g, E (f - g)^2 = E (clean - g)^2 + sigma^2;
    the full-image output of the same linear expert underestimates its error by its noise
    pass-through (2 k_centre sigma^2)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256] / 256.0
    clean = (0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32)
    sigma = 0.1
    f = jnp.asarray(clean + sigma * rng.normal(size=clean.shape).astype(np.float32))
    k = 5
    kernel = rng.uniform(0, 1, size=(k, k)).astype(np.float32)
    kernel[k // 2, k // 2] = 3.0
    kernel /= kernel.sum()
    cfg = experts.TrainConfig(kind="linear", linear_size=k)
    params = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(0.0)}
    full = experts.apply_expert(params, f, cfg)
    bs = experts.blind_spot_output(params, f, cfg, full)
    c = jnp.asarray(clean)
    sl = (slice(8, -8), slice(8, -8))  # away from the boundary padding
    gap_bs = float(jnp.mean((f - bs)[sl] ** 2) - jnp.mean((c - bs)[sl] ** 2))
    gap_full = float(jnp.mean((f - full)[sl] ** 2) - jnp.mean((c - full)[sl] ** 2))
    assert gap_bs == pytest.approx(sigma**2, rel=0.05)
    assert gap_full == pytest.approx(sigma**2 * (1 - 2 * kernel[k // 2, k // 2]), rel=0.1)
    # a constant expert is already blind
    cfg_c = experts.TrainConfig(kind="constant")
    den = jnp.full_like(f, 0.5)
    assert experts.blind_spot_output({"c": jnp.asarray(0.5)}, f, cfg_c, den) is den


def test_blind_spot_data_term_picks_the_better_denoiser_not_the_noisier_one():
    """Two linear 'experts' on a smooth noisy image: A passes noise through (large centre
    weight), B averages. B is closer to the clean image everywhere; the paper's data term
    prefers A, the blind-spot one prefers B."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64] / 64.0
    clean = (0.4 + 0.2 * np.sin(3 * xx)).astype(np.float32)
    f = jnp.asarray(clean + 0.1 * rng.normal(size=clean.shape).astype(np.float32))
    cfg = experts.TrainConfig(kind="linear", linear_size=3)
    ka = np.full((3, 3), 0.02, np.float32)
    ka[1, 1] = 0.84
    kb = np.full((3, 3), 1 / 9, np.float32)
    pa = {"kernel": jnp.asarray(ka), "bias": jnp.asarray(0.0)}
    pb = {"kernel": jnp.asarray(kb), "bias": jnp.asarray(0.0)}
    da, db = experts.apply_expert(pa, f, cfg), experts.apply_expert(pb, f, cfg)
    assert jnp.mean((da - clean) ** 2) > jnp.mean((db - clean) ** 2)  # B is the better denoiser
    den = jnp.stack([da, db])
    for blind, a_wins in ((False, True), (True, False)):
        st = alternating.SchemeStatic(fg=cfg, bg=cfg, blind_spot=blind)
        pred = alternating.data_predictions((pa, pb), den, f, st)
        d = (f[None] - pred) ** 2
        assert bool(jnp.mean(d[0]) < jnp.mean(d[1])) == a_wins, blind
    # the output is unchanged: only the data term differs
    st = alternating.SchemeStatic(fg=cfg, bg=cfg, blind_spot=False)
    assert alternating.data_predictions((pa, pb), den, f, st) is den


def test_segment_with_blind_spot_data_term(make_blob, tiny_n2f_config):
    """End to end with CNN experts: runs, segments the blob, keeps the denoised output's
    definition (composite of the expert outputs), is deterministic; constant experts give
    exactly the paper's data term."""
    img, gt = make_blob(3, 48, 0.15)
    cfg = tiny_n2f_config.replace(fg_expert="n2f", bg_expert="n2f", data_term="blind_spot")
    r1 = s2s.segment(jax.random.key(0), img, config=cfg)
    r2 = s2s.segment(jax.random.key(0), img, config=cfg)
    np.testing.assert_array_equal(r1.mask, r2.mask)
    assert s2s.metrics.dice(r1.mask, gt) > 0.9
    np.testing.assert_allclose(
        r1.denoised, r1.u * r1.denoised_fg + (1 - r1.u) * r1.denoised_bg, rtol=1e-5, atol=1e-4
    )
    const = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", init_denoise=False)
    a = s2s.segment(jax.random.key(0), img, config=const)
    b = s2s.segment(jax.random.key(0), img, config=const.replace(data_term="blind_spot"))
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(a.energies, b.energies, rtol=1e-6)


def test_config_data_term_validation():
    with pytest.raises(ValueError, match="data_term"):
        s2s.Self2SegConfig(data_term="blind").validate()
    assert s2s.Self2SegConfig(data_term="blind_spot").static().blind_spot
    assert not s2s.Self2SegConfig().static().blind_spot
    img = np.random.default_rng(0).uniform(size=(24, 24)).astype(np.float32)
    with pytest.raises(ValueError, match="two-class"):
        s2s.segment(jax.random.key(0), img, num_classes=3,
                    config=s2s.Self2SegConfig(data_term="blind_spot"))
