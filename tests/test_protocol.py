"""The committed evaluation protocol (benchmarks/protocols/) and its report: parsing and checks,
lambda selection that never looks at the evaluation split, statistics against SciPy, and a tiny
run whose rows are paired across methods."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import report_protocol as R
import run_protocol
from experiments import protocol as P
from scipy import stats

import self2seg_jax as s2s
from self2seg_jax import metrics

PROTO = Path(__file__).resolve().parents[1] / "benchmarks" / "protocols" / "dsb2018_v2.toml"


@pytest.fixture(scope="module")
def proto():
    return P.load(PROTO)


def test_committed_protocol_is_consistent(proto):
    d = proto.data
    assert sorted(d["tuning_patches"] + d["evaluation_patches"]) == list(range(16))
    assert len(d["noise_seeds"]) >= 3
    for m in proto.methods:
        grid = proto.grid_of(m)
        assert proto.raw["lambda"]["fixed"] in grid
        assert set(grid) <= set(proto.grid)  # baselines get a superset of every Self2Seg grid
    # matched Chan–Vese gets exactly the filter and mu of the Self2Seg reading it is set against
    for level in d["levels"]:
        a = P.method_config(proto, "s2s_cnn_const", level)
        cv = P.method_config(proto, "chan_vese_matched", level)
        assert (cv.data_filter, cv.mu) == (a.data_filter, a.mu)
        assert (cv.fg_expert, cv.bg_expert) == ("constant", "constant")
        assert a.data_filter == (3 if level > 10 else 1)
    assert P.method_config(proto, "s2s_two_cnn", 30).bg_expert == "n2f"
    assert P.method_config(proto, "chan_vese", 50).data_filter == 1
    # every method runs the expert size, Adam step and schedule its rows were run with, pinned
    # in [base] (session 9), whatever the library's defaults are; s2s_library_s9 is session 9's
    # candidate default (16 channels, Adam step 2e-3), evaluated and not adopted
    for m in proto.methods:
        c = P.method_config(proto, m, 30)
        want = (16, 2e-3) if m == "s2s_library_s9" else (32, 1e-3)
        assert (c.net_width, c.learning_rate) == want, m
        assert (c.train_max_steps, c.train_min_steps, c.train_patience, c.crop_batch) == \
            (150, 50, 50, 2), m
    assert P.method_config(proto, "s2s_library", 30) == s2s.Self2SegConfig(crop_batch=2), \
        "s2s_library must be segment()'s default"
    assert P.method_config(proto, "s2s_library_s9", 30) == s2s.Self2SegConfig(
        crop_batch=2, net_width=16, learning_rate=2e-3)


def test_method_may_override_the_expert_schedule(tmp_path):
    import tomllib

    raw = tomllib.loads(PROTO.read_text())
    raw["methods"]["s2s_library"].update(net_width=16, train_max_steps=300)
    path = tmp_path / "p.toml"
    path.write_text(_toml(raw))
    c = P.method_config(P.load(path), "s2s_library", 30)
    assert (c.net_width, c.train_max_steps, c.train_min_steps) == (16, 300, 50)


@pytest.mark.parametrize("edit, match", [
    (lambda r: r["data"].update(tuning_patches=[0, 1], evaluation_patches=[1, 2]), "both splits"),
    (lambda r: r["lambda"].update(grid=[0.1, 0.01, 0.03]), "increasing"),
    (lambda r: r["lambda"].update(fixed=0.07), "fixed lambda"),
    (lambda r: r["methods"]["chan_vese"].update(start="boxes"), "kind/data/start"),
    (lambda r: r["methods"]["chan_vese"].update(colour="red"), "unknown keys"),
    (lambda r: r["report"].update(baselines=["nope"]), "unknown method"),
    (lambda r: r["base"].update(crop_batch=-1), "crop_batch"),
])
def test_bad_protocols_are_refused(tmp_path, edit, match):
    import tomllib

    raw = tomllib.loads(PROTO.read_text())
    edit(raw)
    path = tmp_path / "p.toml"
    path.write_text(_toml(raw))
    with pytest.raises(ValueError, match=match):
        P.load(path)


def _toml(raw: dict) -> str:
    """Minimal TOML writer for the protocol's shapes (tables of scalars and lists)."""
    def val(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = [f"{k} = {val(v)}" for k, v in raw.items() if not isinstance(v, dict)]
    for k, v in raw.items():
        if isinstance(v, dict):
            flat = {a: b for a, b in v.items() if not isinstance(b, dict)}
            lines += [f"[{k}]"] + [f"{a} = {val(b)}" for a, b in flat.items()]
            for a, b in v.items():
                if isinstance(b, dict):
                    lines += [f"[{k}.{a}]"] + [f"{c} = {val(e)}" for c, e in b.items()]
    return "\n".join(lines) + "\n"


def test_missing_or_broken_protocol_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        P.load(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[data\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        P.load(tmp_path / "bad.toml")


# -- selection and statistics -------------------------------------------------------------


def _rows(dice_by_split: dict, lams=(0.01, 0.03, 0.1)):
    """Synthetic rows: ``{(split, patch, seed): dice list}``."""
    return [{"split": s, "patch": p, "seed": k, "lams": list(lams), "dice": list(d),
             "scale": "patch", "init_dice": 0.5, "seconds": 1.0, "start_seconds": 0.0}
            for (s, p, k), d in dice_by_split.items()]


def test_tuned_lambda_comes_from_the_tuning_split_only(proto):
    # tuning patches prefer lam 0.01; evaluation patches would prefer 0.1
    rows = _rows({("tuning", 0, 0): [0.9, 0.5, 0.1], ("tuning", 5, 0): [0.8, 0.7, 0.2],
                  ("evaluation", 1, 0): [0.2, 0.5, 0.9], ("evaluation", 2, 0): [0.3, 0.4, 0.8]})
    s = R.select(rows, proto)
    assert s["tuned_lam"] == 0.01 and s["fixed_lam"] == 0.03
    assert {k: v["tuned"] for k, v in s["images"].items()} == {(1, 0): 0.2, (2, 0): 0.3}
    assert {k: v["oracle"] for k, v in s["images"].items()} == {(1, 0): 0.9, (2, 0): 0.8}
    assert {k: v["fixed"] for k, v in s["images"].items()} == {(1, 0): 0.5, (2, 0): 0.4}
    assert s["n_images"] == 2  # tuning rows are not evaluated


def test_edge_optimum_and_tie_rules():
    assert R.edge_optimum([0.9, 0.5, 0.1]) and R.edge_optimum([0.1, 0.5, 0.9])
    assert not R.edge_optimum([0.9, 0.8995, 0.1])  # flat at the end: not evidence
    assert not R.edge_optimum([0.2, 0.9, 0.1])
    assert R.tuned_index([[0.5, 0.5, 0.1]]) == 0  # ties -> the smaller lambda


def test_statistics_agree_with_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(0.8, 0.05, 12)
    m, h = R.ci95(x)
    lo, hi = stats.t.interval(0.95, 11, loc=x.mean(), scale=stats.sem(x))
    assert m == pytest.approx(x.mean()) and h == pytest.approx((hi - lo) / 2)
    d = rng.normal(0.02, 0.03, 12)
    assert R.wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue)
    assert np.isnan(R.wilcoxon_p(np.zeros(5)))
    assert R.wtl([0.01, 0.001, -0.004, -0.2, 0.005], 0.005) == [2, 2, 1]


def test_per_patch_means_average_seeds_first(proto):
    # patch 1 has three seeds, patch 2 one: the unit is the patch
    images = {(1, 0): {"t": 0.9}, (1, 1): {"t": 0.7}, (1, 2): {"t": 0.8}, (2, 0): {"t": 0.2}}
    assert R.per_patch(images, "t") == {1: pytest.approx(0.8), 2: 0.2}
    assert R.per_patch(images, "t", keep={(1, 0), (2, 0)}) == {1: 0.9, 2: 0.2}


def test_summary_pairs_methods_on_common_images(proto):
    base = {("tuning", 0, 0): [0.5, 0.6, 0.4], ("evaluation", 1, 0): [0.5, 0.6, 0.4],
            ("evaluation", 2, 0): [0.4, 0.5, 0.3], ("evaluation", 3, 0): [0.6, 0.7, 0.5]}
    rows = []
    for method, shift in (("chan_vese", 0.0), ("s2s_default", 0.1)):
        for r in _rows({k: [v + shift for v in d] for k, d in base.items()}):
            rows.append({**r, "method": method, "level": 30.0})
    s = R.summarise(rows, proto)
    lv = s["levels"]["30"]
    assert lv["methods"]["s2s_default"]["tuned"]["mean"] == pytest.approx(0.7)
    (c,) = [c for c in lv["comparisons"] if c["baseline"] == "chan_vese"]
    assert c["self2seg"] == "s2s_default" and c["pairs"] == 3
    assert c["tuned"]["delta"] == pytest.approx(0.1) and c["tuned"]["wtl"] == [3, 0, 0]
    md = R.table(s, {"protocol": "p", "runs": []})
    assert "| 30 | `s2s_default` | `chan_vese` | +0.100 |" in md
    assert "| 30 | `s2s_default` | 1 × 3 | 0.700 ± " in R.readme_table(s)
    assert "+0.100, 3/0/0, p " in R.readme_table(s)


# -- a tiny run ------------------------------------------------------------------------------


def test_tiny_run_rows_are_paired_and_resumable(tmp_path, proto):
    out = tmp_path / "run"
    args = [str(PROTO), "--out", str(out), "--size", "32", "--patches", "0", "1", "--grid",
            "0.01", "0.03", "--seeds", "0", "--levels", "30", "--no-whole",
            "--methods", "chan_vese", "chan_vese_matched"]
    assert run_protocol.main(args) == 0
    rows = [json.loads(x) for x in (out / "rows.jsonl").read_text().splitlines()]
    assert [(r["method"], r["patch"]) for r in rows] == [
        ("chan_vese", 0), ("chan_vese", 1), ("chan_vese_matched", 0), ("chan_vese_matched", 1)]
    assert {r["split"] for r in rows} == {"tuning", "evaluation"}
    # same noisy image for both methods: the same start and the same Dice of it
    ims = P.images(proto, 30, 0, "patch", size=32, indices=[0, 1])
    st = P.starts(proto, ims, 0)
    for r in rows:
        j = [0, 1].index(r["patch"])
        assert r["init_dice"] == pytest.approx(metrics.dice(st.otsu[j], ims.gt[j]), abs=1e-5)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["runs"][0]["smoke"] and len(meta["runs"][0]["protocol_sha256"]) == 64
    # resumable: a second run adds no rows
    assert run_protocol.main(args) == 0
    assert len((out / "rows.jsonl").read_text().splitlines()) == 4
    # deterministic: rerunning a cell reproduces its rows
    again = P.run_cell(proto, "chan_vese", 30, 0, ims, st, grid=(0.01, 0.03))
    assert [r["dice"] for r in again] == [r["dice"] for r in rows[:2]]


def test_readme_block_is_replaced_between_markers(tmp_path):
    f = tmp_path / "README.md"
    f.write_text(f"intro\n{R.BEGIN}\nold table\n{R.END}\noutro\n")
    R.replace_block(f, "| new |\n")
    assert f.read_text() == f"intro\n{R.BEGIN}\n| new |\n{R.END}\noutro\n"
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        R.replace_block(tmp_path / "plain.md", "x")


def test_compare_two_methods_pairs_evaluation_images_at_one_lambda(tmp_path):
    """compare_protocol_rows: only evaluation patches both methods have, at the fixed λ, W/T/L
    with the protocol's tie, Wilcoxon p as SciPy's; tuning patches and unmatched images ignored."""
    import compare_protocol_rows as C

    rows = []
    ev = [1, 2, 3, 4, 6]
    for i, p in enumerate(ev + [0]):  # patch 0 is a tuning patch
        for m, d in (("a", 0.8 + 0.01 * i), ("b", 0.8)):
            rows.append({"method": m, "level": 30.0, "seed": 0, "patch": p, "scale": "patch",
                         "lams": [0.01, 0.03], "dice": [0.1, d]})
    rows.append({"method": "a", "level": 30.0, "seed": 1, "patch": 1, "scale": "patch",
                 "lams": [0.01, 0.03], "dice": [0.1, 0.0]})  # no partner in "b": not paired
    rows.append({"method": "b", "level": 30.0, "seed": 0, "patch": 16, "scale": "whole",
                 "lams": [0.03], "dice": [0.77]})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert C.main([str(tmp_path), "a", "b"]) == 0
    out = json.loads((tmp_path / "compare_a_vs_b.json").read_text())
    lv = out["levels"]["30"]
    a = [0.8 + 0.01 * i for i in range(5)]
    assert lv["pairs"] == 5 and lv["seeds"] == [0] and out["lam"] == 0.03
    assert lv["mean_a"] == pytest.approx(np.mean(a), abs=1e-4) and lv["mean_b"] == 0.8
    assert lv["wtl"] == [4, 1, 0]  # differences 0, .01, .02, .03, .04 with tie 0.005
    assert lv["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, [0.8] * 5).pvalue, abs=1e-3)
    assert out["whole"] == [{"method": "b", "level": 30.0, "seed": 0, "dice": 0.77}]


def test_stop_rules_offline_scores_earlier_stops_from_recorded_iterates(tmp_path):
    """stop_rules_offline: the divergence guard stops at the first growth of the label change
    and scores that iterate (and the one before); the natural stop is the last iterate; the best
    iterate bounds every earlier stop; groups by image name."""
    import stop_rules_offline as S

    def its(dice, change):
        return [{"outer": k + 1, "dice": d, "change": c} for k, (d, c) in
                enumerate(zip(dice, change))]

    shrinking = its([0.6, 0.8, 0.85], [0.2, 0.05, 0.01])  # converging: the guard never fires
    drifting = its([0.78, 0.77, 0.70, 0.55], [0.03, 0.04, 0.07, 0.2])  # fires at iterate 2
    assert S.guard_stop(shrinking) is None
    assert S.scores({"iterations": shrinking})["guard_k_minus_1"] == 0.85
    assert S.guard_stop(drifting) == 1
    sc = S.scores({"iterations": drifting})
    assert {k: sc[k] for k in ("natural", "best_iterate", "guard_k", "guard_k_minus_1")} == {
        "natural": 0.55, "best_iterate": 0.78, "guard_k": 0.77, "guard_k_minus_1": 0.78}
    # a looser mask tolerance stops at the first change at most that large (else the last)
    assert S.tol_stop(drifting, 0.035) == 0 and S.tol_stop(drifting, 0.005) == 3
    assert S.scores({"iterations": shrinking})["tol_0.01"] == 0.85
    assert S.scores({"iterations": shrinking})["tol_0.02"] == 0.85
    rows = [{"config": "default", "image": "syn_n10_128_s0", "iterations": shrinking},
            {"config": "default", "image": "bundled_stack", "iterations": drifting}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert S.main([str(tmp_path)]) == 0
    out = json.loads((tmp_path / "stop_rules.json").read_text())["summary"]
    assert out["default/syn"]["natural"] == 0.85 and out["default/syn"]["guard_hurts"] == 0
    assert out["default/bundled_stack"]["guard_helps"] == 1
    assert out["default/bundled_stack"]["guard_k_minus_1"] == 0.78


def test_start_lock_counts_moves_from_the_start_and_pairs_same_start_rows(proto):
    """start_lock: at the fixed λ, the share of runs ending near their start, the poor-start
    runs' mean final Dice, and the pairing with rows of the same start on the same runs only
    (another start's rows and whole-image rows are left out)."""
    import start_lock as S

    lam = float(proto.raw["lambda"]["fixed"])

    def row(m, patch, init, d, scale="patch"):
        return {"method": m, "level": 30.0, "seed": 0, "patch": patch, "scale": scale,
                "lams": [0.01, lam], "dice": [0.0, d], "init_dice": init,
                "num_outer": [1, 3], "status": [1, 1]}

    rows = [row("s2s_two_cnn", 1, 0.2, 0.22), row("s2s_two_cnn", 2, 0.8, 0.70),
            row("s2s_cnn_const", 1, 0.2, 0.75), row("s2s_cnn_const", 2, 0.8, 0.85),
            row("s2s_library", 1, 0.3, 0.9),  # Otsu start: not paired with the N2F-start rows
            row("s2s_two_cnn", 16, 0.1, 0.9, scale="whole")]
    res = S.analyse(rows, proto, lam, near=0.05, poor=0.5)
    b = res["s2s_two_cnn"]["levels"]["30.0"]
    assert b["runs"] == 2 and b["near_start"] == 0.5
    assert b["mean_abs_move"] == pytest.approx((0.02 + 0.10) / 2, abs=1e-4)
    assert b["poor_start"] == {"runs": 1, "mean_start_dice": 0.2, "mean_dice": 0.22}
    assert b["paired_poor_start"] == {"s2s_cnn_const": {
        "runs": 1, "mean_dice": 0.22, "other_mean_dice": 0.75, "other_higher": 1}}
    assert res["s2s_library"]["levels"]["30.0"]["paired_poor_start"] == {}
    assert "s2s_library_s9" not in res  # no rows, no entry


def test_starts_without_the_denoiser_serve_otsu_methods_only(proto):
    """denoise=False (cells whose methods all start from Otsu of the noisy image): the same data
    and Otsu start as with the denoiser, and a method that needs the Noise2Fast output is
    refused instead of running on something else."""
    ims = P.images(proto, 30, 0, "patch", size=32, indices=[0, 1])
    full, bare = P.starts(proto, ims, 0), P.starts(proto, ims, 0, denoise=False)
    assert bare.den is None and bare.n2f_otsu is None
    for m in ("s2s_library", "chan_vese"):
        assert not P.needs_denoiser(proto, m)
        for a, b in zip(P.method_inputs(proto, m, full), P.method_inputs(proto, m, bare)):
            np.testing.assert_array_equal(a, b)
    assert P.needs_denoiser(proto, "sequential") and P.needs_denoiser(proto, "s2s_two_cnn")
    with pytest.raises(ValueError, match="needs the Noise2Fast start"):
        P.method_inputs(proto, "s2s_two_cnn", bare)
