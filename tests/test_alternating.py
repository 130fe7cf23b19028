"""The alternating scheme (one compiled loop for any class count / channels / dimension):
energy decrease with exact experts, the compiled run against a Python-loop driver of
outer_step, expert stacking, determinism, no recompilation, run_sweep, the paper's Fig. 1 toy,
output invariants, several classes (textures, result contract, box vs simplex relaxation,
vmap over images), colour and volume runs, and blind-spot data terms."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import alternating, api, energy, experts, initialisation, metrics, pdhg

TINY = dict(
    net_width=8,
    net_depth=2,
    train_max_steps=80,
    train_min_steps=40,
    train_patience=40,
    max_outer=4,
    init_denoise=False,
)


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
        normalise="minmax",  # the scale the slacks below were set on
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


def _inputs(img, num_classes=2, init="otsu"):
    """What segment hands the compiled scheme: (f, w0, labels0) as jax arrays."""
    a, nd = api.validate_image(img)
    f, _, _ = api.normalise(a, "minmax")
    st = initialisation.start(None, f, init, num_classes=num_classes, ndim=nd, denoise=None)
    return jnp.asarray(f), jnp.asarray(st.weights), jnp.asarray(st.labels)


# --------------------------------------------------------------------------------------
# Remark 1: with exact (constant) experts the energy never increases
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


def three_class_textures(seed=0, n=64, noise=0.08):
    """Background flat 0.35, a disc of stripes with the SAME mean 0.35, a bright flat disc."""
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    lab = np.zeros((n, n), np.int32)
    lab[(yy - n * 0.3) ** 2 + (xx - n * 0.3) ** 2 < (n * 0.22) ** 2] = 1
    lab[(yy - n * 0.68) ** 2 + (xx - n * 0.68) ** 2 < (n * 0.24) ** 2] = 2
    stripes = 0.35 + 0.25 * np.sign(np.sin(2 * np.pi * xx / 4 + 0.5))
    clean = np.where(lab == 0, 0.35, np.where(lab == 1, stripes, 0.75)).astype(np.float32)
    noisy = clean + noise * np.random.default_rng(seed).standard_normal(clean.shape).astype(
        np.float32
    )
    return noisy, clean, lab


def test_constant_experts_energy_non_increasing_three_classes():
    noisy, _, _ = three_class_textures(n=48)
    cfg = s2s.Self2SegConfig(
        fg_expert="constant",
        bg_expert="constant",
        max_outer=6,
        energy_p=0.0,
        mask_tol=0.0,
        init_denoise=False,
        pd_tol=1e-6,
        pd_max_iter=20000,
        isotropic_tv=False,
    )
    r = s2s.segment(jax.random.key(0), noisy, num_classes=3, config=cfg)
    e = r.energies
    assert len(e) >= 2
    assert np.all(np.isfinite(e))
    assert np.all(np.diff(e) <= 1e-3 * abs(e[0])), e


# --------------------------------------------------------------------------------------
# a u-step that empties a class is rejected (the run keeps the mask before it)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("degenerate", [True, False], ids=["all-foreground", "half"])
def test_u_step_rejects_a_degenerate_mask(degenerate):
    """Expert outputs that make every pixel's foreground data term smaller give an all-foreground
    u-step: the state keeps the previous labels, relaxed mask and regions, takes the new
    experts, records the step's energy and change, and stops with DEGENERATE. Outputs that favour
    the foreground on the left half and the background on the right are accepted as they are."""
    img, _ = _cv_image(2, 24, 0.1)
    cfg = _const_config(lam=0.01, max_outer=5)
    spec = cfg.spec()
    f, w0, labels0 = _inputs(img)
    s = alternating.init_state(jax.random.key(0), f, w0, labels0, spec)
    left = jnp.zeros_like(f).at[:, :12].set(1.0)
    # class 0 (background) off everywhere / on the left half; class 1 exact / off on the right
    den = jnp.stack([f + 1.0, f]) if degenerate else jnp.stack([f + left, f + 1.0 - left])
    ws = alternating.WStep(s.params, den, jnp.zeros((2,), jnp.int32), s.key)
    out = alternating.u_step(s, ws, f, cfg.hyper(), spec)
    assert int(out.it) == 1 and np.isfinite(float(out.energies[0]))
    np.testing.assert_array_equal(np.asarray(out.den), np.asarray(den))
    if degenerate:
        assert int(out.status) == alternating.DEGENERATE
        np.testing.assert_array_equal(np.asarray(out.labels), np.asarray(labels0))
        np.testing.assert_array_equal(np.asarray(out.u), np.asarray(s.u))
        np.testing.assert_array_equal(np.asarray(out.w), np.asarray(s.w))
        assert float(out.changes[0]) > 0.5  # the rejected step's change is recorded
    else:
        assert int(out.status) == alternating.RUNNING
        lab = np.asarray(out.labels)
        assert lab[:, :12].all() and not lab[:, 12:].any()
        np.testing.assert_array_equal(np.asarray(out.w[1]), lab.astype(np.float32))


# --------------------------------------------------------------------------------------
# the compiled run == a Python loop over outer_step (CNN experts, the shared TINY_N2F spec)
# --------------------------------------------------------------------------------------

_outer_step = jax.jit(alternating.outer_step, static_argnames="spec")


def run_python(key, f, w0, labels0, hyper, spec):
    """Reference driver: the outer loop in Python, one jitted outer_step per iteration."""
    s = alternating.init_state(key, f, w0, labels0, spec)
    n = 0
    while int(s.status) == alternating.RUNNING:
        s = _outer_step(s, f, hyper, spec=spec)
        n += 1
        assert n <= spec.max_outer
    return s


@pytest.mark.slow
def test_run_jitted_vs_python_loop(blob32, tiny_n2f_config):
    img, _ = blob32
    cfg = tiny_n2f_config
    spec = cfg.spec()
    f, w0, labels0 = _inputs(img)
    key = jax.random.key(3)
    a = alternating.run(key, f, w0, labels0, cfg.hyper(), spec=spec)
    b = run_python(key, f, w0, labels0, cfg.hyper(), spec)
    assert int(a.it) == int(b.it) >= 1 and int(a.status) == int(b.status) != alternating.RUNNING
    n = int(a.it)
    assert np.mean(np.asarray(a.labels) != np.asarray(b.labels)) < 0.01
    np.testing.assert_allclose(np.asarray(a.energies[:n]), np.asarray(b.energies[:n]), rtol=1e-3)
    assert np.all(np.isnan(np.asarray(a.energies[n:]))) and np.all(
        np.isnan(np.asarray(b.energies[n:]))
    )
    np.testing.assert_allclose(np.asarray(a.den), np.asarray(b.den), atol=1e-3)
    np.testing.assert_array_equal(np.asarray(a.train_steps), np.asarray(b.train_steps))
    np.testing.assert_array_equal(np.asarray(a.pd_iters), np.asarray(b.pd_iters))
    assert np.all(np.asarray(a.train_steps[:n]) >= cfg.train_min_steps)


# --------------------------------------------------------------------------------------
# CNN-expert runs (all share the TINY_N2F compilation, 32x32)
# --------------------------------------------------------------------------------------


def test_stacked_experts_equal_sequential(blob32, tiny_n2f_result, tiny_n2f_config):
    img, _ = blob32
    base = tiny_n2f_config
    never, always = base.replace(stack_experts="never"), base.replace(stack_experts="always")
    assert never.spec().batch == "map" and always.spec().batch == "vmap"
    if jax.default_backend() == "cpu":  # "auto" is sequential on CPU: reuse the shared run
        assert never.spec() == base.spec()
        seq = tiny_n2f_result
    else:
        seq = s2s.segment(jax.random.key(0), img, config=never)
    stacked = s2s.segment(jax.random.key(0), img, config=always)
    np.testing.assert_array_equal(stacked.mask, seq.mask)
    assert stacked.num_outer == seq.num_outer
    np.testing.assert_allclose(stacked.energies, seq.energies, rtol=1e-4)
    np.testing.assert_allclose(stacked.denoised, seq.denoised, atol=1e-4 * np.ptp(img))
    np.testing.assert_array_equal(stacked.train_steps, seq.train_steps)


def test_deterministic_given_key(blob32, tiny_n2f_result, tiny_n2f_config):
    img, _ = blob32
    base = tiny_n2f_config
    again = s2s.segment(jax.random.key(0), img, config=base)
    for name in (
        "labels",
        "mask",
        "u",
        "probabilities",
        "denoised",
        "energies",
        "expert_outputs",
        "train_steps",
        "pd_iterations",
        "mask_changes",
    ):
        np.testing.assert_array_equal(
            getattr(again, name), getattr(tiny_n2f_result, name), err_msg=name
        )
    # a different key gives different CNN experts
    other = s2s.segment(jax.random.key(1), img, config=base)
    assert not np.array_equal(other.denoised_fg, tiny_n2f_result.denoised_fg)


def test_no_recompilation_for_new_image_key_and_numbers(
    blob32, tiny_n2f_config, tiny_n2f_result, make_blob
):
    base = tiny_n2f_config  # tiny_n2f_result: this worker has compiled it
    before = alternating.run._cache_size()
    assert before >= 1
    img2, _ = make_blob(seed=7, size=32, noise=0.15)
    cfg2 = base.replace(
        lam=0.05,
        mu=1e-3,
        learning_rate=2e-3,
        threshold=0.4,
        pd_tol=3e-4,
        mask_tol=0.01,
        energy_p=0.2,
    )
    res = s2s.segment(jax.random.key(42), img2, config=cfg2)
    res2 = s2s.segment(jax.random.key(43), img2 * 3 + 1, init=img2 > np.median(img2), config=cfg2)
    assert alternating.run._cache_size() == before
    assert res.mask.shape == res2.mask.shape == (32, 32)


def test_cache_size_counts_compilations(make_blob):
    """The counter the no-recompilation tests rely on does move on a new static config / shape."""
    # static config used nowhere else; no refinement step (it would compile a second program)
    cfg = _const_config(max_outer=2, pd_check_every=7, refine_size=0)
    img, _ = make_blob(seed=3, size=20)
    before = alternating.run._cache_size()
    s2s.segment(jax.random.key(0), img, config=cfg)
    assert alternating.run._cache_size() == before + 1
    img2, _ = make_blob(seed=4, size=20)
    s2s.segment(jax.random.key(5), img2, config=cfg.replace(lam=0.1, threshold=0.6))
    assert alternating.run._cache_size() == before + 1
    img3, _ = make_blob(seed=4, size=18)
    s2s.segment(jax.random.key(5), img3, config=cfg)
    assert alternating.run._cache_size() == before + 2


# --------------------------------------------------------------------------------------
# run_sweep: one compiled call for a batch of Hyper
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", ["vmap", "map"])
def test_run_sweep_members_equal_separate_runs(batch):
    img, _ = _cv_image(2, 24, 0.2)
    cfg = _const_config(max_outer=6, mask_tol=1e-3)
    spec = cfg.spec()
    f, w0, labels0 = _inputs(img)
    lams, mus = (0.01, 0.05, 0.3), (0.0, 0.01, 0.0)
    hs = [cfg.replace(lam=lam, mu=mu).hyper() for lam, mu in zip(lams, mus, strict=True)]
    hypers = jax.tree.map(lambda *a: jnp.stack(a), *hs)
    key = jax.random.key(1)
    sw = alternating.run_sweep(key, f, w0, labels0, hypers, spec=spec, batch=batch)
    assert sw.labels.shape == (3, 24, 24) and sw.energies.shape == (3, cfg.max_outer)
    for i, h in enumerate(hs):
        one = alternating.run(key, f, w0, labels0, h, spec=spec)
        n = int(one.it)
        assert int(sw.it[i]) == n and int(sw.status[i]) == int(one.status)
        np.testing.assert_array_equal(np.asarray(sw.labels[i]), np.asarray(one.labels))
        np.testing.assert_allclose(
            np.asarray(sw.energies[i, :n]), np.asarray(one.energies[:n]), rtol=1e-5
        )
    # different lam really gives different results (the sweep is not one run repeated)
    assert not np.array_equal(np.asarray(sw.labels[0]), np.asarray(sw.labels[2]))
    with pytest.raises(ValueError, match="batch"):
        alternating.run_sweep(key, f, w0, labels0, hypers, spec=spec, batch="pmap")


# --------------------------------------------------------------------------------------
# paper Fig. 1: equal-mean stripe textures
# --------------------------------------------------------------------------------------


def test_stripes_toy_linear_experts_beat_chan_vese():
    noisy, clean, gt = s2s.data.stripes(0, size=64, noise=0.1)
    boxes = s2s.Boxes(fg=[(24, 24, 40, 40)], bg=[(0, 0, 16, 16)])
    assert gt[24:40, 24:40].all() and not gt[0:16, 0:16].any()
    cfg = s2s.Self2SegConfig(
        lam=0.02,
        mu=0.0,
        fg_expert="linear",
        bg_expert="linear",
        linear_size=7,
        init_denoise=False,
    )
    res = s2s.segment(jax.random.key(0), noisy, init=boxes, config=cfg)
    np.testing.assert_array_equal(res.init_mask, np.pad(np.ones((16, 16), bool), 24))
    np.testing.assert_array_equal(res.train_steps, 0)  # exact (least-squares) experts
    d_s2s = metrics.dice(res.mask, gt)
    d_cv = metrics.dice(s2s.chan_vese(noisy, lam=0.02), gt)
    assert d_s2s >= 0.9, d_s2s
    assert d_cv < 0.7, d_cv
    # the joint denoising is better than the noisy input
    assert metrics.psnr(res.denoised, clean, data_range=1.0) > metrics.psnr(
        noisy, clean, data_range=1.0
    )


def _discs_on_a_ramp(ndim: int, n: int, ramp: float, seed: int = 0):
    """Discs (balls) 0.25 brighter than their surroundings (radius n/8, centred at n/4 and 3n/4
    on every axis) on a background that brightens by ``ramp`` along the last axis: with
    ``ramp`` near 0.25 no single threshold (and no pair of region means) separates them."""
    import itertools

    rng = np.random.default_rng(seed)
    grid = np.mgrid[(slice(0, n),) * ndim].astype(np.float32)
    gt = np.zeros((n,) * ndim, bool)
    for c in itertools.product((n // 4, 3 * n // 4), repeat=ndim):
        gt |= sum((g - ci) ** 2 for g, ci in zip(grid, c)) < (n / 8) ** 2
    clean = 0.1 + ramp * grid[-1] / (n - 1) + 0.25 * gt
    return (clean + 0.05 * rng.standard_normal(clean.shape)).astype(np.float32), gt


@pytest.mark.parametrize("ndim", [2, 3])
def test_smooth_background_expert_follows_uneven_illumination(ndim):
    """Chan–Vese (two region means) cannot segment discs on a strong ramp; the same scheme with
    the smooth (local-mean) background expert can — the background it models varies slowly."""
    img, gt = _discs_on_a_ramp(ndim, *((48, 0.3) if ndim == 2 else (32, 0.2)))
    cv = s2s.Self2SegConfig(lam=0.02, mu=0.0, fg_expert="constant", bg_expert="constant",
                            max_outer=10, pd_max_iter=500)
    sm = cv.replace(bg_expert="smooth", smooth_size=15)
    d_cv = metrics.dice(s2s.segment(jax.random.key(0), img, config=cv, volume=ndim == 3).mask, gt)
    res = s2s.segment(jax.random.key(0), img, config=sm, volume=ndim == 3)
    d_sm = metrics.dice(res.mask, gt)
    assert d_sm > 0.9 and d_cv < 0.75, (d_sm, d_cv)
    np.testing.assert_array_equal(res.train_steps, 0)  # no training


# --------------------------------------------------------------------------------------
# output invariants
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
    # the two-class result carries the multi-class fields
    np.testing.assert_array_equal(res.labels, res.mask.astype(np.int32))
    np.testing.assert_allclose(res.probabilities.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(res.probabilities[1], res.u, atol=1e-6)
    assert res.expert_outputs.shape == (2, 32, 32)


def test_composite_helper():
    probs = jnp.asarray(
        np.random.default_rng(0).dirichlet([1, 1, 1], size=(4, 5)).transpose(2, 0, 1)
    )
    den = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 2, 4, 5)))  # (C, L, *s)
    got = np.asarray(alternating.composite(probs, den))
    ref = np.einsum("cyx,clyx->lyx", np.asarray(probs), np.asarray(den))
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(alternating.composite(probs, den[:, 0])), ref[0], rtol=1e-6
    )


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
    np.testing.assert_allclose(
        res.denoised, tiny_n2f_result.denoised * 1000.0 + 5.0, rtol=1e-5, atol=1e-2
    )
    np.testing.assert_allclose(res.energies, tiny_n2f_result.energies, rtol=1e-5)


# --------------------------------------------------------------------------------------
# several classes
# --------------------------------------------------------------------------------------

BOXES3 = s2s.ClassBoxes([[(0, 40, 16, 64)], [(12, 12, 26, 26)], [(38, 38, 52, 52)]])


@pytest.fixture(scope="module")
def three_class_run():
    noisy, clean, lab = three_class_textures()
    cfg = s2s.Self2SegConfig(lam=0.03, **TINY)
    res = s2s.segment(
        jax.random.key(0),
        noisy,
        num_classes=3,
        init=BOXES3,
        config=cfg,
        class_experts=("constant", "n2f", "constant"),
    )
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
    # denoised is the composite of the expert outputs
    np.testing.assert_allclose(
        res.denoised, np.sum(res.probabilities * res.expert_outputs, 0), atol=1e-5
    )
    # box start: pixels in no box start as background
    assert res.init_labels.shape == noisy.shape
    assert (res.init_labels == 1).sum() == 14 * 14 and (res.init_labels == 2).sum() == 14 * 14


@dataclasses.dataclass(frozen=True)
class _SimplexSpec(alternating.Spec):
    """The scheme with the simplex relaxation also for two classes (the multi-class path)."""

    @property
    def problem(self):
        return dataclasses.replace(super().problem, relaxation=pdhg.SIMPLEX)


def test_two_classes_box_and_simplex_relaxations_agree():
    """Two classes are solved on the box; the equivalent simplex problem (the path of C > 2)
    gives the same segmentation: same start, same first W-step, same energies."""
    n = 40
    yy, xx = np.mgrid[:n, :n]
    gt = (yy - n / 2) ** 2 + (xx - n / 2.5) ** 2 < (n / 4) ** 2
    img = (0.3 + 0.4 * gt + 0.15 * np.random.default_rng(0).standard_normal((n, n))).astype(
        np.float32
    )
    cfg = _const_config(max_outer=5, mu=0.01, mask_tol=1e-3, pd_tol=1e-5)
    box = cfg.spec()
    simplex = _SimplexSpec(**{f.name: getattr(box, f.name) for f in dataclasses.fields(box)})
    assert box.problem.relaxation is pdhg.BOX and simplex.problem.relaxation is pdhg.SIMPLEX
    f, w0, labels0 = _inputs(img)
    key = jax.random.key(3)
    rb = alternating.run(key, f, w0, labels0, cfg.hyper(), spec=box)
    rm = alternating.run(key, f, w0, labels0, cfg.hyper(), spec=simplex)
    assert rb.u.shape == (n, n) and rm.u.shape == (2, n, n)
    assert np.mean(np.asarray(rb.labels) == np.asarray(rm.labels)) >= 0.99
    np.testing.assert_allclose(float(rm.energies[0]), float(rb.energies[0]), rtol=1e-3)
    pb = np.asarray(alternating.probabilities(rb, box))
    pm = np.asarray(alternating.probabilities(rm, simplex))
    assert np.mean(np.abs(pb - pm)) < 0.02
    assert s2s.metrics.dice(np.asarray(rm.labels) > 0, gt) > 0.9


def test_multiclass_deterministic_and_no_retrace():
    xx = np.mgrid[:40, :40][1]
    f = np.digitize(xx, [13, 27]) * 0.3 + 0.1 * np.random.default_rng(0).standard_normal((40, 40))
    cfg = s2s.Self2SegConfig(
        fg_expert="constant", bg_expert="constant", max_outer=3, init_denoise=False
    )
    r1 = s2s.segment(jax.random.key(1), f, num_classes=3, config=cfg)
    n0 = alternating.run._cache_size()
    r2 = s2s.segment(jax.random.key(1), f, num_classes=3, config=cfg.replace(lam=0.05))
    r3 = s2s.segment(jax.random.key(1), f, num_classes=3, config=cfg)
    assert alternating.run._cache_size() == n0  # new lam / same shapes: no recompilation
    np.testing.assert_array_equal(r1.labels, r3.labels)
    np.testing.assert_array_equal(r1.probabilities, r3.probabilities)
    assert r2.labels.shape == r1.labels.shape
    assert set(np.unique(r1.labels)) == set(np.unique(r2.labels)) == {0, 1, 2}
    assert not np.array_equal(r1.probabilities, r2.probabilities)  # lam really changed


def test_vmap_over_images_equals_separate_runs(make_blob):
    fs = [make_blob(s, 32, 0.15)[0] for s in (0, 1)]
    f = jnp.asarray(np.stack([(a - a.min()) / (a.max() - a.min()) for a in fs]))
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", max_outer=3)
    spec = cfg.spec(num_classes=3)
    labels0 = jnp.stack([jnp.digitize(x, jnp.array([0.33, 0.66])) for x in f]).astype(jnp.int32)
    w0 = jax.vmap(lambda lab: energy.one_hot(lab, 3))(labels0)
    key = jax.random.key(0)
    batched = jax.vmap(lambda a, w, lab: alternating.run(key, a, w, lab, cfg.hyper(), spec=spec))(
        f, w0, labels0
    )
    assert batched.labels.shape == (2, 32, 32)
    for i in range(2):
        one = alternating.run(key, f[i], w0[i], labels0[i], cfg.hyper(), spec=spec)
        np.testing.assert_array_equal(np.asarray(batched.labels[i]), np.asarray(one.labels))
        assert int(batched.it[i]) == int(one.it)
    assert not np.array_equal(np.asarray(batched.labels[0]), np.asarray(batched.labels[1]))


# --------------------------------------------------------------------------------------
# colour and volumes
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_colour_two_region_experts_beat_one_expert():
    """Paper Fig. 2 claim on a small colour image of two textures: the composite of two region
    experts has a higher PSNR than one expert of the same size trained on the whole image."""
    n = 64
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    left = xx < n / 2
    a = 0.5 + 0.3 * np.sin(2 * np.pi * xx / 5)
    b = 0.5 + 0.3 * np.sin(2 * np.pi * yy / 5)
    clean = np.stack(
        [np.where(left, a, b), np.where(left, 1 - a, 0.5), np.where(left, 0.5, 1 - b)], -1
    )
    noisy = (clean + 0.15 * np.random.default_rng(0).standard_normal(clean.shape)).astype(
        np.float32
    )
    cfg = s2s.Self2SegConfig(
        **{**TINY, "train_max_steps": 150, "train_min_steps": 150}, bg_expert="n2f"
    )
    boxes = s2s.ClassBoxes([[(0, 40, 64, 64)], [(0, 0, 64, 24)]])
    res = s2s.segment(jax.random.key(0), noisy, channel_axis=-1, init=boxes, config=cfg)
    assert res.denoised.shape == noisy.shape
    assert res.expert_outputs.shape == (2,) + noisy.shape  # each in the input's layout
    assert s2s.metrics.dice(res.mask, left) > 0.95
    lo, hi = float(noisy.min()), float(noisy.max())
    f = np.moveaxis((noisy - lo) / (hi - lo), -1, 0)
    train = cfg.spec(channels=3).train
    one = np.moveaxis(
        np.asarray(experts.denoise(jax.random.key(0), f, cfg.learning_rate, train)), 0, -1
    )
    one = one * (hi - lo) + lo
    p_two = s2s.metrics.psnr(res.denoised, clean, data_range=1.0)
    p_one = s2s.metrics.psnr(one, clean, data_range=1.0)
    print(f"colour PSNR: two region experts {p_two:.2f} dB, one expert {p_one:.2f} dB")
    assert p_two > p_one


@pytest.mark.slow
def test_volume_nuclei_dice_with_anisotropic_spacing():
    vol, gt = s2s.data.load_sample_3d()
    noisy = s2s.data.add_gaussian_noise(0, vol, 20.0)
    # start: Otsu of the noisy stack (a 40-step 3-D Noise2Fast start is too crude to threshold)
    cfg = s2s.Self2SegConfig(
        **{**TINY, "train_max_steps": 40, "train_min_steps": 20, "max_outer": 3}
    )
    res = s2s.segment(jax.random.key(0), noisy, volume=True, spacing=(2.0, 1.0, 1.0), config=cfg)
    assert res.labels.shape == vol.shape
    assert res.probabilities.shape == (2,) + vol.shape
    d = s2s.metrics.dice(res.mask, gt)
    print(f"3-D synthetic nuclei Dice {d:.3f} (init {s2s.metrics.dice(res.init_mask, gt):.3f})")
    assert d > 0.7


# --------------------------------------------------------------------------------------
# blind-spot data terms
# --------------------------------------------------------------------------------------


def test_blind_spot_data_term_picks_the_better_denoiser_not_the_noisier_one():
    """Two linear 'experts' on a smooth noisy image: A passes noise through (large centre
    weight), B averages. B is closer to the clean image everywhere; the paper's data term
    prefers A, the blind-spot one prefers B."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:64, :64] / 64.0
    clean = (0.4 + 0.2 * np.sin(3 * xx)).astype(np.float32)
    f = jnp.asarray(clean + 0.1 * rng.normal(size=clean.shape).astype(np.float32))
    train = experts.TrainConfig(linear_size=3)
    ka = np.full((3, 3), 0.02, np.float32)
    ka[1, 1] = 0.84
    kb = np.full((3, 3), 1 / 9, np.float32)
    pa = {"kernel": jnp.asarray(ka), "bias": jnp.asarray(0.0)}
    pb = {"kernel": jnp.asarray(kb), "bias": jnp.asarray(0.0)}
    da, db = experts.apply(pa, f, "linear", train), experts.apply(pb, f, "linear", train)
    assert jnp.mean((da - clean) ** 2) > jnp.mean((db - clean) ** 2)  # B is the better denoiser
    den = jnp.stack([da, db])  # class 0 = A, class 1 = B
    params = {"linear": jax.tree.map(lambda a, b: jnp.stack([a, b]), pa, pb)}
    for blind, a_wins in ((False, True), (True, False)):
        spec = alternating.Spec(kinds=("linear", "linear"), train=train, blind_spot=blind)
        d = alternating.data_terms(params, den, f, spec)
        assert d.shape == (2, 64, 64)
        assert bool(jnp.mean(d[0]) < jnp.mean(d[1])) == a_wins, blind
    # the output is unchanged: only the data term differs
    spec = alternating.Spec(kinds=("linear", "linear"), train=train, blind_spot=False)
    assert alternating.predictions(params, den, f, spec) is den


@pytest.mark.slow
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
    # ...also for more classes (the blind-spot option is no longer two-class only)
    a3 = s2s.segment(jax.random.key(0), img, num_classes=3, config=const)
    b3 = s2s.segment(
        jax.random.key(0), img, num_classes=3, config=const.replace(data_term="blind_spot")
    )
    np.testing.assert_array_equal(a3.labels, b3.labels)
    np.testing.assert_allclose(a3.energies, b3.energies, rtol=1e-6)
