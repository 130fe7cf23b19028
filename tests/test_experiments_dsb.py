"""Small, fast version of the DSB2018 reproduction (issue 3; the full run is
benchmarks/reproduce_dsb2018.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import self2seg_jax as s2s
from self2seg_jax import alternating
from self2seg_jax.experiments import dsb2018 as E

TINY = dict(net_width=8, net_depth=2, train_max_steps=40, train_min_steps=20, train_patience=20,
            max_outer=3)


def test_noisy_patches_conventions_and_determinism():
    a = E.noisy_patches(30, indices=[0, 5])
    b = E.noisy_patches(30, indices=[0, 5])
    assert len(E.noisy_patches(10)) == 16
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.noisy, q.noisy)
        assert p.sigma == 30.0 and p.noisy.shape == (128, 128)
        assert np.std(p.noisy - p.clean) == pytest.approx(30.0, rel=0.03)
    m = E.noisy_patches(30, convention="max", indices=[5])[0]
    assert m.sigma == pytest.approx(0.3 * m.clean.max())
    # different levels and patches get different noise
    assert not np.array_equal(E.noisy_patches(50, indices=[0])[0].noisy - a[0].clean,
                              (a[0].noisy - a[0].clean) * 50 / 30)
    with pytest.raises(ValueError, match="convention"):
        E.noisy_patches(30, convention="var")
    with pytest.raises(ValueError, match="out of range"):
        E.noisy_patches(30, indices=[16])


def test_paper_config_per_noise_level():
    c10, c30 = E.paper_config(10), E.paper_config(30)
    assert (c10.fg_expert, c10.bg_expert, c10.data_filter) == ("n2f", "constant", 1)
    assert (c30.fg_expert, c30.bg_expert, c30.data_filter) == ("n2f", "n2f", 3)
    assert E.method_config("self2seg_default", 30) == s2s.Self2SegConfig()
    assert all(0 < x <= 1 for x in E.LAMBDAS) and len(E.LAMBDAS) == 10


def test_select_lambda_protocols():
    d = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.3, 0.7, 0.5], [0.1, 0.6, 0.55]])
    s = E.select_lambda(d)
    np.testing.assert_array_equal(s["oracle_idx"], [0, 1, 1, 1])
    # patch 0: the others prefer lambda 1 (sums 0.6, 2.1, 1.55); patch 1: (1.3, 1.4, 1.55) -> 2;
    # patch 2: (1.2, 1.5, 1.55) -> 2; patch 3: (1.4, 1.6, 1.5) -> 1
    np.testing.assert_array_equal(s["loo_idx"], [1, 2, 2, 1])
    np.testing.assert_allclose(s["loo"], [0.1, 0.5, 0.5, 0.6])
    assert np.all(s["oracle"] >= s["loo"])
    with pytest.raises(ValueError, match="n_images >= 2"):
        E.select_lambda(d[:1])


def test_chan_vese_sweep_equals_single_calls():
    ps = E.noisy_patches(30, indices=[5, 10])
    lams = (0.02, 0.1)
    masks = E.chan_vese_sweep([p.noisy for p in ps], lams)
    assert masks.shape == (2, 2, 128, 128)
    for i, p in enumerate(ps):
        for j, lam in enumerate(lams):
            one = s2s.chan_vese(p.noisy, lam=lam, max_outer=30, mask_tol=1e-3)
            assert (one == masks[i, j]).mean() > 0.999


def test_sweep_equals_separate_runs_and_shares_first_wstep(key):
    p = E.noisy_patches(30, size=64, indices=[21])[0]
    cfg = s2s.Self2SegConfig(**TINY)
    f, m0, _ = E.shared_start(key, p.noisy, cfg)
    lams = (0.01, 0.03)
    r = E.self2seg_sweep(key, f, m0, lams, config=cfg, batch="map")
    for j, lam in enumerate(lams):
        one = s2s.segment(key, p.noisy, config=cfg.replace(lam=lam))
        np.testing.assert_array_equal(one.init_mask, m0)
        assert (one.mask == r["mask"][j]).mean() > 0.999
        assert one.num_outer == r["num_outer"][j]
    # vmap and map batching give the same masks
    m0j = jnp.asarray(m0, jnp.float32)
    hyp = E._stacked_hyper(cfg, lams)
    sv = alternating.run_scheme_sweep(jax.random.split(key)[1], jnp.asarray(f), m0j, 1 - m0j, m0j,
                                      hyp, st=cfg.static(), batch="vmap")
    assert (np.asarray(sv.mask) > 0.5).shape == r["mask"].shape
    assert ((np.asarray(sv.mask) > 0.5) == r["mask"]).mean() > 0.999


def test_run_level_small(key):
    """Two patches, three lambdas, tiny experts: every method runs, rows are complete, and the
    oracle protocol is never below the honest one."""
    rows = []
    out = E.run_level(30, key=key, methods=("chan_vese", "sequential", "self2seg_default"),
                      lams=(0.01, 0.03, 0.1), indices=[21, 42], size=64,
                      base=s2s.Self2SegConfig(**TINY), on_row=lambda r, m: rows.append((r, m.shape)))
    assert len(out) == 6 and [r for r, _ in rows] == out
    for r, shape in rows:
        assert shape == (3, 64, 64)
        assert len(r["dice"]) == 3 and all(0 <= d <= 1 for d in r["dice"])
        assert r["method"] != "sequential" or len(r["psnr"]) == 3
    for method in ("chan_vese", "sequential", "self2seg_default"):
        d = np.array([r["dice"] for r in out if r["method"] == method])
        s = E.select_lambda(d)
        assert np.all(s["oracle"] >= s["loo"])
        # Chan-Vese needs no training; the others start from a tiny 40-step Noise2Fast here
        assert s["oracle"].mean() > (0.6 if method == "chan_vese" else 0.0), (method, d)
    # resumable: skipping done rows runs nothing
    assert E.run_level(30, key=key, methods=("chan_vese",), lams=(0.01,), indices=[5],
                       skip={("chan_vese", 5)}) == []
