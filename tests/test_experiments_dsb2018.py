"""``experiments.dsb2018`` (benchmarks/experiments/dsb2018.py): small, fast version of the
DSB2018 reproduction (issue 3; the full run is benchmarks/reproduce_dsb2018.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from experiments import dsb2018 as E

import self2seg_jax as s2s
from self2seg_jax import alternating, metrics

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
    c10, c30, c50 = E.paper_config(10), E.paper_config(30), E.paper_config(50)
    assert (c10.fg_expert, c10.bg_expert, c10.data_filter) == ("n2f", "constant", 1)
    assert (c30.fg_expert, c30.bg_expert, c30.data_filter) == ("n2f", "constant", 3)
    assert c50 == c30
    assert E.method_config("self2seg_default", 30) == s2s.Self2SegConfig()
    assert E.method_config("self2seg_default", 10) == c10  # why it is an alias at noise 10
    assert E.method_config("self2seg_cvstart", 30) == c30  # same config, other start
    # the other reading of the paper at 30/50: a second Noise2Fast expert, still filtered
    n10, n50 = E.method_config("self2seg_n2fbg", 10), E.method_config("self2seg_n2fbg", 50)
    assert (n10.fg_expert, n10.bg_expert, n10.data_filter) == ("n2f", "n2f", 1)
    assert (n50.fg_expert, n50.bg_expert, n50.data_filter) == ("n2f", "n2f", 3)
    bs10, bs30 = E.method_config("self2seg_bs", 10), E.method_config("self2seg_bs", 30)
    assert bs10 == n10.replace(data_term="blind_spot")
    assert bs30 == E.method_config("self2seg_n2fbg", 30).replace(data_term="blind_spot")
    assert E.method_lambdas("self2seg_bs", 30) == E.FILTERED_LAMBDAS
    assert E.method_lambdas("self2seg_bs", 10) == E.LAMBDAS
    with pytest.raises(ValueError, match="not a Self2Seg method"):
        E.method_config("self2seg_cbg", 30)
    for grid in (E.LAMBDAS, E.FILTERED_LAMBDAS):
        assert all(0 < x <= 1 for x in grid) and len(grid) == 10 and 0.03 in grid
        assert list(grid) == sorted(set(grid))
    # filtered energies get the lower grid, everything else the first one
    assert E.method_lambdas("self2seg", 30) == E.FILTERED_LAMBDAS
    assert E.method_lambdas("self2seg_n2fbg", 50) == E.FILTERED_LAMBDAS
    for m, lev in (("self2seg", 10), ("self2seg_n2fbg", 10), ("chan_vese", 50), ("sequential", 30),
                   ("self2seg_default", 30)):
        assert E.method_lambdas(m, lev) == E.LAMBDAS, (m, lev)
    with pytest.raises(ValueError, match="unknown method"):
        E.method_lambdas("denoiseg", 30)


def _load_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_dsb2018.py"
    spec = importlib.util.spec_from_file_location("reproduce_dsb2018", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reproduce_script_merges_lambda_runs_and_reports(tmp_path):
    """Rows of one (level, method, patch) from runs over different lambda subsets combine into
    the method's grid; only the missing lambdas are run again; the report uses merged rows."""
    import json

    R = _load_script()
    grid = E.FILTERED_LAMBDAS
    old = [x for x in E.LAMBDAS]  # a first run on the unfiltered grid
    rows = []
    for patch in (0, 1, 2):
        dice_old = [0.5 + 0.01 * patch - 0.001 * i for i in range(len(old))]
        rows.append({"level": 30.0, "convention": "std255", "method": "self2seg", "patch": patch,
                     "lams": old, "dice": dice_old, "seconds": 100.0, "init_dice": 0.4})
    miss = R.missing(rows, 30.0, "self2seg", 0, grid)
    assert miss == (0.0005, 0.001, 0.002, 0.003)
    assert R.merged(rows, 30.0, "self2seg", grid) == {}  # nothing complete yet
    for patch in (0, 1):  # patch 2 stays incomplete
        rows.append({"level": 30.0, "convention": "std255", "method": "self2seg", "patch": patch,
                     "lams": list(miss), "dice": [0.9, 0.8, 0.7, 0.6], "seconds": 40.0,
                     "init_dice": 0.4})
    m = R.merged(rows, 30.0, "self2seg", grid)
    assert sorted(m) == [0, 1]
    assert [e[0] for e in m[0]] == list(grid)
    assert [e[1] for e in m[0]][:4] == [0.9, 0.8, 0.7, 0.6]
    assert m[1][4][1] == pytest.approx(0.51)  # lambda 0.005 from the first run
    assert R.missing(rows, 30.0, "self2seg", 0, grid) == ()
    # mask files of different grids never collide
    assert R.mask_path(tmp_path, rows[0]) != R.mask_path(tmp_path, rows[3])
    # the noise-10 aliases borrow self2seg's rows; the report picks merged rows only
    r10 = dict(rows[0], level=10.0)
    assert R._rows_by([r10], 10.0, "self2seg_default")[0]["alias_of"] == "self2seg"
    assert R._rows_by([r10], 30.0, "self2seg_default") == []
    assert R._rows_by([r10], 10.0, "self2seg_n2fbg") == []  # a different config at noise 10
    for patch in (0, 1):  # a baseline on the unfiltered grid, for the paired table
        rows.append({"level": 30.0, "convention": "std255", "method": "sequential", "patch": patch,
                     "lams": list(E.LAMBDAS), "dice": [0.7] * 10, "seconds": 1.0, "init_dice": 0.4})
    out = tmp_path / "res"
    out.mkdir()
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    class Args:
        lams = None
        convention = "std255"

    Args.out = out
    R.report(Args)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary) == ["n30/self2seg", "n30/sequential"]
    s = summary["n30/self2seg"]
    assert s["patches"] == [0, 1] and s["oracle_lams"] == [0.0005, 0.0005]
    assert s["oracle_mean"] == pytest.approx(0.9)
    # a 10-lambda sweep's time from a 10-lambda row (100 s) and a 4-lambda row (40 s -> 100 s)
    assert s["seconds_per_patch"] == pytest.approx(100.0)
    table = (out / "table.md").read_text()
    assert "Self2Seg (paper config)" in table
    # paired: oracle 0.9 vs 0.7 on both patches; LOO: each patch gets the other's best (0.0005)
    assert "| 30 | self2seg | sequential (2) | +0.200 | 2/0/0 | +0.200 | 2/0/0 | +0.500 |" in table


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
    cfg = s2s.Self2SegConfig(**TINY, init_denoise=True)  # segment's start = the shared start
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
    hyp = E.stacked_hyper(cfg, lams)
    sv = alternating.run_sweep(jax.random.split(key)[1], jnp.asarray(f), jnp.stack([1 - m0j, m0j]),
                               m0j.astype(jnp.int32), hyp, spec=cfg.spec(), batch="vmap")
    assert (np.asarray(sv.labels) > 0).shape == r["mask"].shape
    assert ((np.asarray(sv.labels) > 0) == r["mask"]).mean() > 0.999


def test_run_level_small(key):
    """Two patches, three lambdas, tiny experts: every method runs, rows are complete, and the
    oracle protocol is never below the honest one."""
    rows = []
    out = E.run_level(30, key=key, methods=("chan_vese", "sequential", "self2seg_default"),
                      lams=(0.01, 0.03, 0.1), indices=[21, 42], size=64,
                      base=s2s.Self2SegConfig(**TINY),
                      on_row=lambda r, m: rows.append((r, m)))
    assert len(out) == 6 and [r for r, _ in rows] == out
    gts = {p.index: p for p in E.noisy_patches(30, size=64, indices=[21, 42])}
    for r, masks in rows:
        assert masks.shape == (3, 64, 64) and masks.dtype == bool
        p = gts[r["patch"]]
        # the recorded Dice is that of the masks handed out, against this patch's truth
        np.testing.assert_allclose(r["dice"], [metrics.dice(m, p.gt) for m in masks])
        if r["method"] == "sequential":  # the stand-alone denoiser removes noise
            assert len(r["psnr"]) == 3
            assert r["psnr"][0] > metrics.psnr(p.noisy, p.clean, data_range=255.0) + 3.0
    cv = np.array([r["dice"] for r in out if r["method"] == "chan_vese"])
    # Chan-Vese needs no training: at noise 30 it finds these patches' nuclei
    assert E.select_lambda(cv)["oracle"].mean() > 0.6, cv
    # resumable: skipping done rows runs nothing
    assert E.run_level(30, key=key, methods=("chan_vese",), lams=(0.01,), indices=[5],
                       skip={("chan_vese", 5)}) == []


def test_run_level_cvstart_uses_chan_vese_start(key):
    """``self2seg_cvstart`` starts from Otsu of the noisy patch (Chan–Vese's start), not the
    shared Noise2Fast start, and equals a direct sweep from that mask."""
    from self2seg_jax.initialisation import otsu_threshold

    base = s2s.Self2SegConfig(**TINY)
    (row,) = E.run_level(30, key=key, methods=("self2seg_cvstart",), lams=(0.02,), indices=[21],
                         size=64, base=base)
    p = E.noisy_patches(30, size=64, indices=[21])[0]
    f = s2s.api.normalise(s2s.api.validate_image(p.noisy)[0], base.normalise)[0]
    m0 = f > otsu_threshold(f)
    assert row["init_dice"] == pytest.approx(s2s.metrics.dice(m0, p.gt))
    assert row["start_seconds"] == 0.0
    direct = E.self2seg_sweep(key, f, m0, (0.02,),
                              config=E.method_config("self2seg_cvstart", 30, base), batch="map")
    assert row["dice"][0] == pytest.approx(s2s.metrics.dice(direct["mask"][0], p.gt))
    _, shared, _ = E.shared_start(key, p.noisy, base)
    assert not np.array_equal(shared, m0)  # the two starts differ on this patch
