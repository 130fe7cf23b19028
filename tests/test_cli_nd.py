"""CLI routing of colour images, multi-page stacks and several classes (issue 5)."""

from __future__ import annotations

import json

import numpy as np
import tifffile
from PIL import Image

from self2seg_jax import cli

CONST = ["--fg-expert", "constant", "--bg-expert", "constant", "--max-outer", "2",
         "--pd-max-iter", "300", "--no-init-denoise", "--lam", "0.05", "--quiet"]


def _run(argv, capfd):
    rc = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, out, err


def _errors(err):
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def test_colour_png_three_classes(tmp_path, capfd):
    rng = np.random.default_rng(0)
    xx = np.mgrid[:32, :48][1]
    lab = np.digitize(xx, [16, 32])
    rgb = np.stack([lab * 100, 200 - lab * 100, np.full_like(lab, 90)], -1) + 15 * rng.standard_normal((32, 48, 3))
    src = tmp_path / "rgb.png"
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(src)
    out = tmp_path / "out"
    # a colour file needs the flag: one-line error naming it
    rc, _, err = _run(["segment", src, "-o", out, *CONST], capfd)
    assert rc == 2 and len(_errors(err)) == 1 and "--channel-axis" in _errors(err)[0], err
    rc, _, err = _run(["segment", src, "-o", out, "--channel-axis", "-1", "--classes", "3", *CONST], capfd)
    assert rc == 0, err
    labels = tifffile.imread(out / "rgb_labels.tif")
    den = tifffile.imread(out / "rgb_denoised.tif")
    assert labels.shape == (32, 48) and den.shape == (32, 48, 3)
    agree = max(np.mean(labels == lab), np.mean(labels == 2 - lab))
    assert agree > 0.95
    rep = json.loads((out / "rgb_report.json").read_text())
    assert rep["num_classes"] == 3 and rep["layout"] == {"channel_axis": -1}
    assert (out / "rgb_overlay.png").exists()


def test_multipage_tiff_volume_with_gt(tmp_path, capfd):
    rng = np.random.default_rng(1)
    z, y, x = np.indices((10, 24, 24))
    gt = (z - 5) ** 2 / 9 + (y - 12) ** 2 / 36 + (x - 12) ** 2 / 36 < 1
    vol = (0.3 + 0.4 * gt + 0.1 * rng.standard_normal(gt.shape)).astype(np.float32)
    src, gtp = tmp_path / "vol.tif", tmp_path / "vol_gt.tif"
    tifffile.imwrite(src, vol)
    tifffile.imwrite(gtp, gt.astype(np.uint8))
    out = tmp_path / "out"
    rc, _, err = _run(["segment", src, "-o", out, *CONST], capfd)
    assert rc == 2 and "--volume" in _errors(err)[0], err
    rc, _, err = _run(["segment", src, "-o", out, "--volume", "--spacing", "2,1,1", "--gt", gtp, *CONST], capfd)
    assert rc == 0, err
    mask = tifffile.imread(out / "vol_mask.tif")
    assert mask.shape == gt.shape
    rep = json.loads((out / "vol_report.json").read_text())
    assert rep["dice"] > 0.9 and rep["layout"] == {"volume": True, "spacing": [2.0, 1.0, 1.0]}
    # bad spacing: one-line error
    rc, _, err = _run(["segment", src, "-o", tmp_path / "o2", "--volume", "--spacing", "1,1", *CONST], capfd)
    assert rc == 2 and "spacing" in _errors(err)[0], err
