"""Expert denoisers and their region-restricted W-steps (constant, smooth, linear, Noise2Fast CNN),
N-D / multi-channel experts, stacked experts (fit_group), whole-image Noise2Fast (denoise)
and blind-spot predictions."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from self2seg_jax import experts, ops

F32 = jnp.float32


def _img(rng, shape=(24, 24)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    clean = (
        0.5
        + 0.3 * np.sin(2 * np.pi * xx / 6.0) * (yy < shape[0] // 2)
        + 0.1 * (yy >= shape[0] // 2)
    )
    return np.clip(clean + 0.08 * rng.standard_normal(shape), 0, 1).astype(np.float32)


def test_train_config_is_static_and_has_no_kind():
    cfg = experts.TrainConfig()
    assert not hasattr(cfg, "kind")
    hash(cfg)
    assert experts.KINDS == ("n2f", "linear", "constant", "smooth")


# --------------------------------------------------------------------------------------
# constant
# --------------------------------------------------------------------------------------


def _smooth_ref(f, w, size, ndim):
    """Brute force (float64): leave-one-out weighted local mean + SMOOTH_PRIOR x region mean."""
    f, w = np.asarray(f, np.float64), np.asarray(w, np.float64)
    axes = tuple(range(-ndim, 0))
    c = (w * f).sum(axis=axes) / w.sum()
    c = c.reshape(c.shape + (1,) * ndim)
    r, p = size // 2, experts.SMOOTH_PRIOR
    out = np.zeros(np.broadcast_shapes(f.shape, w.shape))
    for idx in np.ndindex(*w.shape):
        win = tuple(slice(max(0, i - r), i + r + 1) for i in idx)
        ws, fs = w[win], f[(Ellipsis,) + win]
        num = (ws * fs).sum(axis=axes) - w[idx] * f[(Ellipsis,) + idx] + p * c[(Ellipsis,) + (0,) * ndim]
        out[(Ellipsis,) + idx] = num / (ws.sum() - w[idx] + p)
    return out


@pytest.mark.parametrize("shape,ndim,size", [((13, 17), 2, 5), ((2, 9, 10), 2, 7),
                                             ((6, 7, 8), 3, 3)])
def test_fit_smooth_matches_bruteforce(shape, ndim, size, rng):
    f = rng.random(shape).astype(np.float32)
    w = (rng.random(shape[-ndim:]) < 0.6).astype(np.float32) * rng.random(shape[-ndim:]).astype(np.float32)
    cfg = experts.TrainConfig(ndim=ndim, smooth_size=size, channels=shape[0] if len(shape) > ndim else 0)
    params, den, steps = jax.jit(experts.fit_smooth, static_argnums=2)(jnp.asarray(f), jnp.asarray(w), cfg)
    assert den.shape == f.shape and den.dtype == jnp.float32 and int(steps) == 0
    np.testing.assert_allclose(np.asarray(den), _smooth_ref(f, w, size, ndim), atol=1e-5)
    np.testing.assert_allclose(np.asarray(params["c"]),
                               np.asarray(experts.fit_constant(jnp.asarray(f), jnp.asarray(w))[0]["c"]))


def test_fit_smooth_is_blind_and_local(rng):
    """The output at a pixel does not see that pixel's value (except through the region mean,
    a 1/N share damped by the prior); its window's pixels it sees, pixels beyond only that way."""
    f = rng.random((20, 20)).astype(np.float32)
    w = np.ones((20, 20), np.float32)
    cfg = experts.TrainConfig(smooth_size=5)
    fit = jax.jit(experts.fit_smooth, static_argnums=2)
    a = np.asarray(fit(jnp.asarray(f), jnp.asarray(w), cfg)[1], np.float64)
    g = f.copy()
    g[10, 10] += 5.0
    d = np.abs(np.asarray(fit(jnp.asarray(g), jnp.asarray(w), cfg)[1], np.float64) - a)
    in_window = np.zeros_like(w, bool)
    in_window[8:13, 8:13] = True
    in_window[10, 10] = False
    assert d[in_window].min() == pytest.approx(5.0 / 25, rel=1e-2)  # 1 of 24 + prior
    prior_share = experts.SMOOTH_PRIOR * 5.0 / 400 / (24 + experts.SMOOTH_PRIOR)
    assert d[10, 10] == pytest.approx(prior_share, rel=1e-2)
    corner_share = experts.SMOOTH_PRIOR * 5.0 / 400 / (8 + experts.SMOOTH_PRIOR)  # 3x3 window
    assert d[~in_window].max() == pytest.approx(corner_share, rel=1e-2)


def test_fit_smooth_follows_a_background_ramp_a_constant_cannot():
    """On a region whose intensity is a ramp, the local mean is unbiased in the interior (up to
    the prior's pull, 1 pixel against the window's) while the region mean is off by the ramp."""
    yy, xx = np.mgrid[:40, :40].astype(np.float32)
    f = 0.2 + 0.6 * xx / 39
    w = np.ones_like(f)
    cfg = experts.TrainConfig(smooth_size=9)
    den = np.asarray(experts.fit_smooth(jnp.asarray(f), jnp.asarray(w), cfg)[1])
    inner = (slice(4, -4), slice(4, -4))
    bound = np.abs(f - f.mean())[inner] / (81 - 1 + experts.SMOOTH_PRIOR) + 1e-5
    assert (np.abs(den - f)[inner] <= bound).all()
    assert np.abs(den - f)[inner].max() < 0.005 < np.abs(f.mean() - f)[inner].max() / 10


def test_smooth_expert_has_no_apply_and_is_already_blind():
    cfg = experts.TrainConfig()
    p = experts.init_params(jax.random.key(0), "smooth", cfg)
    assert p["c"].shape == ()
    f = jnp.ones((8, 8), F32)
    with pytest.raises(ValueError, match="depends on its region weight"):
        experts.apply(p, f, "smooth", cfg)
    den = jnp.full((8, 8), 0.25, F32)
    assert experts.blind_spot_output(p, f, "smooth", cfg, den) is den


def test_fit_constant_is_weighted_mean(rng):
    f = rng.random((9, 11)).astype(np.float32)
    w = rng.random((9, 11)).astype(np.float32)
    params, den, steps = jax.jit(experts.fit_constant)(jnp.asarray(f), jnp.asarray(w))
    c = np.sum(w * f) / np.sum(w)
    assert float(params["c"]) == pytest.approx(c, rel=1e-5)
    np.testing.assert_allclose(np.asarray(den), c, rtol=1e-5)
    assert den.shape == f.shape and int(steps) == 0
    # it is the minimiser of sum w (f - c)^2
    loss = lambda a: np.sum(w * (f - a) ** 2)  # noqa: E731
    assert loss(c + 1e-2) > loss(c) and loss(c - 1e-2) > loss(c)


def test_fit_constant_ignores_zero_weight_pixels(rng):
    f = rng.random((8, 8)).astype(np.float32)
    w = np.zeros((8, 8), np.float32)
    w[:3] = 1.0
    g = f.copy()
    g[3:] = 100.0
    a = experts.fit_constant(jnp.asarray(f), jnp.asarray(w))[0]["c"]
    b = experts.fit_constant(jnp.asarray(g), jnp.asarray(w))[0]["c"]
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    assert float(a) == pytest.approx(f[:3].mean(), rel=1e-5)


@pytest.mark.parametrize("shape", [(3, 6, 7), (2, 4, 5, 6)], ids=["colour-2d", "channels-3d"])
def test_fit_constant_per_channel(shape, rng):
    f = jnp.asarray(rng.uniform(size=shape), F32)
    w = jnp.asarray(rng.uniform(size=shape[1:]) > 0.5, F32)
    params, den, _ = experts.fit_constant(f, w)
    axes = tuple(range(1, len(shape)))
    ref = (np.asarray(f) * np.asarray(w)).sum(axes) / np.asarray(w).sum()
    assert params["c"].shape == (shape[0],)
    np.testing.assert_allclose(np.asarray(params["c"]), ref, rtol=1e-5)
    assert den.shape == f.shape
    np.testing.assert_allclose(
        np.asarray(den).reshape(shape[0], -1), ref[:, None] * np.ones((1, w.size)), rtol=1e-5
    )
    # apply() of the fitted params reproduces the output
    cfg = experts.TrainConfig(channels=shape[0], ndim=len(shape) - 1)
    np.testing.assert_array_equal(
        np.asarray(experts.apply(params, f, "constant", cfg)), np.asarray(den)
    )


# --------------------------------------------------------------------------------------
# linear (exact weighted least squares on the Noise2Fast pairs)
# --------------------------------------------------------------------------------------


def _design(x, k):
    """Rows: zero-padded k x k patch (row-major) of each pixel of x, then a 1 (bias)."""
    r = k // 2
    xp = np.pad(x, r)
    h, w = x.shape
    rows = np.empty((h * w, k * k + 1))
    for i in range(h):
        for j in range(w):
            rows[i * w + j, :-1] = xp[i : i + k, j : j + k].ravel()
    rows[:, -1] = 1.0
    return rows


def _np_problem(f, w, k):
    """Stacked weighted design matrix / targets of the documented Noise2Fast loss."""
    As, bs, ws = [], [], []
    for (x, y), (_, wt) in zip(
        ops.checkerboard_pairs(jnp.asarray(f)), ops.checkerboard_pairs(jnp.asarray(w)), strict=False
    ):
        As.append(_design(np.asarray(x, np.float64), k))
        bs.append(np.asarray(y, np.float64).ravel())
        ws.append(np.asarray(wt, np.float64).ravel())
    return np.concatenate(As), np.concatenate(bs), np.concatenate(ws)


def _np_loss(theta, A, b, wts):
    return float(np.sum(wts * (A @ theta - b) ** 2))


def _np_apply(f, kernel, bias):
    k = kernel.shape[0]
    return (_design(f.astype(np.float64), k)[:, :-1] @ kernel.ravel()).reshape(f.shape) + bias


fit_linear = jax.jit(experts.fit_linear, static_argnames=("cfg",))


@pytest.mark.parametrize("k", [3, 5, 7])
def test_fit_linear_matches_numpy_lstsq(k, rng):
    f = _img(rng)
    w = (rng.random(f.shape) < 0.6).astype(np.float32)
    cfg = experts.TrainConfig(linear_size=k)
    params, den, steps = fit_linear(jnp.asarray(f), jnp.asarray(w), cfg=cfg)
    assert int(steps) == 0
    A, b, wts = _np_problem(f, w, k)
    sw = np.sqrt(wts)
    theta, *_ = np.linalg.lstsq(A * sw[:, None], b * sw, rcond=None)
    ref = _np_apply(f, theta[:-1].reshape(k, k), theta[-1])
    assert params["kernel"].shape == (k, k)
    np.testing.assert_allclose(np.asarray(den), ref, atol=1e-3)
    # the returned output is the returned filter applied to f
    np.testing.assert_allclose(
        np.asarray(den),
        _np_apply(f, np.asarray(params["kernel"]), float(params["bias"])),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        np.asarray(experts.apply(params, jnp.asarray(f), "linear", cfg)), np.asarray(den), atol=1e-6
    )
    # the loss it reaches is the least-squares optimum
    th_lib = np.concatenate(
        [np.asarray(params["kernel"], np.float64).ravel(), [float(params["bias"])]]
    )
    assert _np_loss(th_lib, A, b, wts) <= _np_loss(theta, A, b, wts) * (1 + 1e-4) + 1e-9


def test_fit_linear_is_exact_minimiser(rng):
    k = 5
    f = _img(rng)
    w = (rng.random(f.shape) < 0.5).astype(np.float32)
    params, _, _ = fit_linear(
        jnp.asarray(f), jnp.asarray(w), cfg=experts.TrainConfig(linear_size=k)
    )
    A, b, wts = _np_problem(f, w, k)
    th = np.concatenate([np.asarray(params["kernel"], np.float64).ravel(), [float(params["bias"])]])
    e0 = _np_loss(th, A, b, wts)
    for _ in range(10):
        d = rng.standard_normal(th.shape)
        d *= 1e-2 / np.linalg.norm(d)
        assert _np_loss(th + d, A, b, wts) > e0
        assert _np_loss(th - d, A, b, wts) > e0
    for idx in (0, k * k // 2, k * k):  # single coordinates, incl. centre tap and bias
        e = np.zeros_like(th)
        e[idx] = 1e-2
        assert _np_loss(th + e, A, b, wts) > e0 and _np_loss(th - e, A, b, wts) > e0


def test_fit_linear_uses_only_region_targets(rng):
    """Changing f far outside the region (beyond every receptive field) leaves the fit unchanged."""
    k = 3
    f = _img(rng, (16, 24))
    w = np.zeros(f.shape, np.float32)
    w[:, :8] = 1.0
    g = f.copy()
    g[:, 8 + 2 * (k // 2) + 2 :] = rng.random((16, 24 - 12))
    cfg = experts.TrainConfig(linear_size=k)
    pa, _, _ = fit_linear(jnp.asarray(f), jnp.asarray(w), cfg=cfg)
    pb, _, _ = fit_linear(jnp.asarray(g), jnp.asarray(w), cfg=cfg)
    np.testing.assert_allclose(np.asarray(pa["kernel"]), np.asarray(pb["kernel"]), atol=1e-5)
    assert float(pa["bias"]) == pytest.approx(float(pb["bias"]), abs=1e-5)
    # ... whereas changing f inside the region does change it
    h = f.copy()
    h[:, :6] = rng.random((16, 6))
    pc, _, _ = fit_linear(jnp.asarray(h), jnp.asarray(w), cfg=cfg)
    assert np.abs(np.asarray(pa["kernel"]) - np.asarray(pc["kernel"])).max() > 1e-3


def test_linear_init_is_identity(rng):
    cfg = experts.TrainConfig(linear_size=5)
    p = experts.init_params(jax.random.key(0), "linear", cfg)
    f = jnp.asarray(rng.random((10, 12)), F32)
    np.testing.assert_allclose(
        np.asarray(experts.apply(p, f, "linear", cfg)), np.asarray(f), atol=1e-6
    )


def test_constant_init_shape():
    assert (
        experts.init_params(jax.random.key(0), "constant", experts.TrainConfig())["c"].shape == ()
    )
    p = experts.init_params(jax.random.key(0), "constant", experts.TrainConfig(channels=3))
    assert p["c"].shape == (3,)


def test_unknown_kind_raises(rng):
    cfg = experts.TrainConfig()
    f = jnp.asarray(rng.random((8, 8)), F32)
    with pytest.raises(ValueError, match="unknown expert kind 'unet'"):
        experts.init_params(jax.random.key(0), "unet", cfg)
    with pytest.raises(ValueError, match="unknown expert kind"):
        experts.apply({}, f, "bm3d", cfg)
    with pytest.raises(ValueError, match="unknown expert kind"):
        experts.fit(None, None, f, jnp.ones_like(f), 1e-3, "median", cfg)


def test_fit_dispatch(rng):
    f = jnp.asarray(rng.random((12, 12)), F32)
    w = jnp.asarray((rng.random((12, 12)) < 0.5), F32)
    fit = jax.jit(
        lambda f, w, kind, cfg: experts.fit(None, None, f, w, 1e-3, kind, cfg), static_argnums=(2, 3)
    )
    p, den, _ = fit(f, w, "constant", experts.TrainConfig())
    assert float(p["c"]) == pytest.approx(float(jnp.sum(w * f) / jnp.sum(w)), rel=1e-5)
    np.testing.assert_allclose(np.asarray(den), float(p["c"]), rtol=1e-6)
    cfg = experts.TrainConfig(linear_size=3)
    pl, dl, _ = fit(f, w, "linear", cfg)
    pr, dr, _ = fit_linear(f, w, cfg=cfg)
    np.testing.assert_allclose(np.asarray(dl), np.asarray(dr), atol=1e-6)


# --------------------------------------------------------------------------------------
# Noise2Fast CNN
# --------------------------------------------------------------------------------------

N2F_CFG = experts.TrainConfig(
    width=8,
    depth=2,
    max_steps=40,
    min_steps=20,
    patience=20,
    val_every=10,
    n_average=2,
    conv_impl="loopsafe",
)
fit_n2f = jax.jit(experts.fit_n2f, static_argnames=("cfg",))


def _masked_n2f_loss(params, f, w, cfg):
    """The documented training loss: mean over the 4 checkerboard pairs of the target-weighted
    MSE."""
    total = 0.0
    for (x, y), (_, wt) in zip(ops.checkerboard_pairs(f), ops.checkerboard_pairs(w), strict=True):
        pred = experts.apply(params, x, "n2f", cfg)
        total += jnp.sum(wt * (pred - y) ** 2) / jnp.sum(wt)
    return total / 4


masked_loss = jax.jit(_masked_n2f_loss, static_argnames=("cfg",))


@pytest.fixture(scope="module")
def n2f_problem():
    rng = np.random.default_rng(3)
    f = jnp.asarray(_img(rng, (16, 16)))
    w = jnp.asarray((rng.random((16, 16)) < 0.6).astype(np.float32))
    p0 = experts.init_params(jax.random.key(1), "n2f", N2F_CFG)
    return f, w, p0


def test_fit_n2f_lax_and_loopsafe_agree(n2f_problem):
    f, w, p0 = n2f_problem
    lr = jnp.float32(1e-2)
    pa, da, sa = fit_n2f(p0, f, w, lr, cfg=dataclasses.replace(N2F_CFG, conv_impl="lax"))
    pb, db, sb = fit_n2f(p0, f, w, lr, cfg=N2F_CFG)
    assert int(sa) == int(sb)
    np.testing.assert_allclose(np.asarray(da), np.asarray(db), atol=1e-3)
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3)
    # training actually moved the parameters
    assert (
        max(
            float(jnp.abs(a - b).max())
            for a, b in zip(jax.tree.leaves(pb), jax.tree.leaves(p0), strict=True)
        )
        > 1e-3
    )


def test_fit_n2f_decreases_masked_loss_and_schedule(n2f_problem):
    f, w, p0 = n2f_problem
    params, den, steps = fit_n2f(p0, f, w, jnp.float32(1e-2), cfg=N2F_CFG)
    l0 = float(masked_loss(p0, f, w, cfg=N2F_CFG))
    l1 = float(masked_loss(params, f, w, cfg=N2F_CFG))
    assert l1 < 0.9 * l0
    assert N2F_CFG.min_steps <= int(steps) <= N2F_CFG.max_steps
    assert int(steps) % N2F_CFG.val_every == 0
    d = np.asarray(den)
    assert d.shape == f.shape and np.all(np.isfinite(d))
    assert d.min() >= 0.0 and d.max() <= 1.0  # sigmoid output (averaged)


def test_fit_n2f_is_deterministic(n2f_problem):
    f, w, p0 = n2f_problem
    a = fit_n2f(p0, f, w, jnp.float32(1e-2), cfg=N2F_CFG)
    b = fit_n2f(p0, f, w, jnp.float32(1e-2), cfg=N2F_CFG)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fit_n2f_empty_region_is_finite_and_static(n2f_problem):
    """No weight anywhere: the loss is 0 (not NaN), nothing is learned, the output is finite."""
    f, _, p0 = n2f_problem
    params, den, _ = fit_n2f(p0, f, jnp.zeros_like(f), jnp.float32(1e-2), cfg=N2F_CFG)
    assert np.all(np.isfinite(np.asarray(den)))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p0), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_n2f_net_shapes(n2f_problem):
    f, _, p0 = n2f_problem
    apply = jax.jit(experts.apply, static_argnames=("kind", "cfg"))
    out = apply(p0, jnp.stack([f, f[::-1]]), kind="n2f", cfg=N2F_CFG)
    assert out.shape == (2, 16, 16)
    np.testing.assert_allclose(
        np.asarray(out[0]), np.asarray(apply(p0, f, kind="n2f", cfg=N2F_CFG)), atol=1e-6
    )
    out1 = apply(p0, f[:, :8], kind="n2f", cfg=N2F_CFG)
    assert out1.shape == (16, 8)


@pytest.mark.parametrize("ndim,channels", [(2, 3), (3, 2)])
def test_n2f_expert_nd_channels_shapes_and_training_reduces_loss(ndim, channels, rng):
    cfg = experts.TrainConfig(
        width=4,
        depth=1,
        max_steps=12,
        min_steps=12,
        patience=12,
        val_every=6,
        n_average=2,
        ndim=ndim,
        channels=channels,
    )
    spatial = (8,) * ndim
    shape = ((channels,) if channels else ()) + spatial
    f = jnp.asarray(rng.uniform(size=shape), F32)
    p0 = experts.init_params(jax.random.key(0), "n2f", cfg)
    out = experts.apply(p0, f, "n2f", cfg)
    assert out.shape == shape
    # leading batch axes are carried along
    assert experts.apply(p0, jnp.stack([f, f]), "n2f", cfg).shape == (2,) + shape
    w = jnp.ones(spatial, F32)
    _, den, steps = fit_n2f(p0, f, w, 1e-2, cfg=cfg)
    assert den.shape == shape and int(steps) == 12
    assert float(jnp.mean((den - f) ** 2)) < float(jnp.mean((out - f) ** 2))


# --------------------------------------------------------------------------------------
# stacked experts of one kind
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", ["map", "vmap"])
def test_fit_group_constant_and_linear_equal_separate_fits(batch, rng):
    f = jnp.asarray(_img(rng, (16, 16)))
    w = jnp.asarray(
        np.stack([(rng.random((16, 16)) < p) for p in (0.3, 0.6, 0.9)]).astype(np.float32)
    )
    cfg = experts.TrainConfig(linear_size=3)
    for kind in ("constant", "linear"):
        p0 = jax.vmap(lambda k, kind=kind: experts.init_params(k, kind, cfg))(
            jax.random.split(jax.random.key(0), 3)
        )
        ps, outs, steps = jax.jit(
            experts.fit_group, static_argnums=(5, 6), static_argnames="batch"
        )(jax.random.split(jax.random.key(1), 3), p0, f, w, 1e-3, kind, cfg, batch=batch)
        assert outs.shape == (3, 16, 16) and steps.shape == (3,)
        fit = jax.jit(experts.fit, static_argnums=(5, 6))
        for i in range(3):
            pi, oi, _ = fit(None, None, f, w[i], 1e-3, kind, cfg)
            np.testing.assert_allclose(np.asarray(outs[i]), np.asarray(oi), rtol=1e-5, atol=1e-5)
            for a, b in zip(jax.tree.leaves(ps), jax.tree.leaves(pi), strict=True):
                np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-4, atol=1e-5)


TINY_CFG = experts.TrainConfig(
    width=4, depth=1, max_steps=6, min_steps=6, patience=6, val_every=3, n_average=2
)


def test_fit_group_of_one_keeps_the_leading_axis(rng):
    f = jnp.asarray(_img(rng, (12, 12)))
    w = jnp.asarray((rng.random((1, 12, 12)) < 0.5).astype(np.float32))
    p0 = {"c": jnp.zeros((1,), F32)}
    for batch in ("map", "vmap"):
        ps, outs, steps = experts.fit_group(
            jax.random.split(jax.random.key(0), 1), p0, f, w, 1e-3, "constant",
            experts.TrainConfig(), batch=batch
        )
        assert ps["c"].shape == (1,) and outs.shape == (1, 12, 12) and steps.shape == (1,)
        assert float(ps["c"][0]) == pytest.approx(
            float(jnp.sum(w[0] * f) / jnp.sum(w[0])), rel=1e-5
        )


# --------------------------------------------------------------------------------------
# whole-image Noise2Fast
# --------------------------------------------------------------------------------------


def test_denoise_is_n2f_on_the_whole_image(n2f_problem):
    f, _, _ = n2f_problem
    key = jax.random.key(4)
    out = experts.denoise(key, f, 1e-2, TINY_CFG)
    assert out.shape == f.shape and np.all(np.isfinite(np.asarray(out)))
    p0 = experts.init_params(key, "n2f", TINY_CFG)
    ref = fit_n2f(p0, f, jnp.ones_like(f), jnp.float32(1e-2), cfg=experts.denoiser_config(TINY_CFG))[1]
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(experts.denoise(key, np.asarray(f), 1e-2, TINY_CFG)), np.asarray(out)
    )
    assert not np.array_equal(
        np.asarray(experts.denoise(jax.random.key(5), f, 1e-2, TINY_CFG)), np.asarray(out)
    )


def test_denoise_colour_image_keeps_its_shape(rng):
    cfg = experts.TrainConfig(
        width=4, depth=1, max_steps=6, min_steps=6, patience=6, val_every=3, n_average=2, channels=3
    )
    f = jnp.asarray(rng.uniform(size=(3, 8, 10)), F32)
    out = experts.denoise(jax.random.key(0), f, 1e-2, cfg)
    assert out.shape == (3, 8, 10) and np.all(np.isfinite(np.asarray(out)))


# --------------------------------------------------------------------------------------
# blind-spot predictions
# --------------------------------------------------------------------------------------


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
    cfg = experts.TrainConfig(linear_size=k)
    params = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(0.0)}
    full = experts.apply(params, f, "linear", cfg)
    bs = experts.blind_spot_output(params, f, "linear", cfg, full)
    assert bs.shape == f.shape
    c = jnp.asarray(clean)
    sl = (slice(8, -8), slice(8, -8))  # away from the boundary padding
    gap_bs = float(jnp.mean((f - bs)[sl] ** 2) - jnp.mean((c - bs)[sl] ** 2))
    gap_full = float(jnp.mean((f - full)[sl] ** 2) - jnp.mean((c - full)[sl] ** 2))
    assert gap_bs == pytest.approx(sigma**2, rel=0.05)
    assert gap_full == pytest.approx(sigma**2 * (1 - 2 * kernel[k // 2, k // 2]), rel=0.1)
    # a constant expert is already blind: its output is returned as is
    den = jnp.full_like(f, 0.5)
    assert experts.blind_spot_output({"c": jnp.asarray(0.5)}, f, "constant", cfg, den) is den


def test_blind_spot_output_never_sees_its_own_pixel(rng):
    """The blind-spot prediction of a (linear) expert at a pixel does not depend on that pixel
    (odd sizes: the cropped border is copied from ``den``)."""
    cfg = experts.TrainConfig(linear_size=3)
    params = {
        "kernel": jnp.asarray(rng.uniform(0.1, 1.0, size=(3, 3)), F32),
        "bias": jnp.asarray(0.1),
    }
    for shape in ((8, 10), (9, 11)):
        f = jnp.asarray(rng.uniform(size=shape), F32)
        den = jnp.zeros_like(f)
        jac = jax.jit(
            jax.jacfwd(lambda z, den=den: experts.blind_spot_output(params, z, "linear", cfg, den))
        )(f)
        jac = np.asarray(jac).reshape(f.size, f.size)
        assert np.all(np.diag(jac) == 0.0)
        crop = np.zeros(shape, bool)
        crop[: shape[0] // 2 * 2, : shape[1] // 2 * 2] = True
        assert np.all(np.abs(jac).sum(1)[crop.ravel()] > 0.1)  # ...but depends on other pixels
        assert np.all(jac[~crop.ravel()] == 0.0)  # the cropped border is den's
