"""Behaviour preserved across the redesign (issue 12): the golden runs of
``tests/golden/make_golden.py``, recorded on the code before the redesign (commit 03caa6b),
rerun with the current code: same keys, same labels, same number of outer iterations, same
energies up to float32 round-off, same ``relaxed_mask`` gradients.

Four documented differences, the first three measured when the redesign landed:

* **mu for multi-class / colour / volume runs.** The one scheme gives the reference term the
  same meaning for every class count (``mu/2 (v - v_R)^2`` for two classes, ``mu/4 ||u - u_R||^2``
  on the simplex, which equals it for C = 2). Before, runs that went through the multi-class
  module (C > 2, colour, volumes) used ``mu/2 ||u - u_R||^2``, i.e. twice the weight. With
  ``mu`` doubled the old results are reproduced exactly (``MU_DOUBLED`` cases below).
* **colour (C = 2):** solved as the two-class (box) problem instead of the equivalent simplex
  problem: same minimiser, another float path; 1 of 1024 pixels differs.
* **three_class_boxes:** box starts now start every pixel outside the boxes as background
  (the two-class rule, which the two-class goldens keep) instead of ``1/C`` for every class.
  With the old start (patched in) and ``mu`` doubled the old labels were reproduced up to 2 of
  2304 pixels; the new start is much better on this image (per-class Dice against the known
  regions 0.92 / 0.75 / 1.00 instead of 0.22 / 0.34 / 1.00), which the test asserts.
* **the stand-alone Noise2Fast denoiser** (``init_denoise`` starts) trains on the whole image
  with at least 400 steps since issue 15 (``experts.denoiser_config``); the goldens were made
  with the experts' own schedule, so the comparison patches the floor out.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import self2seg_jax as s2s

HERE = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location("make_golden", HERE / "make_golden.py")
make_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_golden)

GOLDEN = dict(np.load(HERE / "golden.npz"))
CASES = sorted({k.split("/")[0] for k in GOLDEN} - {"relaxed_mask", "three_class_boxes"})
MU_DOUBLED = {"volume": {"mu": 0.02}, "three_class_otsu_const": {"mu": 0.02}}
ALLOWED_PIXELS = {"colour": 2}


@pytest.mark.parametrize("name", CASES)
def test_golden_case(name, monkeypatch):
    # the stand-alone denoiser's schedule floor (issue 15) is patched out: the goldens were made
    # when the denoiser trained with the experts' own schedule (their NET settings)
    monkeypatch.setattr(s2s.experts, "denoiser_config", lambda cfg: cfg)
    got = make_golden.record([name], overrides=MU_DOUBLED)
    labels, want = got[f"{name}/labels"], GOLDEN[f"{name}/labels"]
    assert labels.shape == want.shape
    differing = int(np.sum(labels != want))
    assert differing <= ALLOWED_PIXELS.get(name, 0), f"{name}: {differing} pixels changed label"
    assert int(got[f"{name}/num_outer"]) == int(GOLDEN[f"{name}/num_outer"])
    # Cases that moved from the simplex to the box parameterisation take another float path.
    # The others: float32 round-off, which differs between CPU kinds (the goldens were recorded
    # on an Intel Xeon; on an AMD EPYC linear_boxes' energies differ by 3e-5 relative).
    rtol = 1e-3 if name in ALLOWED_PIXELS or name in MU_DOUBLED else 1e-4
    np.testing.assert_allclose(got[f"{name}/energies"], GOLDEN[f"{name}/energies"], rtol=rtol)


def test_golden_three_class_boxes_new_start_is_better():
    n = 48
    yy, xx = np.mgrid[:n, :n]
    truth = np.zeros((n, n), int)
    truth[(yy - n * 0.3) ** 2 + (xx - n * 0.3) ** 2 < (n * 0.22) ** 2] = 1
    truth[(yy - n * 0.68) ** 2 + (xx - n * 0.68) ** 2 < (n * 0.24) ** 2] = 2
    got = make_golden.record(["three_class_boxes"])["three_class_boxes/labels"]
    old = GOLDEN["three_class_boxes/labels"]
    dice = lambda lab: [s2s.metrics.dice(lab == i, truth == i) for i in range(3)]  # noqa: E731
    new_d, old_d = dice(got), dice(old)
    assert old_d[0] < 0.3 and old_d[1] < 0.4  # the recorded failure of the old start
    assert new_d[0] > 0.85 and new_d[1] > 0.7 and new_d[2] > 0.99, new_d


def test_golden_relaxed_mask_gradients():
    got = make_golden.relaxed_mask_grads()
    for k, v in got.items():
        np.testing.assert_allclose(v, GOLDEN[f"relaxed_mask/{k}"], rtol=1e-4, atol=1e-6, err_msg=k)
