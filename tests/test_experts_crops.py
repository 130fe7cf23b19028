"""Crop training and tiled inference of the CNN expert (cost independent of the image size):
tiled forward passes equal untiled ones, the crop loss is an unbiased estimate of the
whole-image region-masked Noise2Fast loss, crops are drawn where the region is, and crop
training reaches the same segmentation as full-image training on small images."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import api, experts, metrics, ops

SMALL = experts.TrainConfig(width=6, depth=2, crop=8, batch=2, val_crops=4, tile=8,
                            max_steps=20, min_steps=10, patience=10, val_every=5, n_average=2,
                            conv_impl="lax", mode="crops")


def _params(key, cfg):
    """Random (not freshly initialised: biases non-zero too) parameters of the CNN expert."""
    p = experts.init_params(key, "n2f", cfg)
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.fold_in(key, 7), len(leaves))
    return jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape)
                                     for a, k in zip(leaves, keys)])


@pytest.mark.parametrize(
    "shape,ndim,channels,tile,conv3d",
    [((37, 29), 2, 0, 8, "full"), ((3, 20, 18), 2, 3, 8, "full"), ((10, 13, 9), 3, 0, 4, "full"),
     ((10, 13, 9), 3, 0, 4, "factorised"), ((16, 16), 2, 0, 16, "full")],
    ids=["2d-ragged", "2d-colour", "3d", "3d-factorised", "one-tile"],
)
@pytest.mark.parametrize("impl", ["lax", "loopsafe"])
def test_apply_tiled_equals_apply(shape, ndim, channels, tile, conv3d, impl, rng):
    cfg = dataclasses.replace(SMALL, ndim=ndim, channels=channels, conv_impl=impl, conv3d=conv3d)
    f = jnp.asarray(rng.random(shape), jnp.float32)
    p = _params(jax.random.key(1), cfg)
    whole = experts.apply(p, f, "n2f", cfg)
    tiled = jax.jit(experts.apply_tiled, static_argnums=(2, 3, 4))(p, f, "n2f", cfg, tile)
    assert tiled.shape == f.shape
    np.testing.assert_allclose(np.asarray(tiled), np.asarray(whole), atol=2e-6)


def _whole_image_loss(p, f, w, axis, cfg):
    """The region-masked Noise2Fast loss of one squeeze direction on the whole image."""
    net = experts._net(cfg)
    pairs = ops.checkerboard_pairs(f, cfg.ndim, axis)
    wpairs = ops.checkerboard_pairs(w, cfg.ndim, axis)
    tot = sum(jnp.sum(wt * (net.apply({"params": p}, x) - y) ** 2)
              for (x, y), (_, wt) in zip(pairs, wpairs))
    return tot / jnp.sum(w) / max(cfg.channels, 1)


@pytest.mark.parametrize("shape,ndim,depth", [((24, 20), 2, 2), ((24, 22), 2, 3),
                                              ((12, 10, 8), 3, 2)],
                         ids=["2d", "2d-odd-depth", "3d"])
def test_crop_loss_is_unbiased_for_the_whole_image_loss(shape, ndim, depth, rng):
    """E over tiles drawn from ``prob`` of the crop loss = the whole-image loss, exactly: the
    tiles partition the image and each crop sees its full receptive field and the image's
    border padding (computed as the exact expectation, summing over all tiles). An odd depth
    checks that the halos keep the crops' checkerboard colours those of the image."""
    cfg = dataclasses.replace(SMALL, ndim=ndim, depth=depth, crop=4 if ndim == 3 else 8)
    f = jnp.asarray(rng.random(shape), jnp.float32)
    w = jnp.asarray(rng.random(shape) * (rng.random(shape) < 0.5), jnp.float32)
    p = _params(jax.random.key(2), cfg)
    s = experts.crop_sampler(f, w, cfg)
    n_tiles = s.starts.shape[0]
    assert n_tiles == np.prod([-(-n // cfg.crop) for n in shape])
    for axis in range(ndim):
        per_tile = jax.vmap(
            lambda t, a=axis: experts.crop_loss(p, *experts.crop_batch(s, t[None], cfg, a), a, cfg)
        )(jnp.arange(n_tiles))
        expected = float(jnp.sum(s.prob * per_tile))
        whole = float(_whole_image_loss(p, f, w, axis, cfg))
        assert expected == pytest.approx(whole, rel=1e-4)


@pytest.mark.parametrize("ndim,channels,depth,conv3d", [(2, 0, 2, "full"), (2, 3, 3, "full"),
                                                        (3, 0, 2, "full"),
                                                        (3, 0, 2, "factorised")])
@pytest.mark.parametrize("impl", ["lax", "loopsafe"])
def test_trimmed_net_equals_the_interior_of_the_same_net(ndim, channels, depth, conv3d, impl, rng):
    """``trim=True`` (VALID convolutions) gives the ``SAME`` output without ``depth`` pixels per
    side, also where ``valid`` marks a zero-padded image border inside the window."""
    cfg = dataclasses.replace(SMALL, ndim=ndim, channels=channels, depth=depth, conv_impl=impl,
                              conv3d=conv3d)
    spatial = (14, 12) if ndim == 2 else (10, 11, 9)
    x = jnp.asarray(rng.random((2,) + ((channels,) if channels else ()) + spatial), jnp.float32)
    v = jnp.ones((2,) + spatial, jnp.float32).at[:, :3].set(0.0)  # a border inside the window
    x = x * (v[:, None] if channels else v)
    p = _params(jax.random.key(3), cfg)
    net = experts._net(cfg)
    same = net.apply({"params": p}, x, v)
    trimmed = jax.jit(lambda p, x, v: net.apply({"params": p}, x, v, trim=True))(p, x, v)
    assert trimmed.shape == x.shape[:x.ndim - ndim] + tuple(n - 2 * depth for n in spatial)
    np.testing.assert_allclose(np.asarray(trimmed), np.asarray(experts._trim(same, ndim, depth)),
                               atol=2e-6)


def test_crops_are_drawn_where_the_region_is(rng):
    f = jnp.asarray(rng.random((32, 32)), jnp.float32)
    w = jnp.zeros((32, 32), jnp.float32).at[:, 16:].set(1.0)
    s = experts.crop_sampler(f, w, SMALL)
    prob = np.asarray(s.prob).reshape(4, 4)
    assert prob[:, 2:].sum() > 0.995  # the floor keeps empty tiles drawable, barely
    np.testing.assert_allclose(prob[:, 2:], prob[0, 2], rtol=1e-6)
    assert np.all(prob[:, :2] > 0)


def _blob(seed=0, n=32, noise=0.1):
    r = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    gt = (yy - n / 2) ** 2 + (xx - n / 2 + 1) ** 2 < (n / 4) ** 2
    texture = 0.1 * np.sin(xx / 2.0)
    return (0.3 + 0.4 * gt + texture + noise * r.standard_normal((n, n))).astype(np.float32), gt


def test_fit_n2f_crops_reduces_the_region_loss_and_is_deterministic(rng):
    img, gt = _blob(1)
    f = jnp.asarray(img)
    w = jnp.asarray(gt, jnp.float32)
    cfg = dataclasses.replace(SMALL, max_steps=60, min_steps=60)
    p0 = experts.init_params(jax.random.key(0), "n2f", cfg)
    fit = jax.jit(experts.fit_n2f_crops, static_argnums=(5,))
    p1, out, steps = fit(jax.random.key(3), p0, f, w, 1e-2, cfg)
    assert int(steps) == 60 and out.shape == f.shape and bool(jnp.all(jnp.isfinite(out)))
    before = sum(float(_whole_image_loss(p0, f, w, a, cfg)) for a in range(2))
    after = sum(float(_whole_image_loss(p1, f, w, a, cfg)) for a in range(2))
    assert after < 0.5 * before
    p2, out2, _ = fit(jax.random.key(3), p0, f, w, 1e-2, cfg)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
    _, out3, _ = fit(jax.random.key(4), p0, f, w, 1e-2, cfg)
    assert not np.array_equal(np.asarray(out), np.asarray(out3))  # the key draws the crops


def test_crop_training_reaches_the_full_training_segmentation(tiny_n2f_config):
    """On a small image both training modes end at the same mask (up to a few pixels) and
    their foreground experts agree where the foreground is."""
    img, gt = _blob(2, 32, 0.08)
    full = s2s.segment(jax.random.key(0), img, config=tiny_n2f_config.replace(train_mode="full"))
    crops = s2s.segment(jax.random.key(0), img,
                        config=tiny_n2f_config.replace(train_mode="crops", crop_batch=2,
                                                       crop_size=16))
    assert metrics.dice(full.mask, gt) > 0.9 and metrics.dice(crops.mask, gt) > 0.9
    assert np.mean(full.mask != crops.mask) < 0.02
    m = full.mask & crops.mask
    err = np.abs(full.denoised_fg[m] - crops.denoised_fg[m]).mean()
    assert err < 0.2 * np.abs(img[m] - full.denoised_fg[m]).mean() + 0.02


def test_config_reaches_the_train_config():
    cfg = s2s.Self2SegConfig(train_mode="crops", crop_size=16, crop_batch=3, val_crops=5,
                             tile_size=64)
    t = cfg.spec(ndim=2).train
    assert (t.mode, t.crop, t.batch, t.val_crops, t.tile) == ("crops", 16, 3, 5, 64)
    t3 = cfg.spec(ndim=3).train  # volumes: cubes with about as many voxels
    assert t3.crop == 6 and t3.tile == 16
    auto = s2s.Self2SegConfig(crop_batch=0).spec(ndim=2).train
    assert auto.batch == s2s.config.backend_policy()["crop_batch"]
    with pytest.raises(ValueError, match="crop_size"):
        s2s.Self2SegConfig(crop_size=7)
    with pytest.raises(ValueError, match="train_mode"):
        s2s.Self2SegConfig(train_mode="patches")


# --------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------


def test_quantile_normalisation_ignores_outliers_and_falls_back(rng):
    a = rng.normal(100.0, 10.0, (64, 64))
    a[0, 0] = 1e4  # one hot pixel
    f_mm, lo_mm, hi_mm = api.normalise(a, "minmax")
    f_q, lo_q, hi_q = api.normalise(a, "quantile")
    assert hi_mm == 1e4 and f_mm[1:].std() < 0.01  # min-max: everything squeezed near 0
    assert hi_q < 200 and 0.1 < f_q.std() < 0.3
    assert f_q.min() == 0.0 and f_q.max() == 1.0 and f_q.dtype == np.float32
    np.testing.assert_allclose(lo_q + f_q * (hi_q - lo_q), np.clip(a, lo_q, hi_q), rtol=1e-5)
    # mostly constant image: the percentiles coincide -> min-max
    b = np.zeros((40, 40))
    b[0, 0] = 1.0
    fb, lo, hi = api.normalise(b, "quantile")
    assert (lo, hi) == (0.0, 1.0) and fb[0, 0] == 1.0
    with pytest.raises(ValueError, match="normalise"):
        api.normalise(a, "zscore")


def test_quantile_scale_does_not_grow_with_image_size():
    """More pixels of the same noise: min-max's range grows, the quantile range stays."""
    r = np.random.default_rng(0)
    small, large = r.normal(0, 1, (64, 64)), r.normal(0, 1, (1024, 1024))
    q = [api.normalise(x, "quantile") for x in (small, large)]
    m = [api.normalise(x, "minmax") for x in (small, large)]
    assert abs((q[1][2] - q[1][1]) / (q[0][2] - q[0][1]) - 1) < 0.15
    assert (m[1][2] - m[1][1]) / (m[0][2] - m[0][1]) > 1.25
