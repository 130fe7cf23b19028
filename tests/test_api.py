"""Public API: eager validation (ValueError before any compilation), non-finite results
(FloatingPointError), signature and result structure."""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import alternating, api, experts


def _img(n=16, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    gt = (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 4) ** 2
    return (0.3 + 0.4 * gt + 0.05 * rng.standard_normal((n, n))).astype(np.float32)


IMG = _img()
H, W = IMG.shape
HALF = np.zeros((H, W), bool)
HALF[:, : W // 2] = True


def _with(a, idx, v):
    a = a.astype(np.float32).copy()
    a[idx] = v
    return a


# (description, kwargs for segment (key/image/init/config overrides), match)
BAD = [
    ("3-D image", dict(image=np.random.default_rng(0).random((16, 16, 3))), "channel_axis=-1.*volume=True"),
    ("1-D image", dict(image=np.random.default_rng(0).random(64)), "2-D"),
    ("NaN", dict(image=_with(IMG, (3, 4), np.nan)), "non-finite"),
    ("Inf", dict(image=_with(IMG, (3, 4), np.inf)), "non-finite"),
    ("-Inf", dict(image=_with(IMG, (0, 0), -np.inf)), "non-finite"),
    ("constant", dict(image=np.full((16, 16), 0.3)), "constant"),
    ("too small", dict(image=np.random.default_rng(0).random((7, 20))), "too small"),
    ("too small for linear", dict(image=IMG, cfg=dict(fg_expert="linear", linear_size=9)), "too small"),
    ("bool dtype", dict(image=IMG > 0.5), "dtype"),
    ("complex dtype", dict(image=IMG.astype(np.complex64)), "dtype"),
    ("string", dict(image="image.tif"), "string"),
    ("empty mask", dict(init=np.zeros((H, W), bool)), "empty"),
    ("full mask", dict(init=np.ones((H, W), bool)), "full"),
    ("mask wrong shape", dict(init=np.ones((H, W + 1), bool) & (np.arange(W + 1) < 5)), "shape"),
    ("mask not binary", dict(init=HALF.astype(np.int32) * 2), "boolean"),
    ("mask 3-D", dict(init=np.stack([HALF, HALF])), "unknown init"),
    ("box outside", dict(init=s2s.Boxes(fg=[(4, 4, 8, 8)], bg=[(10, 10, 20, 20)])), "outside"),
    ("box negative", dict(init=s2s.Boxes(fg=[(-1, 4, 8, 8)])), "outside"),
    ("empty box", dict(init=s2s.Boxes(fg=[(4, 4, 4, 8)])), "empty"),
    ("no fg box", dict(init=s2s.Boxes(fg=[], bg=[(0, 0, 4, 4)])), "foreground box"),
    ("box not 4 ints", dict(init=s2s.Boxes(fg=[(1, 2, 3)])), "four integers"),
    ("overlapping boxes", dict(init=s2s.Boxes(fg=[(2, 2, 8, 8)], bg=[(6, 6, 10, 10)])), "overlap"),
    ("fg covers all", dict(init=s2s.Boxes(fg=[(0, 0, H, W)])), "whole image"),
    ("lam = 0", dict(cfg=dict(lam=0.0)), "lam"),
    ("lam < 0", dict(cfg=dict(lam=-0.1)), "lam"),
    ("lam nan", dict(cfg=dict(lam=float("nan"))), "lam"),
    ("mu < 0", dict(cfg=dict(mu=-1e-3)), "mu"),
    ("unknown init string", dict(init="kmeans"), "unknown init"),
    ("init None", dict(init=None), "init"),
    ("init bool", dict(init=True), "unknown init"),
    ("unknown fg expert", dict(cfg=dict(fg_expert="unet")), "fg_expert"),
    ("unknown bg expert", dict(cfg=dict(bg_expert="bm3d")), "bg_expert"),
    ("even data_filter", dict(cfg=dict(data_filter=4)), "data_filter"),
    ("even linear_size", dict(cfg=dict(linear_size=6)), "linear_size"),
    ("threshold init 0", dict(init=0.0), "threshold"),
    ("threshold init 1", dict(init=1.0), "threshold"),
    ("threshold init 1.5", dict(init=1.5), "threshold"),
    ("threshold init < 0", dict(init=-0.2), "threshold"),
    ("config threshold", dict(cfg=dict(threshold=1.0)), "threshold"),
    ("learning rate", dict(cfg=dict(learning_rate=0.0)), "learning_rate"),
    ("max_outer", dict(cfg=dict(max_outer=0)), "max_outer"),
    ("conv impl", dict(cfg=dict(conv_impl="fft")), "conv_impl"),
    ("stack experts", dict(cfg=dict(stack_experts="sometimes")), "stack_experts"),
    ("int key", dict(key=0), "key"),
    ("numpy int key", dict(key=np.int64(3)), "key"),
    ("float array key", dict(key=np.zeros(2, np.float32)), "key"),
    ("config type", dict(config={"lam": 0.1}), "Self2SegConfig"),
]


@pytest.fixture
def no_compile(monkeypatch):
    """Fail loudly if the compiled scheme or the Noise2Fast initial denoiser is reached."""

    def boom(*a, **k):
        raise AssertionError("validation did not happen before the compiled code was called")

    monkeypatch.setattr(alternating, "run_scheme", boom)
    monkeypatch.setattr(api, "n2f_denoise_normalised", boom)
    before = alternating.TRACE_COUNT[0]
    yield
    assert alternating.TRACE_COUNT[0] == before


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_raise_value_error_before_compiling(case, no_compile, const_config):
    _, kw, match = case
    config = kw.get("config", const_config.replace(**kw.get("cfg", {})))
    with pytest.raises(ValueError, match=match):
        s2s.segment(
            kw.get("key", jax.random.key(0)),
            kw.get("image", IMG),
            init=kw.get("init", "otsu"),
            config=config,
        )


def test_valid_inputs_reach_the_scheme(no_compile, monkeypatch, const_config):
    """Sanity check of the spy: valid inputs of every init kind pass validation."""
    calls = []

    def spy(key, f, w_fg, w_bg, u0, hyper, st):
        calls.append((np.asarray(f), np.asarray(w_fg), np.asarray(w_bg), np.asarray(u0)))
        raise KeyboardInterrupt  # stop here (not an Exception: nothing may swallow it)

    monkeypatch.setattr(alternating, "run_scheme", spy)
    inits = [
        "otsu",
        0.5,
        HALF,
        HALF.astype(np.uint8),
        s2s.Boxes(fg=[(4, 4, 12, 12)]),
        s2s.Boxes(fg=[(4, 4, 8, 8), (9, 9, 12, 12)], bg=[(0, 0, 3, 3)]),
    ]
    for init in inits:
        with pytest.raises(KeyboardInterrupt):
            s2s.segment(jax.random.key(0), (IMG * 1000).astype(np.uint16) if init is HALF else IMG, init=init,
                        config=const_config)
    assert len(calls) == len(inits)
    f, w_fg, w_bg, u0 = calls[0]
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0
    np.testing.assert_array_equal(w_bg, 1 - w_fg)  # Otsu: complementary regions
    # boxes: the experts train inside the boxes only; the background defaults to the complement
    f, w_fg, w_bg, u0 = calls[4]
    np.testing.assert_array_equal(w_fg, np.pad(np.ones((8, 8)), 4))
    np.testing.assert_array_equal(w_bg, 1 - w_fg)
    f, w_fg, w_bg, u0 = calls[5]
    assert w_fg.sum() == 16 + 9 and w_bg.sum() == 9 and (w_fg * w_bg).sum() == 0
    np.testing.assert_array_equal(u0, w_fg)


def test_numpy_float32_lam_is_accepted():
    """lam is a positive finite number: a NumPy float32 scalar must validate like a float."""
    s2s.Self2SegConfig(lam=np.float64(0.05)).validate()
    s2s.Self2SegConfig(lam=np.float32(0.05)).validate()


# --------------------------------------------------------------------------------------
# non-finite results
# --------------------------------------------------------------------------------------


def test_huge_learning_rate_raises_floating_point_error(blob32, tiny_n2f_config):
    img, _ = blob32
    with pytest.raises(FloatingPointError, match="non-finite"):
        s2s.segment(jax.random.key(0), img, config=tiny_n2f_config.replace(learning_rate=1e30))


def test_nan_expert_output_raises_floating_point_error(monkeypatch, const_config):
    def nan_expert(params, f, w, lr, cfg):
        p, den, steps = experts.fit_constant(f, w)
        return p, den * jnp.nan, steps

    monkeypatch.setattr(experts, "fit_expert", nan_expert)
    # a static configuration used by no other test, so the patched function is really traced
    cfg = const_config.replace(pd_check_every=11, max_outer=2)
    with pytest.raises(FloatingPointError):
        s2s.segment(jax.random.key(0), IMG, config=cfg)


def test_degenerate_mask_warns(const_config):
    with pytest.warns(RuntimeWarning, match="empty or full"):
        res = s2s.segment(jax.random.key(0), IMG, config=const_config.replace(lam=1e3))
    assert res.status == alternating.STATUS_NAMES[alternating.DEGENERATE]
    assert res.mask.all() or not res.mask.any()


def test_mask_step_iteration_cap_warns(const_config):
    """A u-step stopped by pd_max_iter (not by pd_tol) is reported, not silent; a run whose
    u-steps all converge is not flagged."""
    import warnings

    cfg = const_config.replace(pd_max_iter=5, pd_check_every=5, pd_tol=1e-12, max_outer=2)
    with pytest.warns(RuntimeWarning, match="iteration cap"):
        res = s2s.segment(jax.random.key(0), IMG, config=cfg)
    assert np.all(res.pd_iterations >= 5)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = s2s.segment(jax.random.key(0), IMG, config=const_config.replace(pd_max_iter=20000))
    assert not [w for w in rec if "iteration cap" in str(w.message)]
    assert np.all(res.pd_iterations < 20000)


# --------------------------------------------------------------------------------------
# signature and result structure
# --------------------------------------------------------------------------------------


def test_segment_signature():
    params = list(inspect.signature(s2s.segment).parameters.values())
    assert params[0].name == "key"
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert params[1].name == "image"
    assert params[1].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert len(params) > 2
    for p in params[2:]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY, p.name
    assert {p.name for p in params[2:]} >= {"init", "config"}


def test_config_is_frozen_and_hashable():
    cfg = s2s.Self2SegConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lam = 0.1
    assert hash(cfg) == hash(s2s.Self2SegConfig())
    assert cfg.replace(lam=0.1).lam == 0.1 and cfg.lam == 0.03
    paper = s2s.Self2SegConfig.paper()
    assert (paper.net_width, paper.net_depth, paper.warm_start) == (64, 8, False)
    paper.validate()


def test_result_fields(tiny_n2f_result, tiny_n2f_config):
    res = tiny_n2f_result
    assert isinstance(res, s2s.Self2SegResult)
    names = {f.name for f in dataclasses.fields(res)}
    assert {"mask", "u", "denoised", "energies", "num_outer", "status"} <= names
    assert res.mask.dtype == np.bool_ and res.mask.shape == (32, 32)
    assert res.u.dtype == np.float32 and res.u.shape == (32, 32)
    assert res.u.min() >= 0.0 and res.u.max() <= 1.0
    assert res.denoised.shape == (32, 32) and res.denoised.dtype == np.float32
    assert isinstance(res.num_outer, int) and 1 <= res.num_outer <= tiny_n2f_config.max_outer
    assert res.energies.ndim == 1 and res.energies.shape == (res.num_outer,)
    assert np.all(np.isfinite(res.energies))
    assert res.mask_changes.shape == res.pd_iterations.shape == (res.num_outer,)
    assert res.train_steps.shape == (res.num_outer, 2)
    assert res.init_mask.dtype == np.bool_ and res.init_mask.shape == (32, 32)
    assert res.status in alternating.STATUS_NAMES.values()
    assert res.status != alternating.STATUS_NAMES[alternating.NONFINITE]


def test_legacy_uint32_key_is_accepted(const_config):
    a = s2s.segment(jax.random.PRNGKey(0), IMG, config=const_config)
    b = s2s.segment(jax.random.key(0), IMG, config=const_config)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.u, b.u)
