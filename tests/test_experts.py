"""Expert denoisers and their region-restricted W-steps (constant, linear, Noise2Fast CNN)."""

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
    clean = 0.5 + 0.3 * np.sin(2 * np.pi * xx / 6.0) * (yy < shape[0] // 2) + 0.1 * (yy >= shape[0] // 2)
    return np.clip(clean + 0.08 * rng.standard_normal(shape), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------
# constant
# --------------------------------------------------------------------------------------


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
    for (x, y), (_, wt) in zip(ops.checkerboard_pairs(jnp.asarray(f)), ops.checkerboard_pairs(jnp.asarray(w))):
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
    cfg = experts.TrainConfig(kind="linear", linear_size=k)
    params, den, _ = fit_linear(jnp.asarray(f), jnp.asarray(w), cfg=cfg)
    A, b, wts = _np_problem(f, w, k)
    sw = np.sqrt(wts)
    theta, *_ = np.linalg.lstsq(A * sw[:, None], b * sw, rcond=None)
    ref = _np_apply(f, theta[:-1].reshape(k, k), theta[-1])
    assert params["kernel"].shape == (k, k)
    np.testing.assert_allclose(np.asarray(den), ref, atol=1e-3)
    # the returned output is the returned filter applied to f
    np.testing.assert_allclose(
        np.asarray(den), _np_apply(f, np.asarray(params["kernel"]), float(params["bias"])), atol=1e-5
    )
    # the loss it reaches is the least-squares optimum
    th_lib = np.concatenate([np.asarray(params["kernel"], np.float64).ravel(), [float(params["bias"])]])
    assert _np_loss(th_lib, A, b, wts) <= _np_loss(theta, A, b, wts) * (1 + 1e-4) + 1e-9


def test_fit_linear_is_exact_minimiser(rng):
    k = 5
    f = _img(rng)
    w = (rng.random(f.shape) < 0.5).astype(np.float32)
    params, _, _ = fit_linear(jnp.asarray(f), jnp.asarray(w), cfg=experts.TrainConfig(kind="linear", linear_size=k))
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
    cfg = experts.TrainConfig(kind="linear", linear_size=k)
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
    cfg = experts.TrainConfig(kind="linear", linear_size=5)
    p = experts.init_params(jax.random.key(0), cfg)
    f = jnp.asarray(rng.random((10, 12)), F32)
    np.testing.assert_allclose(np.asarray(experts.apply_expert(p, f, cfg)), np.asarray(f), atol=1e-6)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="unknown expert kind"):
        experts.init_params(jax.random.key(0), experts.TrainConfig(kind="unet"))


def test_fit_expert_dispatch(rng):
    f = jnp.asarray(rng.random((12, 12)), F32)
    w = jnp.asarray((rng.random((12, 12)) < 0.5), F32)
    fit = jax.jit(lambda f, w, cfg: experts.fit_expert(None, f, w, 1e-3, cfg), static_argnums=2)
    p, den, _ = fit(f, w, experts.TrainConfig(kind="constant"))
    assert float(p["c"]) == pytest.approx(float(jnp.sum(w * f) / jnp.sum(w)), rel=1e-5)
    np.testing.assert_allclose(np.asarray(den), float(p["c"]), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown expert kind"):
        experts.fit_expert(None, f, w, 1e-3, experts.TrainConfig(kind="median"))


# --------------------------------------------------------------------------------------
# Noise2Fast CNN
# --------------------------------------------------------------------------------------

N2F_CFG = experts.TrainConfig(
    kind="n2f", width=8, depth=2, max_steps=40, min_steps=20, patience=20, val_every=10, n_average=2,
    conv_impl="loopsafe",
)
fit_n2f = jax.jit(experts.fit_n2f, static_argnames=("cfg",))


def _masked_n2f_loss(params, f, w, cfg):
    """The documented training loss: mean over the 4 checkerboard pairs of the target-weighted MSE."""
    net = experts.make_net(cfg)
    total = 0.0
    for (x, y), (_, wt) in zip(ops.checkerboard_pairs(f), ops.checkerboard_pairs(w)):
        pred = net.apply({"params": params}, x)
        total += jnp.sum(wt * (pred - y) ** 2) / jnp.sum(wt)
    return total / 4


masked_loss = jax.jit(_masked_n2f_loss, static_argnames=("cfg",))


@pytest.fixture(scope="module")
def n2f_problem():
    rng = np.random.default_rng(3)
    f = jnp.asarray(_img(rng, (16, 16)))
    w = jnp.asarray((rng.random((16, 16)) < 0.6).astype(np.float32))
    p0 = jax.jit(experts.init_params, static_argnames="cfg")(jax.random.key(1), cfg=N2F_CFG)
    return f, w, p0


def test_fit_n2f_lax_and_loopsafe_agree(n2f_problem):
    f, w, p0 = n2f_problem
    lr = jnp.float32(1e-2)
    pa, da, sa = fit_n2f(p0, f, w, lr, cfg=dataclasses.replace(N2F_CFG, conv_impl="lax"))
    pb, db, sb = fit_n2f(p0, f, w, lr, cfg=N2F_CFG)
    assert int(sa) == int(sb)
    np.testing.assert_allclose(np.asarray(da), np.asarray(db), atol=1e-3)
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3)
    # training actually moved the parameters
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(pb), jax.tree.leaves(p0))) > 1e-3


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
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fit_n2f_empty_region_is_finite_and_static(n2f_problem):
    """No weight anywhere: the loss is 0 (not NaN), nothing is learned, the output is finite."""
    f, _, p0 = n2f_problem
    params, den, _ = fit_n2f(p0, f, jnp.zeros_like(f), jnp.float32(1e-2), cfg=N2F_CFG)
    assert np.all(np.isfinite(np.asarray(den)))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p0)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_n2f_net_shapes(n2f_problem):
    f, _, p0 = n2f_problem
    apply = jax.jit(experts.apply_expert, static_argnames="cfg")
    out = apply(p0, jnp.stack([f, f[::-1]]), cfg=N2F_CFG)
    assert out.shape == (2, 16, 16)
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(apply(p0, f, cfg=N2F_CFG)), atol=1e-6)
    out1 = apply(p0, f[:, :8], cfg=N2F_CFG)
    assert out1.shape == (16, 8)
