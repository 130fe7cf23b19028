"""Public API: eager validation (ValueError before any compilation), what reaches the
compiled scheme, non-finite results (FloatingPointError), warnings, signature, result
structure, layouts, multi-class inputs (label images, class boxes)."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import warnings

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
U24 = np.random.default_rng(0).uniform(size=(24, 24)).astype(np.float32)
RUN = alternating.run  # the real jitted scheme (for its cache size while it is patched)


def _with(a, idx, v):
    a = a.astype(np.float32).copy()
    a[idx] = v
    return a


# (description, kwargs for segment (key/image/init/config overrides/extra segment kwargs), match)
# Invalid *configurations* cannot be constructed at all: see tests/test_config.py.
BAD = [
    (
        "3-D image",
        dict(image=np.random.default_rng(0).random((16, 16, 3))),
        "channel_axis=-1.*volume=True",
    ),
    ("1-D image", dict(image=np.random.default_rng(0).random(64)), "2-D"),
    ("4-D image", dict(image=np.random.default_rng(0).random((2, 16, 16, 3))), "expected 2 axes"),
    ("NaN", dict(image=_with(IMG, (3, 4), np.nan)), "non-finite"),
    ("Inf", dict(image=_with(IMG, (3, 4), np.inf)), "non-finite"),
    ("-Inf", dict(image=_with(IMG, (0, 0), -np.inf)), "non-finite"),
    ("constant", dict(image=np.full((16, 16), 0.3)), "constant"),
    ("too small", dict(image=np.random.default_rng(0).random((7, 20))), "too small"),
    (
        "too small for linear",
        dict(image=IMG, cfg=dict(fg_expert="linear", linear_size=9)),
        "too small",
    ),
    (
        "too small for linear bg",
        dict(image=IMG, cfg=dict(bg_expert="linear", linear_size=9)),
        "too small",
    ),
    ("bool dtype", dict(image=IMG > 0.5), "dtype"),
    ("complex dtype", dict(image=IMG.astype(np.complex64)), "dtype"),
    ("object dtype", dict(image=np.array([[None] * 16] * 16)), "dtype"),
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
    ("unknown init string", dict(init="kmeans"), "unknown init"),
    ("init None", dict(init=None), "init"),
    ("init bool", dict(init=True), "unknown init"),
    ("threshold init 0", dict(init=0.0), "threshold"),
    ("threshold init 1", dict(init=1.0), "threshold"),
    ("threshold init 1.5", dict(init=1.5), "threshold"),
    ("threshold init < 0", dict(init=-0.2), "threshold"),
    ("int key", dict(key=0), "key"),
    ("numpy int key", dict(key=np.int64(3)), "key"),
    ("float array key", dict(key=np.zeros(2, np.float32)), "key"),
    ("string key", dict(key="seed"), "key"),
    ("config type", dict(config={"lam": 0.1}), "Self2SegConfig"),
    ("config None", dict(config=None), "Self2SegConfig"),
    ("volume not bool", dict(kw=dict(volume=1)), "volume must be True or False"),
    (
        "channel_axis bool",
        dict(image=np.random.default_rng(0).random((16, 16, 3)), kw=dict(channel_axis=True)),
        "channel_axis must be an integer",
    ),
    (
        "too many channels",
        dict(image=np.random.default_rng(0).random((16, 16, 65)), kw=dict(channel_axis=-1)),
        r"65 entries \(> 64\)",
    ),
    # several classes, channels, volumes (old test_multiclass)
    ("num_classes 1", dict(image=U24, kw=dict(num_classes=1)), "num_classes"),
    ("num_classes 2.5", dict(image=U24, kw=dict(num_classes=2.5)), "num_classes"),
    ("num_classes 99", dict(image=U24, kw=dict(num_classes=99)), "num_classes"),
    ("num_classes True", dict(image=U24, kw=dict(num_classes=True)), "num_classes"),
    ("channel_axis 5", dict(image=U24, kw=dict(channel_axis=5)), "out of range"),
    (
        "channel_axis + volume",
        dict(image=U24, kw=dict(channel_axis=0, volume=True)),
        "expected 4 axes",
    ),
    ("spacing length", dict(image=U24, kw=dict(num_classes=3, spacing=(1.0,))), "spacing"),
    ("spacing negative", dict(image=U24, kw=dict(num_classes=3, spacing=(1.0, -1.0))), "spacing"),
    ("spacing not numbers", dict(image=U24, kw=dict(spacing=3.0)), "spacing"),
    ("spacing nan", dict(image=U24, kw=dict(spacing=(1.0, float("nan")))), "spacing"),
    (
        "linear colour",
        dict(
            image=np.random.default_rng(0).random((24, 24, 3)),
            kw=dict(channel_axis=-1, num_classes=3, class_experts=("linear", "n2f", "n2f")),
        ),
        "linear",
    ),
    (
        "linear volume",
        dict(
            image=np.random.default_rng(0).random((16, 16, 16)),
            cfg=dict(fg_expert="linear", linear_size=3),
            kw=dict(volume=True),
        ),
        "linear",
    ),
    (
        "class_experts count",
        dict(image=U24, kw=dict(num_classes=3, class_experts=("n2f", "n2f"))),
        "class_experts",
    ),
    (
        "class_experts kind",
        dict(image=U24, kw=dict(class_experts=("n2f", "unet"))),
        "class_experts",
    ),
    (
        "label image missing class",
        dict(image=U24, init=np.zeros((24, 24), int), kw=dict(num_classes=3)),
        "no pixel of class",
    ),
    (
        "label image shape",
        dict(image=U24, init=np.zeros((20, 24), int), kw=dict(num_classes=3)),
        "shape",
    ),
    (
        "label image values",
        dict(image=U24, init=np.full((24, 24), 3), kw=dict(num_classes=3)),
        "values",
    ),
    ("threshold for 3 classes", dict(image=U24, init=0.5, kw=dict(num_classes=3)), "unknown init"),
    (
        "Boxes for 3 classes",
        dict(image=U24, init=s2s.Boxes(fg=[(0, 0, 4, 4)]), kw=dict(num_classes=3)),
        "two-class",
    ),
    (
        "ClassBoxes count",
        dict(
            image=U24, init=s2s.ClassBoxes([[(0, 0, 5, 5)], [(6, 6, 9, 9)]]), kw=dict(num_classes=3)
        ),
        "ClassBoxes",
    ),
    (
        "ClassBoxes overlap",
        dict(image=U24, init=s2s.ClassBoxes([[(0, 0, 5, 5)], [(3, 3, 9, 9)]])),
        "overlap",
    ),
    (
        "ClassBoxes outside",
        dict(image=U24, init=s2s.ClassBoxes([[(0, 0, 5, 5)], [(6, 6, 30, 9)]])),
        "outside",
    ),
    (
        "Boxes in a volume",
        dict(
            image=np.random.default_rng(0).random((16, 16, 16)),
            init=s2s.Boxes(fg=[(0, 0, 4, 4)]),
            kw=dict(volume=True),
        ),
        "2-D",
    ),
    (
        "too few levels for 3 classes",
        dict(image=np.repeat([[0.0] * 12 + [1.0] * 12], 24, 0), kw=dict(num_classes=3)),
        "distinct intensity levels",
    ),
]


@pytest.fixture
def no_compile(monkeypatch):
    """Fail loudly if the compiled scheme or the Noise2Fast initial denoiser is reached."""

    def boom(*a, **k):
        raise AssertionError("validation did not happen before the compiled code was called")

    monkeypatch.setattr(alternating, "run", boom)
    monkeypatch.setattr(alternating, "iterate", boom)  # the loop driven from Python (progress=)
    monkeypatch.setattr(experts, "denoise", boom)
    before = RUN._cache_size()
    yield
    assert RUN._cache_size() == before


# problems that only show on the (denoised) image a threshold start looks at
AFTER_DENOISING = {"too few levels for 3 classes"}
CASES = [(c, d) for c in BAD for d in (False, True) if not (d and c[0] in AFTER_DENOISING)]


@pytest.mark.parametrize(
    "case,denoise", CASES, ids=[f"{c[0]}-{'init_denoise' if d else 'plain'}" for c, d in CASES]
)
def test_bad_inputs_raise_value_error_before_compiling(case, denoise, no_compile, const_config):
    """Every bad input is reported before the compiled scheme (and, with init_denoise, before
    the Noise2Fast start) is reached, whatever init_denoise says."""
    _, kw, match = case
    with pytest.raises(ValueError, match=match):
        config = kw.get("config", const_config.replace(init_denoise=denoise, **kw.get("cfg", {})))
        s2s.segment(
            kw.get("key", jax.random.key(0)),
            kw.get("image", IMG),
            init=kw.get("init", "otsu"),
            config=config,
            **kw.get("kw", {}),
        )


class _Stop(BaseException):
    """Raised by the spies to stop segment (not an Exception: nothing may swallow it)."""


def test_valid_inputs_reach_the_scheme(no_compile, monkeypatch, const_config):
    """Sanity check of the spy: valid inputs of every init kind pass validation, and the
    scheme gets the normalised image, the start's region weights and labels."""
    calls = []

    def spy(key, f, w0, labels0, hyper, spec, channel=0):
        calls.append((np.asarray(f), np.asarray(w0), np.asarray(labels0), spec, channel))
        raise _Stop

    monkeypatch.setattr(alternating, "run", spy)
    inits = [
        "otsu",
        0.5,
        HALF,
        HALF.astype(np.uint8),
        s2s.Boxes(fg=[(4, 4, 12, 12)]),
        s2s.Boxes(fg=[(4, 4, 8, 8), (9, 9, 12, 12)], bg=[(0, 0, 3, 3)]),
        s2s.ClassBoxes([[(0, 0, 3, 3)], [(4, 4, 8, 8)]]),
    ]
    for init in inits:
        with pytest.raises(_Stop):
            s2s.segment(
                jax.random.key(0),
                (IMG * 1000).astype(np.uint16) if init is HALF else IMG,
                init=init,
                config=const_config,
            )
    assert len(calls) == len(inits)
    f, w0, labels0, spec, channel = calls[0]
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0 and f.shape == (H, W)
    assert w0.shape == (2, H, W) and w0.dtype == np.float32
    assert labels0.dtype == np.int32
    np.testing.assert_array_equal(w0[0], 1 - w0[1])  # Otsu: complementary regions
    np.testing.assert_array_equal(labels0, w0[1])
    assert spec == const_config.spec() and channel == 0
    np.testing.assert_array_equal(calls[2][2], HALF)  # the mask start, also for uint16 images
    np.testing.assert_array_equal(calls[3][2], HALF)
    # boxes: the experts train inside the boxes only; the background defaults to the complement
    f, w0, labels0, _, _ = calls[4]
    np.testing.assert_array_equal(w0[1], np.pad(np.ones((8, 8)), 4))
    np.testing.assert_array_equal(w0[0], 1 - w0[1])
    f, w0, labels0, _, _ = calls[5]
    assert w0[1].sum() == 16 + 9 and w0[0].sum() == 9 and (w0[1] * w0[0]).sum() == 0
    np.testing.assert_array_equal(labels0, w0[1])  # outside the boxes: background
    f, w0, labels0, _, _ = calls[6]
    assert w0[0].sum() == 9 and w0[1].sum() == 16
    np.testing.assert_array_equal(labels0, w0[1])


def test_denoise_is_called_for_threshold_starts_only_with_init_denoise(monkeypatch, const_config):
    runs, dens = [], []

    def spy_run(*a, **k):
        runs.append(1)
        raise _Stop

    def spy_denoise(key, f, lr, cfg):
        dens.append((np.asarray(f), float(lr), cfg))
        return jnp.asarray(f)

    monkeypatch.setattr(alternating, "run", spy_run)
    monkeypatch.setattr(experts, "denoise", spy_denoise)
    cfg = const_config.replace(init_denoise=True, learning_rate=2e-3)
    for init, called in [
        ("otsu", True),
        (0.4, True),
        (HALF, False),
        (s2s.Boxes(fg=[(4, 4, 8, 8)]), False),
    ]:
        n = len(dens)
        with pytest.raises(_Stop):
            s2s.segment(jax.random.key(0), IMG, init=init, config=cfg)
        assert len(dens) == n + called, init
    f, lr, train = dens[0]
    assert f.shape == (H, W) and f.min() == 0.0 and f.max() == 1.0
    assert lr == pytest.approx(2e-3) and train == cfg.spec().train
    with pytest.raises(_Stop):
        s2s.segment(jax.random.key(0), IMG, config=cfg.replace(init_denoise=False))
    assert len(dens) == 2 and len(runs) == 5


def test_linear_class_expert_for_several_classes_in_2d_reaches_the_scheme(
    no_compile, monkeypatch, const_config
):
    """Linear experts are implemented for any number of classes on 2-D single-channel images."""
    specs = []

    def spy(key, f, w0, labels0, hyper, spec, channel=0):
        specs.append(spec)
        raise _Stop

    monkeypatch.setattr(alternating, "run", spy)
    img = np.random.default_rng(0).uniform(size=(32, 32)).astype(np.float32)
    with pytest.raises(_Stop):
        s2s.segment(
            jax.random.key(0),
            img,
            num_classes=3,
            config=const_config.replace(linear_size=5),
            class_experts=("linear", "constant", "n2f"),
        )
    assert specs[0].kinds == ("linear", "constant", "n2f")


def test_linear_class_expert_gets_the_size_check_of_linear_experts(no_compile, const_config):
    img = np.random.default_rng(0).uniform(size=(16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="too small"):
        s2s.segment(jax.random.key(0), img, config=const_config.replace(fg_expert="linear"))
    with pytest.raises(ValueError, match="too small"):  # linear_size 15 needs 30 pixels per axis
        s2s.segment(
            jax.random.key(0), img, config=const_config, class_experts=("constant", "linear")
        )


# --------------------------------------------------------------------------------------
# non-finite results, warnings
# --------------------------------------------------------------------------------------


def test_huge_learning_rate_raises_floating_point_error(blob32, tiny_n2f_config):
    img, _ = blob32
    with pytest.raises(FloatingPointError, match="non-finite"):
        s2s.segment(jax.random.key(0), img, config=tiny_n2f_config.replace(learning_rate=1e30))


def test_nan_expert_output_raises_floating_point_error(monkeypatch, const_config):
    real = experts.fit_constant

    def patched(f, w):
        p, den, steps = real(f, w)
        return p, den * jnp.nan, steps

    monkeypatch.setattr(experts, "fit_constant", patched)
    # a static configuration used by no other test, so the patched function is really traced
    cfg = const_config.replace(pd_check_every=13, max_outer=2)
    before = RUN._cache_size()
    with pytest.raises(FloatingPointError, match="non-finite"):
        s2s.segment(jax.random.key(0), IMG, config=cfg)
    assert RUN._cache_size() == before + 1


def test_degenerate_mask_warns_and_returns_the_start(const_config):
    """lam so large that the first u-step empties a class: a warning, and the start's labels
    (not the empty / full mask) come back, with the step's energy recorded."""
    with pytest.warns(RuntimeWarning, match="a class became empty at outer iteration 1.*start"):
        res = s2s.segment(jax.random.key(0), IMG, config=const_config.replace(lam=1e3))
    assert res.status == alternating.STATUS_NAMES[alternating.DEGENERATE]
    assert res.num_outer == 1 and np.isfinite(res.energies[0])
    assert 0 < res.mask.mean() < 1
    np.testing.assert_array_equal(res.labels, res.init_labels)


def test_mask_step_iteration_cap_warns(const_config):
    """A u-step stopped by pd_max_iter (not by pd_tol) is reported, not silent; a run whose
    u-steps all converge is not flagged."""
    cfg = const_config.replace(pd_max_iter=5, pd_check_every=5, pd_tol=1e-12, max_outer=2)
    with pytest.warns(RuntimeWarning, match="iteration cap"):
        res = s2s.segment(jax.random.key(0), IMG, config=cfg)
    assert np.all(res.pd_iterations >= 5)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = s2s.segment(jax.random.key(0), IMG, config=const_config.replace(pd_max_iter=20000))
    assert not [w for w in rec if "iteration cap" in str(w.message)]
    assert np.all(res.pd_iterations < 20000)


def test_drift_warning_fires_only_on_growing_changes_at_max_outer():
    """check_drift: a run stopped by max_outer whose label changes grew over its last
    iterations is flagged; converging runs, runs stopped otherwise and small changes are not."""
    from self2seg_jax import alternating
    max_outer = alternating.STATUS_NAMES[alternating.MAX_OUTER]
    drifting = [0.057, 0.0096, 0.041, 0.050, 0.061, 0.083, 0.106, 0.242]  # the bundled stack
    with pytest.warns(RuntimeWarning, match="drifting.*after iteration 2"):
        api.check_drift(drifting, max_outer)
    quiet = [([0.18, 0.08, 0.076, 0.074, 0.039, 0.018, 0.011, 0.010], max_outer),  # converging
             (drifting, alternating.STATUS_NAMES[alternating.ENERGY_RULE]),  # stopped by a rule
             ([0.001, 0.002, 0.003, 0.004, 0.005], max_outer),  # growing but below 1 %
             ([0.02, 0.03, 0.04], max_outer)]  # too short to tell
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for changes, status in quiet:
            api.check_drift(changes, status)


def test_smaller_max_outer_returns_the_earlier_iterate(blob32, tiny_n2f_config, tiny_n2f_result):
    """What the drift warning tells users: the same key with a smaller max_outer runs the same
    first iterations (same energies and label changes, bit for bit), so it returns an earlier
    iterate of the longer run."""
    assert tiny_n2f_result.num_outer >= 2
    img, _ = blob32
    short = s2s.segment(jax.random.key(0), img, config=tiny_n2f_config.replace(max_outer=1))
    assert short.num_outer == 1
    np.testing.assert_array_equal(short.energies, tiny_n2f_result.energies[:1])
    np.testing.assert_array_equal(short.mask_changes, tiny_n2f_result.mask_changes[:1])


def test_drift_warning_on_the_recorded_development_runs():
    """The claim in check_drift's docstring, checked on the committed trajectories: of the
    recorded runs it fires on the bundled stack and one DSB2018 tuning patch only, both runs
    whose last iterate is worse than their best."""
    import json
    from pathlib import Path

    from self2seg_jax import alternating
    folder = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "trajectories"
    rows = [json.loads(x) for p in sorted(folder.glob("*rows.jsonl"))
            for x in p.read_text().splitlines()]
    fired = []
    for r in rows:
        its = r["iterations"]
        status = alternating.STATUS_NAMES[its[-1]["status"]]
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            api.check_drift([i["change"] for i in its], status)
        if rec:
            fired.append((r["config"], r["image"]))
            assert its[-1]["dice"] < max(i["dice"] for i in its) - 0.05
    assert len(rows) == 69
    assert sorted(fired) == [("default", "bundled_stack"), ("default", "dsb_tuning_n10_p0")]


def test_multiclass_iteration_cap_warns(make_blob):
    f, _ = make_blob(0, 40, 0.15)
    cfg = s2s.Self2SegConfig(
        fg_expert="constant",
        bg_expert="constant",
        max_outer=2,
        init_denoise=False,
        pd_max_iter=5,
        pd_check_every=5,
        pd_tol=1e-12,
    )
    with pytest.warns(RuntimeWarning, match="iteration cap"):
        r = s2s.segment(jax.random.key(1), f, num_classes=3, config=cfg)
    assert np.all(r.pd_iterations >= 5)


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
    assert {p.name for p in params[2:]} >= {
        "init",
        "config",
        "num_classes",
        "channel_axis",
        "volume",
        "spacing",
        "class_experts",
        "progress",
    }


def test_result_fields(tiny_n2f_result, tiny_n2f_config):
    res = tiny_n2f_result
    assert isinstance(res, s2s.Self2SegResult)
    names = {f.name for f in dataclasses.fields(res)}
    assert names == {
        "labels",
        "probabilities",
        "denoised",
        "expert_outputs",
        "energies",
        "num_outer",
        "status",
        "mask_changes",
        "pd_iterations",
        "train_steps",
        "init_labels",
        "lam",
        "batched",
    }
    assert res.batched is False
    assert isinstance(res.lam, float) and res.lam == tiny_n2f_config.lam  # the value used
    assert res.labels.dtype == np.int32 and res.labels.shape == (32, 32)
    assert res.probabilities.dtype == np.float32 and res.probabilities.shape == (2, 32, 32)
    assert res.mask.dtype == np.bool_ and res.mask.shape == (32, 32)
    assert res.u.dtype == np.float32 and res.u.shape == (32, 32)
    assert res.u.min() >= 0.0 and res.u.max() <= 1.0
    assert res.denoised.shape == (32, 32) and res.denoised.dtype == np.float32
    assert res.expert_outputs.shape == (2, 32, 32) and res.expert_outputs.dtype == np.float32
    np.testing.assert_array_equal(res.denoised_fg, res.expert_outputs[1])
    np.testing.assert_array_equal(res.denoised_bg, res.expert_outputs[0])
    assert isinstance(res.num_outer, int) and 1 <= res.num_outer <= tiny_n2f_config.max_outer
    assert res.energies.ndim == 1 and res.energies.shape == (res.num_outer,)
    assert np.all(np.isfinite(res.energies))
    assert res.mask_changes.shape == res.pd_iterations.shape == (res.num_outer,)
    assert res.train_steps.shape == (res.num_outer, 2)
    assert res.init_labels.dtype == np.int32 and res.init_labels.shape == (32, 32)
    assert res.init_mask.dtype == np.bool_
    np.testing.assert_array_equal(res.init_mask, res.init_labels > 0)
    assert res.status in alternating.STATUS_NAMES.values()
    assert res.status != alternating.STATUS_NAMES[alternating.NONFINITE]
    # derived fields are not stored: they cannot be replaced independently
    with pytest.raises(TypeError):
        dataclasses.replace(res, mask=np.zeros((32, 32), bool))
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.num_outer = 0


def test_legacy_uint32_key_is_accepted(const_config):
    a = s2s.segment(jax.random.PRNGKey(0), IMG, config=const_config)
    b = s2s.segment(jax.random.key(0), IMG, config=const_config)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.u, b.u)


def test_check_key():
    k = jax.random.key(3)
    assert api.check_key(k) is k
    wrapped = api.check_key(jax.random.PRNGKey(3))
    assert jnp.issubdtype(wrapped.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(wrapped), jax.random.key_data(k))
    for bad in (0, np.int64(1), np.zeros(2, np.float32), np.zeros(3, np.uint32), "k", None):
        with pytest.raises(ValueError, match="key"):
            api.check_key(bad)


def test_validate_image_and_normalise():
    a, nd = api.validate_image((IMG * 100).astype(np.uint8))
    assert a.dtype == np.float64 and nd == 2 and a.shape == (H, W)
    col = np.random.default_rng(0).random((10, 12, 3))
    a, nd = api.validate_image(col, channel_axis=-1)
    assert a.shape == (3, 10, 12) and nd == 2  # channel-first
    np.testing.assert_array_equal(a[1], col[..., 1])
    a, nd = api.validate_image(np.random.default_rng(0).random((9, 10, 11)), volume=True)
    assert nd == 3 and a.shape == (9, 10, 11)
    a, nd = api.validate_image(
        np.random.default_rng(0).random((2, 9, 10, 11)), channel_axis=0, volume=True
    )
    assert nd == 3 and a.shape == (2, 9, 10, 11)
    with pytest.raises(ValueError, match="too small"):
        api.validate_image(np.random.default_rng(0).random((12, 12)), min_size=13)
    f, lo, hi = api.normalise(np.array([[2.0, 4.0], [6.0, 10.0]]), "minmax")
    assert f.dtype == np.float32 and (lo, hi) == (2.0, 10.0)
    np.testing.assert_allclose(f, [[0.0, 0.25], [0.5, 1.0]])


def test_segment_multiclass_is_segment(const_config):
    a = s2s.segment_multiclass(jax.random.key(2), IMG, num_classes=2, config=const_config)
    b = s2s.segment(jax.random.key(2), IMG, config=const_config)
    for name in ("labels", "probabilities", "energies", "denoised"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("axis", [0, -1, 2])
def test_colour_layouts(axis, const_config, rng):
    """The channel axis may be anywhere; the outputs come back in the input's layout and the
    segmentation does not depend on it."""
    n = 16
    left = np.zeros((n, n), bool)
    left[:, : n // 2] = True
    chw = np.stack([np.where(left, 0.8, 0.2), np.where(left, 0.2, 0.8), np.full((n, n), 0.5)])
    chw = (chw + 0.03 * rng.standard_normal(chw.shape)).astype(np.float32)
    img = np.moveaxis(chw, 0, axis)
    res = s2s.segment(jax.random.key(0), img, channel_axis=axis, config=const_config)
    assert res.labels.shape == (n, n) and res.denoised.shape == img.shape
    assert res.expert_outputs.shape == (2,) + img.shape
    assert s2s.metrics.dice(res.mask, left) > 0.95 or s2s.metrics.dice(res.mask, ~left) > 0.95
    ref = s2s.segment(
        jax.random.key(0), np.moveaxis(chw, 0, -1), channel_axis=-1, config=const_config
    )
    np.testing.assert_array_equal(res.labels, ref.labels)
    np.testing.assert_allclose(np.moveaxis(res.denoised, axis, -1), ref.denoised, atol=1e-6)
    # constant experts: per-channel region means in the input's intensity scale
    den = np.moveaxis(res.expert_outputs[1], axis, 0)
    for c in range(3):
        np.testing.assert_allclose(den[c], chw[c][res.mask].mean(), rtol=1e-4)


# --------------------------------------------------------------------------------------
# multi-class starts
# --------------------------------------------------------------------------------------


def test_label_image_init_is_used(make_blob):
    f, gt = make_blob(0, 32, 0.15)
    lab = gt.astype(np.int32)
    cfg = s2s.Self2SegConfig(fg_expert="constant", bg_expert="constant", max_outer=2)
    res = s2s.segment(jax.random.key(0), f, num_classes=2, spacing=(1.0, 1.0), init=lab, config=cfg)
    np.testing.assert_array_equal(res.init_labels, lab)
    lab3 = np.zeros(f.shape, np.int32)
    lab3[gt] = 2
    lab3[:4] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # class 1 (4 arbitrary rows) may empty
        res3 = s2s.segment(jax.random.key(0), f, num_classes=3, init=lab3, config=cfg)
    np.testing.assert_array_equal(res3.init_labels, lab3)
    assert res3.probabilities.shape == (3, 32, 32)


def test_all_class_permutations_of_boxes_are_consistent():
    """Boxes define class identity: permuting the boxes permutes the labels. Exactly so when
    the background box stays class 0; otherwise up to a few boundary pixels, because a box
    start puts every pixel in no box in class 0 (the start is not symmetric in the classes)."""
    xx = np.mgrid[:48, :48][1]
    truth = np.digitize(xx, [16, 32])
    noisy = truth * 0.3 + 0.1 * np.random.default_rng(0).standard_normal((48, 48))
    cfg = s2s.Self2SegConfig(
        fg_expert="constant", bg_expert="constant", max_outer=3, init_denoise=False
    )
    boxes = [[(0, 0, 10, 10)], [(20, 20, 28, 28)], [(30, 36, 40, 46)]]
    base = s2s.segment(
        jax.random.key(0), noisy, num_classes=3, init=s2s.ClassBoxes(boxes), config=cfg
    )
    for i in range(3):
        assert s2s.metrics.dice(base.labels == i, truth == i) > 0.99
    for perm in itertools.islice(itertools.permutations(range(3)), 1, None):
        r = s2s.segment(
            jax.random.key(0),
            noisy,
            num_classes=3,
            init=s2s.ClassBoxes([boxes[p] for p in perm]),
            config=cfg,
        )
        # new class j was given the boxes of base class perm[j]
        relabelled = np.asarray(perm)[r.labels]
        if perm[0] == 0:
            np.testing.assert_array_equal(relabelled, base.labels)
            np.testing.assert_allclose(r.energies, base.energies, rtol=1e-5)
        else:
            assert np.mean(relabelled != base.labels) < 0.01, perm


def test_segment_iter_yields_each_outer_iteration_and_returns_segments_result(blob32,
                                                                               const_config):
    img, _ = blob32
    gen = s2s.segment_iter(jax.random.key(4), img, config=const_config)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            res = stop.value
            break
    one = s2s.segment(jax.random.key(4), img, config=const_config)
    np.testing.assert_array_equal(res.mask, one.mask)
    assert [e.outer for e in events] == list(range(1, one.num_outer + 1))
    np.testing.assert_allclose([e.energy for e in events], one.energies, rtol=1e-6)


def test_segment_iter_checks_input_at_first_next_and_can_be_closed(blob32, const_config):
    img, _ = blob32
    bad = img.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        next(s2s.segment_iter(jax.random.key(0), bad, config=const_config))
    gen = s2s.segment_iter(jax.random.key(0), img,
                           config=const_config.replace(max_outer=50, mask_tol=0.0))
    assert next(gen).outer == 1
    gen.close()  # a GUI's Cancel: nothing else runs
    with pytest.raises(StopIteration):
        next(gen)
