"""``self2seg_jax.cli.report``: the per-file JSON report, the batch summary and the 'done' line.

The reports are built from hand-made :class:`Self2SegResult` objects (no run, no compilation),
so every field can be checked against a known value.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from self2seg_jax import Self2SegConfig, metrics
from self2seg_jax.api import Self2SegResult
from self2seg_jax.cli import report as R


def make_result(labels, *, num_classes=2, denoised=None, status="max_outer reached"):
    """A :class:`Self2SegResult` with the given labels and a 3-iteration trace."""
    labels = np.asarray(labels, np.int32)
    c = num_classes
    probs = np.stack([(labels == i).astype(np.float32) for i in range(c)])
    den = np.zeros(labels.shape) if denoised is None else denoised
    den = np.asarray(den, np.float32)
    return Self2SegResult(
        labels=labels, probabilities=probs, denoised=den,
        expert_outputs=np.stack([den] * c), energies=np.array([3.5, 2.25, 2.0], np.float32),
        num_outer=3, status=status, mask_changes=np.array([0.1, 0.01, 0.0], np.float32),
        pd_iterations=np.array([120, 40, 10], np.int32),
        train_steps=np.arange(3 * c, dtype=np.int32).reshape(3, c),
        init_labels=np.zeros(labels.shape, np.int32), lam=0.03,
    )


def _report(res, image, config=Self2SegConfig(), **kw):
    args = dict(name="cells", image=image, config=config, seed=4, init_desc="otsu", layout={},
                res=res, warnings=["w1"], timings={"segment_s": 1.23456, "compile_s": 0.5,
                                                   "includes_compilation": True})
    args.update(kw)
    return R.run_report(**args)


# ------------------------------------------------------------------------------- json_safe


def test_json_safe_replaces_non_finite_floats_everywhere():
    obj = {"a": float("nan"), "b": [1.0, float("inf"), (float("-inf"), 2)], "c": {"d": np.nan},
           "e": "nan", "f": None, "g": True, "h": 3, "i": np.float64(np.inf), "j": 0.5}
    out = R.json_safe(obj)
    assert out == {"a": None, "b": [1.0, None, [None, 2]], "c": {"d": None}, "e": "nan",
                   "f": None, "g": True, "h": 3, "i": None, "j": 0.5}
    json.dumps(out, allow_nan=False)  # strict JSON
    assert R.json_safe(2.5) == 2.5 and R.json_safe(float("nan")) is None
    assert obj["a"] != obj["a"]  # the input is not modified


# ------------------------------------------------------------------------------- run_report


def test_run_report_fields():
    labels = np.zeros((8, 10), np.int32)
    labels[2:5, 3:7] = 1  # 12 of 80 pixels
    image = np.linspace(0, 1, 80, dtype=np.float32).reshape(8, 10)
    cfg = Self2SegConfig(lam=0.02, progress=True)
    rep = _report(make_result(labels), image, cfg, layout={"volume": True})
    assert rep["input"] == "cells" and rep["shape"] == [8, 10] and rep["dtype"] == "float32"
    opts = dataclasses.asdict(cfg)
    del opts["progress"]
    assert rep["options"] == opts and "progress" not in rep["options"]
    assert rep["seed"] == 4 and rep["init"] == "otsu" and rep["layout"] == {"volume": True}
    for k in ("self2seg_jax", "jax", "jaxlib", "numpy", "python", "platform", "backend",
              "device", "device_count"):
        assert rep["versions"][k], k
    assert rep["status"] == "max_outer reached" and rep["num_outer"] == 3
    assert rep["energies"] == [3.5, 2.25, 2.0]
    assert rep["mask_changes"] == pytest.approx([0.1, 0.01, 0.0])
    assert rep["pd_iterations"] == [120, 40, 10]
    assert rep["train_steps"] == [[0, 1], [2, 3], [4, 5]]
    assert rep["foreground_fraction"] == pytest.approx(12 / 80)
    assert rep["num_classes"] == 2 and rep["class_fractions"] == pytest.approx([68 / 80, 12 / 80])
    assert rep["warnings"] == ["w1"]
    assert rep["timings"]["compile_s"] == 0.5 and rep["seconds"] == 1.235 and rep["lam"] == 0.03
    # plain Python types only: the report is JSON as it is
    text = json.dumps(rep, allow_nan=False)
    assert json.loads(text) == rep
    for k in ("energies", "mask_changes"):
        assert all(type(v) is float for v in rep[k])
    assert all(type(v) is int for v in rep["pd_iterations"])


def test_run_report_multiclass_and_nan_energy():
    labels = np.array([[0, 1, 2, 2], [2, 2, 1, 0]] * 4, np.int32)  # 8x4: 8 zeros, 8 ones, 16 twos
    res = make_result(labels, num_classes=3)
    res = dataclasses.replace(res, energies=np.array([1.0, np.nan, 0.5], np.float32))
    rep = _report(res, np.ones((8, 4, 3), np.uint8) * np.arange(3, dtype=np.uint8),
                  layout={"channel_axis": -1})
    assert rep["num_classes"] == 3 and rep["shape"] == [8, 4, 3] and rep["dtype"] == "uint8"
    counts = np.bincount(labels.ravel(), minlength=3) / labels.size
    assert rep["class_fractions"] == pytest.approx(counts.tolist())
    assert rep["foreground_fraction"] == pytest.approx(1 - counts[0])
    assert rep["train_steps"] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert math.isnan(rep["energies"][1])
    safe = R.json_safe(rep)
    assert safe["energies"] == [1.0, None, 0.5]
    json.dumps(safe, allow_nan=False)


# ------------------------------------------------------------------------------- metrics_report


def test_metrics_report_against_metrics():
    rng = np.random.default_rng(0)
    gt = np.zeros((16, 16), bool)
    gt[4:12, 4:12] = True
    labels = np.zeros((16, 16), np.int32)
    labels[5:12, 4:13] = 1
    clean = (50 + 100 * gt).astype(np.float32)
    image = clean + 20 * rng.standard_normal(clean.shape).astype(np.float32)
    den = clean + 5 * rng.standard_normal(clean.shape).astype(np.float32)
    res = make_result(labels, denoised=den)
    assert R.metrics_report(res, image) == {}
    out = R.metrics_report(res, image, gt=gt)
    assert sorted(out) == ["dice", "iou"]
    inter, a, b = (labels.astype(bool) & gt).sum(), labels.sum(), gt.sum()
    assert out["dice"] == pytest.approx(2 * inter / (a + b))
    assert out["iou"] == pytest.approx(inter / (labels.astype(bool) | gt).sum())
    out = R.metrics_report(res, image, clean=clean)
    assert sorted(out) == ["psnr_denoised", "psnr_input", "ssim_denoised"]
    assert out["psnr_denoised"] == pytest.approx(metrics.psnr(den, clean, data_range=100.0))
    assert out["psnr_input"] == pytest.approx(metrics.psnr(image, clean, data_range=100.0))
    assert out["ssim_denoised"] == pytest.approx(metrics.ssim(den, clean, data_range=100.0))
    assert out["psnr_denoised"] > out["psnr_input"]
    assert all(type(v) is float for v in out.values())


def test_metrics_report_constant_clean_and_perfect_denoising():
    labels = np.eye(16, dtype=np.int32)
    clean = np.full((16, 16), 3.0, np.float32)
    image = clean + np.linspace(-1, 1, 256, dtype=np.float32).reshape(16, 16)
    out = R.metrics_report(make_result(labels, denoised=clean), image, clean=clean)
    assert out["psnr_denoised"] == math.inf  # perfect: inf, reported as null in JSON
    assert out["psnr_input"] == pytest.approx(metrics.psnr(image, clean, data_range=1.0))
    assert R.json_safe(out)["psnr_denoised"] is None


# ------------------------------------------------------------------------------- summaries


def test_short_and_done_line():
    labels = np.zeros((8, 8), np.int32)
    labels[:2] = 1
    rep = _report(make_result(labels), np.arange(64, dtype=np.float32).reshape(8, 8))
    rep["outputs"] = {"mask": "o/cells_mask.tif"}
    s = R.short(rep)
    assert list(s) == [k for k in R.SHORT_KEYS if k in rep]
    assert s == {"status": "max_outer reached", "num_outer": 3, "lam": 0.03, "seconds": 1.235,
                 "foreground_fraction": 0.25, "warnings": ["w1"],
                 "outputs": {"mask": "o/cells_mask.tif"}}
    assert "energies" not in s and "options" not in s and "dice" not in s
    line = R.done_line("[1/2] ", "in/cells.tif", rep)
    assert line == ("[1/2] in/cells.tif: done in 1.2 s (incl. compilation), 3 outer iterations "
                    "(max_outer reached), foreground 25.0%")
    rep.update(dice=0.91234, psnr_denoised=27.456)
    rep["timings"]["includes_compilation"] = False
    s = R.short(rep)
    assert s["dice"] == 0.91234 and s["psnr_denoised"] == 27.456
    assert R.done_line("", "c.tif", rep) == ("c.tif: done in 1.2 s, 3 outer iterations "
                                             "(max_outer reached), foreground 25.0%, "
                                             "Dice 0.9123, PSNR 27.46 dB")
    rep["dice"] = None  # e.g. an undefined metric: no 'Dice n/a' crash
    assert "Dice" not in R.done_line("", "c.tif", rep)
    rep["options"]["lam"] = "auto"  # the chosen value is named only when it was chosen
    assert ", lam 0.03 (auto), foreground" in R.done_line("", "c.tif", rep)
