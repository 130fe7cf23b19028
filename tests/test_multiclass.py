"""Multi-class / multi-channel / 3-D path (issue 5): operators, simplex solver, scheme, API."""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import api, experts, multiclass, ops, pdhg
from self2seg_jax.initialisation import multiotsu_thresholds

TINY = dict(net_width=8, net_depth=2, train_max_steps=80, train_min_steps=40, train_patience=40,
            max_outer=4, init_denoise=False)


# ---------------------------------------------------------------- operators (N-D)


@pytest.mark.parametrize("shape,spacing", [((5, 7, 6), None), ((4, 9, 8), (2.5, 1.0, 1.0)), ((2, 6, 5, 4), (1.0, 0.5, 2.0))])
def test_grad_div_adjoint_3d_with_spacing(shape, spacing, rng):
    nd = 3
    u = jnp.asarray(rng.normal(size=shape))
    ps = tuple(jnp.asarray(rng.normal(size=shape)) for _ in range(nd))
    lhs = sum(jnp.sum(g * p) for g, p in zip(ops.grad_nd(u, nd, spacing), ps))
    rhs = -jnp.sum(u * ops.div_nd(ps, nd, spacing))
    np.testing.assert_allclose(float(lhs), float(rhs), rtol=1e-5, atol=1e-4)


def test_grad_nd_matches_2d_and_scales_with_spacing(rng):
    u = jnp.asarray(rng.normal(size=(3, 9, 11)), jnp.float32)
    np.testing.assert_array_equal(np.stack(ops.grad_nd(u, 2), -3), np.asarray(ops.grad(u)))
    g1 = ops.grad_nd(u, 3)
    g2 = ops.grad_nd(u, 3, (4.0, 1.0, 1.0))
    np.testing.assert_allclose(np.asarray(g2[0]), np.asarray(g1[0]) / 4.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(g2[1]), np.asarray(g1[1]))


@pytest.mark.parametrize("spacing", [None, (3.0, 1.0, 1.0)])
def test_grad_norm_bound_3d_power_iteration(spacing):
    shape = (6, 7, 8)
    u = jax.random.normal(jax.random.key(0), shape)
    op = jax.jit(lambda v: -ops.div_nd(ops.grad_nd(v, 3, spacing), 3, spacing))
    for _ in range(300):
        u = op(u)
        u = u / jnp.linalg.norm(u)
    lam_max = float(jnp.sum(u * op(u)))
    bound = ops.grad_norm_sq_bound(3, spacing)
    assert 0.8 * bound < lam_max <= bound + 1e-4


def test_tv_nd_of_a_box_counts_its_surface():
    u = jnp.zeros((8, 9, 10)).at[2:5, 3:7, 1:6].set(1.0)
    # anisotropic TV of an indicator = number of faces between inside and outside voxels
    faces = 2 * (4 * 5 + 3 * 5 + 3 * 4)
    assert float(ops.tv_nd(u, 3, isotropic=False)) == pytest.approx(faces)
    # a z step of 2 halves the z faces' contribution
    got = float(ops.tv_nd(u, 3, (2.0, 1.0, 1.0), isotropic=False))
    assert got == pytest.approx(faces - 4 * 5)


def _simplex_ref(v):
    """Projection onto the simplex by bisection on the threshold (independent reference)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        t = 0.5 * (lo + hi)
        if np.maximum(v - t, 0).sum() > 1:
            lo = t
        else:
            hi = t
    return np.maximum(v - 0.5 * (lo + hi), 0)


def test_project_simplex_matches_reference_and_is_idempotent(x64, rng):
    v = rng.normal(size=(4, 5, 6)) * 2
    got = np.asarray(ops.project_simplex(jnp.asarray(v), axis=0))
    ref = np.apply_along_axis(_simplex_ref, 0, v)
    np.testing.assert_allclose(got, ref, atol=1e-8)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-12)
    assert got.min() >= 0
    again = np.asarray(ops.project_simplex(jnp.asarray(got), axis=0))
    np.testing.assert_allclose(again, got, atol=1e-12)
    # class axis elsewhere
    got_last = np.asarray(ops.project_simplex(jnp.asarray(np.moveaxis(v, 0, -1)), axis=-1))
    np.testing.assert_allclose(np.moveaxis(got_last, -1, 0), got, atol=1e-12)


def test_checkerboard_pairs_3d_partition_and_parity():
    x = np.arange(6 * 4 * 8, dtype=np.float32).reshape(6, 4, 8)
    pairs = ops.checkerboard_pairs_nd(jnp.asarray(x), 3)
    assert len(pairs) == 6
    zz, yy, xx = np.indices(x.shape)
    even_vals = set(x[(zz + yy + xx) % 2 == 0].tolist())
    for k, (inp, tgt) in enumerate(pairs):
        a = 2 - k // 2  # squeezed axis: x first, then y, then z
        assert inp.shape[a] == x.shape[a] // 2
        first = inp if k % 2 == 0 else tgt  # the "even" member
        second = tgt if k % 2 == 0 else inp
        assert set(np.asarray(first).ravel().tolist()) == even_vals
        assert set(np.asarray(second).ravel().tolist()) == set(x.ravel().tolist()) - even_vals
    np.testing.assert_array_equal(np.asarray(pairs[0][0]), np.asarray(pairs[1][1]))


def test_checkerboard_pairs_nd_equals_2d(rng):
    x = jnp.asarray(rng.normal(size=(2, 10, 12)), jnp.float32)
    for (a, b), (c, d) in zip(ops.checkerboard_pairs(x), ops.checkerboard_pairs_nd(x, 2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(d))


def test_mean_filter_3d_matches_bruteforce(x64, rng):
    x = rng.normal(size=(2, 5, 6, 7))
    got = np.asarray(ops.mean_filter(jnp.asarray(x), 3, ndim=3))
    ref = np.zeros_like(x)
    for idx in np.ndindex(*x.shape[1:]):
        sl = tuple(slice(max(i - 1, 0), i + 2) for i in idx)
        ref[(slice(None),) + idx] = x[(slice(None),) + sl].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(got, ref, atol=1e-10)


def test_conv_loopsafe_3d_grads_match_lax(rng):
    x = jnp.asarray(rng.normal(size=(1, 5, 6, 7, 2)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 2, 4)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(1, 5, 6, 7, 4)), jnp.float32)

    def loss(conv):
        return lambda a, b: jnp.sum((conv(a, b) - t) ** 2)

    np.testing.assert_allclose(ops.conv2d_loopsafe(x, w), ops._conv_same(x, w), rtol=1e-5, atol=1e-5)
    g1 = jax.grad(loss(ops.conv2d_loopsafe), argnums=(0, 1))(x, w)
    g2 = jax.grad(loss(ops._conv_same), argnums=(0, 1))(x, w)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-3)


# ---------------------------------------------------------------- experts (N-D, channels)


@pytest.mark.parametrize("ndim,channels", [(2, 3), (3, 2)])
def test_n2f_expert_shapes_and_training_reduces_loss(ndim, channels, rng):
    cfg = experts.TrainConfig(kind="n2f", width=4, depth=1, max_steps=12, min_steps=12, patience=12,
                              val_every=6, n_average=2, ndim=ndim, channels=channels)
    spatial = (8,) * ndim
    shape = experts.image_shape(cfg, spatial)
    f = jnp.asarray(rng.uniform(size=shape), jnp.float32)
    p0 = experts.init_params(jax.random.key(0), cfg)
    out = experts.apply_expert(p0, f, cfg)
    assert out.shape == shape
    w = jnp.ones(spatial, jnp.float32)
    _, den, steps = jax.jit(experts.fit_n2f, static_argnames="cfg")(p0, f, w, 1e-2, cfg=cfg)
    assert den.shape == shape and int(steps) == 12
    assert float(jnp.mean((den - f) ** 2)) < float(jnp.mean((out - f) ** 2))


def test_fit_constant_per_channel(rng):
    f = jnp.asarray(rng.uniform(size=(3, 6, 7)), jnp.float32)
    w = jnp.asarray(rng.uniform(size=(6, 7)) > 0.5, jnp.float32)
    params, den, _ = experts.fit_constant(f, w)
    ref = (np.asarray(f) * np.asarray(w)).sum((1, 2)) / np.asarray(w).sum()
    np.testing.assert_allclose(np.asarray(params["c"]), ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(den[:, 2, 3]), ref, rtol=1e-5)


# ---------------------------------------------------------------- simplex primal-dual


def test_simplex_solver_two_classes_equals_binary_solver(x64, rng):
    r = jnp.asarray(rng.normal(size=(20, 18)) * 0.3)
    lam = 0.2
    b = pdhg.pdhg_solve(r, lam, tol=1e-10, max_iter=30000)
    m = pdhg.simplex_solve(jnp.stack([jnp.zeros_like(r), r]), lam, tol=1e-10, max_iter=30000)
    assert int(m.status) == pdhg.CONVERGED
    np.testing.assert_allclose(np.asarray(m.u[1]), np.asarray(b.u), atol=1e-5)
    e_b = float(lam * ops.tv(b.u) + jnp.sum(r * b.u))
    e_m = float(pdhg.simplex_energy(m.u, jnp.stack([jnp.zeros_like(r), r]), lam))
    assert e_m == pytest.approx(e_b, abs=1e-7)


@pytest.mark.parametrize("mu", [0.0, 0.2])
def test_simplex_solver_3d_optimality(mu, x64, rng):
    """Converged gap, simplex feasibility, and no random feasible perturbation does better."""
    d = jnp.asarray(rng.normal(size=(3, 5, 8, 7)))
    u_ref = ops.project_simplex(jnp.asarray(rng.uniform(size=d.shape)), axis=0)
    sp = (2.0, 1.0, 1.0)
    s = pdhg.simplex_solve(d, 0.6, mu=mu, u_ref=u_ref, tol=1e-9, max_iter=40000, ndim=3, spacing=sp)
    assert int(s.status) == pdhg.CONVERGED and float(s.gap) <= 1e-9
    u = np.asarray(s.u)
    np.testing.assert_allclose(u.sum(0), 1.0, atol=1e-9)
    assert u.min() >= 0
    energy = lambda v: float(pdhg.simplex_energy(v, d, 0.6, mu=mu, u_ref=u_ref, ndim=3, spacing=sp))
    e0 = energy(s.u)
    for k in range(20):
        dv = jnp.asarray(np.random.default_rng(k).normal(size=d.shape)) * 0.05
        assert energy(ops.project_simplex(s.u + dv, axis=0)) >= e0 - 1e-8


def test_simplex_solver_small_lambda_gives_pointwise_argmin(rng):
    d = jnp.asarray(rng.normal(size=(4, 12, 12)), jnp.float32)
    s = pdhg.simplex_solve(d, 1e-4, tol=1e-6, max_iter=5000)
    np.testing.assert_array_equal(np.asarray(jnp.argmax(s.u, 0)), np.asarray(jnp.argmin(d, 0)))


# ---------------------------------------------------------------- initialisation


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_multiotsu_matches_skimage(classes, rng):
    skf = pytest.importorskip("skimage.filters")
    means = np.linspace(0.1, 0.9, classes)
    x = np.concatenate([rng.normal(m, 0.06, 2000) for m in means])
    np.testing.assert_allclose(multiotsu_thresholds(x, classes), skf.threshold_multiotsu(x, classes))
    if classes == 2:
        assert multiotsu_thresholds(x, 2)[0] == pytest.approx(s2s.initialisation.otsu_threshold(x))


# ---------------------------------------------------------------- whole scheme


def three_class_textures(seed=0, n=64, noise=0.08):
    """Background flat 0.35, a disc of stripes with the SAME mean 0.35, a bright flat disc."""
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    lab = np.zeros((n, n), np.int32)
    lab[(yy - n * 0.3) ** 2 + (xx - n * 0.3) ** 2 < (n * 0.22) ** 2] = 1
    lab[(yy - n * 0.68) ** 2 + (xx - n * 0.68) ** 2 < (n * 0.24) ** 2] = 2
    stripes = 0.35 + 0.25 * np.sign(np.sin(2 * np.pi * xx / 4 + 0.5))
    clean = np.where(lab == 0, 0.35, np.where(lab == 1, stripes, 0.75)).astype(np.float32)
    noisy = clean + noise * np.random.default_rng(seed).standard_normal(clean.shape).astype(np.float32)
    return noisy, clean, lab


BOXES3 = s2s.ClassBoxes([[(0, 40, 16, 64)], [(12, 12, 26, 26)], [(38, 38, 52, 52)]])


@pytest.fixture(scope="module")
def three_class_run():
    noisy, clean, lab = three_class_textures()
    cfg = s2s.Self2SegConfig(lam=0.03, **TINY)
    res = s2s.segment(jax.random.key(0), noisy, num_classes=3, init=BOXES3, config=cfg,
                      class_experts=("constant", "n2f", "constant"))
    return noisy, lab, res


def test_three_textured_classes_dice(three_class_run):
    noisy, lab, res = three_class_run
    dices = [s2s.metrics.dice(res.labels == i, lab == i) for i in range(3)]
    assert np.mean(dices) >= 0.9, dices
    # class 0 and class 1 have equal means: intensity alone cannot do this
    assert abs(noisy[lab == 0].mean() - noisy[lab == 1].mean()) < 0.01


def test_three_class_result_contract(three_class_run):
    noisy, lab, res = three_class_run
    c = 3
    assert res.labels.shape == noisy.shape and res.labels.dtype == np.int32
    assert res.probabilities.shape == (c,) + noisy.shape
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-5)
    assert res.probabilities.min() >= 0
    np.testing.assert_array_equal(res.labels, res.probabilities.argmax(0))
    np.testing.assert_array_equal(res.mask, res.labels > 0)
    assert res.expert_outputs.shape == (c,) + noisy.shape
    assert res.train_steps.shape == (res.num_outer, c)
    assert (res.train_steps[:, [0, 2]] == 0).all() and (res.train_steps[:, 1] > 0).all()
    assert np.isfinite(res.energies).all()


def _blob(n=48, seed=0, noise=0.15):
    yy, xx = np.mgrid[:n, :n]
    gt = (yy - n / 2) ** 2 + (xx - n / 2.5) ** 2 < (n / 4) ** 2
    f = 0.3 + 0.4 * gt + noise * np.random.default_rng(seed).standard_normal((n, n))
    return f.astype(np.float32), gt


def test_two_classes_agree_with_binary_path():
    f, gt = _blob(n=40)
    cfg = s2s.Self2SegConfig(**{**TINY, "train_max_steps": 40, "train_min_steps": 20, "max_outer": 3})
    rb = s2s.segment(jax.random.key(3), f, config=cfg)
    rm = s2s.segment_multiclass(jax.random.key(3), f, num_classes=2, config=cfg)
    np.testing.assert_array_equal(rb.init_mask, rm.init_mask)
    assert (rb.mask == rm.mask).mean() >= 0.99
    # same first W-step (same keys); the u-steps stop at the same relative gap but on
    # differently scaled duals, so a few boundary pixels may differ
    np.testing.assert_allclose(rm.energies[0], rb.energies[0], rtol=1e-2)
    assert s2s.metrics.dice(rm.mask, gt) > 0.9
    # the binary result carries the same multi-class fields
    np.testing.assert_array_equal(rb.labels, rb.mask.astype(np.int32))
    np.testing.assert_allclose(rb.probabilities.sum(0), 1.0, atol=1e-6)


def test_multiclass_deterministic_and_no_retrace():
    f, _ = _blob(n=40)
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", max_outer=3, init_denoise=False)
    r1 = s2s.segment(jax.random.key(1), f, num_classes=3, config=cfg)
    n0 = multiclass.TRACE_COUNT[0]
    r2 = s2s.segment(jax.random.key(1), f, num_classes=3, config=cfg.replace(lam=0.05))
    r3 = s2s.segment(jax.random.key(1), f, num_classes=3, config=cfg)
    assert multiclass.TRACE_COUNT[0] == n0  # new lam / same shapes: no recompilation
    np.testing.assert_array_equal(r1.labels, r3.labels)
    assert r2.labels.shape == r1.labels.shape


def test_constant_experts_energy_non_increasing_three_classes():
    noisy, _, _ = three_class_textures(n=48)
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", max_outer=6, energy_p=0.0,
                             mask_tol=0.0, init_denoise=False, pd_tol=1e-6, pd_max_iter=20000,
                             isotropic_tv=False)
    r = s2s.segment(jax.random.key(0), noisy, num_classes=3, config=cfg)
    e = r.energies
    assert len(e) >= 2
    assert np.all(np.diff(e) <= 1e-3 * abs(e[0]))


def test_vmap_over_images_equals_separate_runs():
    fs = [_blob(n=32, seed=s)[0] for s in (0, 1)]
    f = jnp.asarray(np.stack([(a - a.min()) / (a.max() - a.min()) for a in fs]))
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", max_outer=3)
    st = multiclass.MCStatic(kinds=("constant",) * 3, net=cfg.train_config("n2f"), max_outer=3)
    w0 = jnp.stack([jax.nn.one_hot(jnp.digitize(x, jnp.array([0.33, 0.66])), 3, axis=0) for x in f])
    batched = jax.vmap(lambda a, w: multiclass.run_multiclass(jax.random.key(0), a, w, w, cfg.hyper(), st=st))(f, w0)
    for i in range(2):
        one = multiclass.run_multiclass(jax.random.key(0), f[i], w0[i], w0[i], cfg.hyper(), st=st)
        np.testing.assert_array_equal(np.asarray(batched.labels[i]), np.asarray(one.labels))


def test_colour_two_region_experts_beat_one_expert():
    """Paper Fig. 2 claim on a small colour image of two textures: the composite of two region
    experts has a higher PSNR than one expert of the same size trained on the whole image."""
    n = 64
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    left = xx < n / 2
    a = 0.5 + 0.3 * np.sin(2 * np.pi * xx / 5)
    b = 0.5 + 0.3 * np.sin(2 * np.pi * yy / 5)
    clean = np.stack([np.where(left, a, b), np.where(left, 1 - a, 0.5), np.where(left, 0.5, 1 - b)], -1)
    noisy = (clean + 0.15 * np.random.default_rng(0).standard_normal(clean.shape)).astype(np.float32)
    cfg = s2s.Self2SegConfig(**{**TINY, "train_max_steps": 150, "train_min_steps": 150}, bg_expert="n2f")
    boxes = s2s.ClassBoxes([[(0, 40, 64, 64)], [(0, 0, 64, 24)]])
    res = s2s.segment(jax.random.key(0), noisy, channel_axis=-1, init=boxes, config=cfg)
    assert res.denoised.shape == noisy.shape
    assert s2s.metrics.dice(res.mask, left) > 0.95
    lo, hi = float(noisy.min()), float(noisy.max())
    f = np.moveaxis((noisy - lo) / (hi - lo), -1, 0)
    net = dataclasses.replace(cfg.train_config("n2f"), channels=3)
    one = np.moveaxis(api.n2f_denoise_normalised(jax.random.key(0), f, cfg, net), 0, -1) * (hi - lo) + lo
    p_two = s2s.metrics.psnr(res.denoised, clean, data_range=1.0)
    p_one = s2s.metrics.psnr(one, clean, data_range=1.0)
    print(f"colour PSNR: two region experts {p_two:.2f} dB, one expert {p_one:.2f} dB")
    assert p_two > p_one


def test_volume_nuclei_dice_with_anisotropic_spacing():
    vol, gt = s2s.data.load_sample_3d()
    noisy = s2s.data.add_gaussian_noise(0, vol, 20.0)
    # start: Otsu of the noisy stack (a 40-step 3-D Noise2Fast start is too crude to threshold)
    cfg = s2s.Self2SegConfig(**{**TINY, "train_max_steps": 40, "train_min_steps": 20, "max_outer": 3})
    res = s2s.segment(jax.random.key(0), noisy, volume=True, spacing=(2.0, 1.0, 1.0), config=cfg)
    assert res.labels.shape == vol.shape
    d = s2s.metrics.dice(res.mask, gt)
    print(f"3-D synthetic nuclei Dice {d:.3f} (init {s2s.metrics.dice(res.init_mask, gt):.3f})")
    assert d > 0.7


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_classes=1), "num_classes"),
        (dict(num_classes=2.5), "num_classes"),
        (dict(num_classes=99), "num_classes"),
        (dict(channel_axis=5), "out of range"),
        (dict(channel_axis=0, volume=True), "expected 4 axes"),
        (dict(num_classes=3, spacing=(1.0,)), "spacing"),
        (dict(num_classes=3, spacing=(1.0, -1.0)), "spacing"),
        (dict(num_classes=3, class_experts=("linear", "n2f", "n2f")), "linear"),
        (dict(num_classes=3, class_experts=("n2f", "n2f")), "class_experts"),
        (dict(num_classes=3, init=np.zeros((24, 24), int)), "no pixel of class"),
        (dict(num_classes=3, init=np.zeros((20, 24), int)), "shape"),
        (dict(num_classes=3, init=np.full((24, 24), 3)), "values"),
        (dict(num_classes=3, init=0.5), "unknown init"),
        (dict(num_classes=3, init=s2s.ClassBoxes([[(0, 0, 5, 5)], [(6, 6, 9, 9)]])), "ClassBoxes"),
        (dict(num_classes=2, init=s2s.ClassBoxes([[(0, 0, 5, 5)], [(3, 3, 9, 9)]])), "overlap"),
        (dict(num_classes=2, init=s2s.ClassBoxes([[(0, 0, 5, 5)], [(6, 6, 30, 9)]])), "outside"),
    ],
)
def test_bad_multiclass_inputs_raise_value_error(kwargs, match):
    f = np.random.default_rng(0).uniform(size=(24, 24)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        s2s.segment(jax.random.key(0), f, **kwargs)


def test_three_axis_array_needs_a_flag():
    with pytest.raises(ValueError, match="channel_axis.*volume=True"):
        s2s.segment(jax.random.key(0), np.random.default_rng(0).uniform(size=(16, 16, 3)))


def test_more_classes_than_the_image_has_levels():
    f = np.zeros((24, 24), np.float32)
    f[:, 12:] = 1.0
    with pytest.raises(ValueError, match="distinct intensity levels"):
        s2s.segment(jax.random.key(0), f, num_classes=3,
                    config=s2s.Self2SegConfig(init_denoise=False))


def test_label_image_init_is_used(rng):
    f, gt = _blob(n=32)
    lab = gt.astype(np.int32)
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", max_outer=2)
    res = s2s.segment(jax.random.key(0), f, num_classes=2, spacing=(1.0, 1.0), init=lab, config=cfg)
    np.testing.assert_array_equal(res.init_labels, lab)


def test_all_class_permutations_of_boxes_are_consistent():
    """Boxes define class identity: permuting the boxes permutes the labels."""
    xx = np.mgrid[:48, :48][1]
    noisy = (np.digitize(xx, [16, 32]) * 0.3 + 0.1 * np.random.default_rng(0).standard_normal((48, 48)))
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", max_outer=3, init_denoise=False)
    boxes = [[(0, 0, 10, 10)], [(20, 20, 28, 28)], [(30, 36, 40, 46)]]
    base = s2s.segment(jax.random.key(0), noisy, num_classes=3, init=s2s.ClassBoxes(boxes), config=cfg)
    for perm in itertools.islice(itertools.permutations(range(3)), 1, 3):
        r = s2s.segment(jax.random.key(0), noisy, num_classes=3,
                        init=s2s.ClassBoxes([boxes[p] for p in perm]), config=cfg)
        inv = np.argsort(perm)
        np.testing.assert_array_equal(inv[r.labels], base.labels)


def test_multiclass_iteration_cap_warns():
    f, _ = _blob(n=40)
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", max_outer=2, init_denoise=False,
                             pd_max_iter=5, pd_check_every=5, pd_tol=1e-12)
    with pytest.warns(RuntimeWarning, match="iteration cap"):
        r = s2s.segment(jax.random.key(1), f, num_classes=3, config=cfg)
    assert np.all(r.pd_iterations >= 5)
