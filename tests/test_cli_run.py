"""``self2seg_jax.cli.run``: the ``segment`` and ``demo`` commands end to end, in temporary
folders (including colour, several classes and multi-page TIFF volumes).

Everything is tiny (32x32 images). Runs with CNN experts all use ONE static configuration
(:data:`CHEAP_TOML`) and with constant experts ONE other (:data:`CONST`), so each pytest worker
compiles each program at most once per image shape. Most tests call ``cli.main`` in-process; a
few go through ``python -m self2seg_jax.cli`` in a subprocess (stdout purity, one-line errors).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from cli_helpers import CHEAP_TOML, assert_one_line_error, error_lines, files, run
from PIL import Image

from self2seg_jax import cli

SIZE = 32


# Constant experts (Chan-Vese): compiles in a second or two; used for the plumbing tests.
CONST = ["--fg-expert", "constant", "--bg-expert", "constant", "--max-outer", "2",
         "--pd-max-iter", "300", "--no-init-denoise", "--lam", "0.05"]

OUTPUT_SUFFIXES = ("_mask.tif", "_denoised.tif", "_overlay.png", "_report.json")


def blob(seed=0, size=SIZE, noise=0.08):
    """``(noisy float32, clean float32, gt bool)``: a bright disc on a dark background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    gt = (yy - size / 2) ** 2 + (xx - size / 2 + 1) ** 2 < (size / 4) ** 2
    clean = (0.3 + 0.4 * gt).astype(np.float32)
    return (clean + noise * rng.standard_normal((size, size))).astype(np.float32), clean, gt


def write_blob(folder, name="img.tif", seed=0, size=SIZE):
    noisy, clean, gt = blob(seed, size)
    p = folder / name
    if p.suffix == ".npy":
        np.save(p, noisy)
    elif p.suffix in (".png", ".jpg"):
        Image.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8)).save(p)
    else:
        tifffile.imwrite(p, noisy)
    return p


def dice(m, gt):
    m = np.asarray(m) > 0
    return 2 * np.logical_and(m, gt).sum() / (m.sum() + gt.sum())


@pytest.fixture(scope="module")
def cheap_toml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "cheap.toml"
    p.write_text(CHEAP_TOML)
    return p


# ------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def n2f_run(tmp_path_factory, cheap_toml):
    """One CNN-expert run with --gt, --clean and --json (shared by several tests)."""
    import contextlib
    import io as pyio

    d = tmp_path_factory.mktemp("n2f")
    noisy, clean, gt = blob(1)
    tifffile.imwrite(d / "cells.tif", noisy)
    tifffile.imwrite(d / "cells_gt.tif", gt.astype(np.uint8) * 255)
    np.save(d / "cells_clean.npy", clean)
    out, err = pyio.StringIO(), pyio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in [
            "segment", d / "cells.tif", "-o", d / "out", "--config", cheap_toml, "--seed", "3",
            "--gt", d / "cells_gt.tif", "--clean", d / "cells_clean.npy", "--json"]])
    return dict(rc=rc, out=out.getvalue(), err=err.getvalue(), dir=d, gt=gt, clean=clean)


def test_segment_end_to_end(n2f_run):
    r = n2f_run
    assert r["rc"] == 0, r["err"]
    out = r["dir"] / "out"
    assert files(out) == sorted(f"cells{s}" for s in OUTPUT_SUFFIXES)
    mask = tifffile.imread(out / "cells_mask.tif")
    assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 1}
    den = tifffile.imread(out / "cells_denoised.tif")
    assert den.dtype == np.float32 and den.shape == (SIZE, SIZE) and np.isfinite(den).all()
    with Image.open(out / "cells_overlay.png") as im:  # the default figure: the overlay
        assert im.format == "PNG"
        overlay = np.asarray(im)
    from self2seg_jax import viz
    np.testing.assert_array_equal(overlay, viz.overlay_rgb(
        tifffile.imread(r["dir"] / "cells.tif"), mask, gt=r["gt"]))
    rep = json.loads((out / "cells_report.json").read_text())
    assert rep["options"]["net_width"] == 8 and rep["options"]["n_average"] == 2
    assert rep["options"]["init_denoise"] is False and "progress" not in rep["options"]
    assert rep["seed"] == 3 and rep["init"] == "otsu"
    for k in ("self2seg_jax", "jax", "jaxlib", "python", "device", "backend"):
        assert rep["versions"][k]
    assert 1 <= rep["num_outer"] <= 2
    n = rep["num_outer"]
    assert len(rep["energies"]) == n and len(rep["pd_iterations"]) == n
    assert len(rep["train_steps"]) == n and len(rep["mask_changes"]) == n
    assert all(len(s) == 2 for s in rep["train_steps"])  # one count per class expert
    assert rep["timings"]["segment_s"] > 0 and "write_s" in rep["timings"]
    assert rep["timings"]["compile_s"] >= 0 and "read_s" in rep["timings"]
    assert rep["num_classes"] == 2 and rep["layout"] == {}
    for k in ("dice", "iou", "psnr_denoised", "psnr_input", "ssim_denoised"):
        assert isinstance(rep[k], float), k
    assert rep["dice"] > 0.8, rep["dice"]
    gt = r["gt"]
    assert rep["dice"] == pytest.approx(dice(mask, gt))
    assert rep["foreground_fraction"] == pytest.approx(mask.mean())
    assert rep["psnr_denoised"] > rep["psnr_input"]
    assert rep["outputs"] == {k: str(out / f"cells_{k}{s}") for k, s in (
        ("mask", ".tif"), ("denoised", ".tif"), ("overlay", ".png"), ("report", ".json"))}


def test_segment_json_stdout_is_only_json(n2f_run):
    r = n2f_run
    summary = json.loads(r["out"])  # the whole of stdout is one JSON document
    assert summary["failed"] == 0 and summary["ok"] == 1
    (res,) = summary["results"]
    assert res["ok"] and res["dice"] > 0.8 and "psnr_denoised" in res
    assert res["outputs"]["mask"].endswith("cells_mask.tif")
    # progress went to stderr, one line per outer iteration
    assert "cells: outer 1" in r["err"]
    assert "error" not in r["err"]


def test_demo(tmp_path, capfd, cheap_toml):
    rc, out, err = run(["demo", "-o", tmp_path / "d1", "--size", SIZE, "--config", cheap_toml,
                        "--json"], capfd)
    assert rc == 0, err
    res = json.loads(out)
    assert 0 <= res["dice"] <= 1 and res["dice"] > 0.3
    assert res["psnr_denoised"] > res["psnr_noisy"]
    assert files(tmp_path / "d1") == sorted(
        ["demo_noisy.tif"] + [f"demo{s}" for s in OUTPUT_SUFFIXES])
    rep = json.loads((tmp_path / "d1" / "demo_report.json").read_text())
    assert rep["shape"] == [SIZE, SIZE] and "dice" in rep and "psnr_denoised" in rep
    assert rep["dice"] == res["dice"]
    assert tifffile.imread(tmp_path / "d1" / "demo_noisy.tif").shape == (SIZE, SIZE)
    with Image.open(tmp_path / "d1" / "demo_overlay.png") as im:  # the demo: the overview
        assert im.size[0] > 3 * im.size[1]  # four panels side by side
    # plain output: Dice and PSNR on stdout; existing outputs are not replaced
    rc, out, err = run(["demo", "-o", tmp_path / "d2", "--size", SIZE, "--config", cheap_toml,
                        "--quiet"], capfd)
    assert rc == 0 and "Dice" in out and "PSNR" in out and err == ""
    before = {n: (tmp_path / "d2" / n).read_bytes() for n in files(tmp_path / "d2")}
    rc, out, err = run(["demo", "-o", tmp_path / "d2", "--size", SIZE, "--config", cheap_toml],
                       capfd)
    assert_one_line_error(rc, err, "exists", "--overwrite")
    assert {n: (tmp_path / "d2" / n).read_bytes() for n in files(tmp_path / "d2")} == before


def test_formats_png_mask_and_quiet(tmp_path, capfd):
    """8-bit PNG, JPEG, .npy and 16-bit TIFF inputs in one batch; --png masks; --quiet."""
    noisy, _, gt = blob(2)
    paths = [write_blob(tmp_path, "a.png"), write_blob(tmp_path, "b.jpg"),
             write_blob(tmp_path, "c.npy")]
    p16 = tmp_path / "d16.tif"
    tifffile.imwrite(p16, (np.clip(noisy, 0, 1) * 60000).astype(np.uint16))
    paths.append(p16)
    out = tmp_path / "out"
    rc, stdout, err = run(["segment", *paths, "-o", out, "--png", "--quiet"] + CONST, capfd)
    assert rc == 0, err
    assert stdout == "" and err == ""
    for p in paths:
        with Image.open(out / f"{p.stem}_mask.png") as im:
            assert im.format == "PNG"
            m = np.asarray(im)
        assert m.dtype == np.uint8 and m.shape == (SIZE, SIZE) and set(np.unique(m)) <= {0, 1}
        assert (out / f"{p.stem}_denoised.tif").exists()
        assert not (out / f"{p.stem}_mask.tif").exists()
        assert dice(m, gt) > 0.8, (p, dice(m, gt))
    rep = json.loads((out / "d16_report.json").read_text())
    assert rep["dtype"] == "uint16"


def test_figure_kinds(tmp_path, capfd):
    """--figure none writes no figure (and the report lists none); overview: four panels."""
    src = write_blob(tmp_path, "a.tif")
    rc, _, err = run(["segment", src, "-o", tmp_path / "none", "--figure", "none", "--quiet"]
                     + CONST, capfd)
    assert rc == 0, err
    assert files(tmp_path / "none") == ["a_denoised.tif", "a_mask.tif", "a_report.json"]
    rep = json.loads((tmp_path / "none" / "a_report.json").read_text())
    assert "overlay" not in rep["outputs"]
    rc, _, err = run(["segment", src, "-o", tmp_path / "ov", "--figure", "overview", "--quiet"]
                     + CONST, capfd)
    assert rc == 0, err
    with Image.open(tmp_path / "ov" / "a_overlay.png") as im:
        assert im.size[0] > 3 * im.size[1]
    rc, _, err = run(["segment", src, "-o", tmp_path / "bad", "--figure", "pdf"] + CONST, capfd)
    assert rc == 2 and "--figure" in err


def test_batch_with_bad_files_continues(tmp_path, capfd):
    good1 = write_blob(tmp_path, "good1.tif", 0)
    bad = tmp_path / "bad.npy"
    a = blob(0)[0]
    a[1, 1] = np.nan
    np.save(bad, a)
    good2 = write_blob(tmp_path, "good2.tif", 1)
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    rc, stdout, err = run(["segment", good1, bad, good2, missing, "-o", out, "--json"] + CONST,
                          capfd)
    assert rc == 2
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 2 and str(bad) in lines[0] and str(missing) in lines[1]
    assert "2 of 4 files done, 2 failed" in err
    summary = json.loads(stdout)
    assert [r["ok"] for r in summary["results"]] == [True, False, True, False]
    assert summary["failed"] == 2 and summary["ok"] == 2
    assert "non-finite" in summary["results"][1]["error"]
    assert files(out) == sorted(f"{n}{s}" for n in ("good1", "good2") for s in OUTPUT_SUFFIXES)
    assert "[1/4]" in err and "[3/4]" in err


def test_same_stem_in_a_batch_gets_distinct_outputs(tmp_path, capfd):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    p1, p2 = write_blob(tmp_path / "a", "x.tif", 0), write_blob(tmp_path / "b", "x.npy", 1)
    out = tmp_path / "out"
    rc, _, err = run(["segment", p1, p2, "-o", out, "--quiet"] + CONST, capfd)
    assert rc == 0, err
    assert files(out) == sorted(f"{n}{s}" for n in ("x", "x_1") for s in OUTPUT_SUFFIXES)


def test_init_options(tmp_path, capfd):
    img = write_blob(tmp_path)
    _, _, gt = blob(0)
    mask_file = tmp_path / "init.png"
    Image.fromarray(gt.astype(np.uint8) * 255).save(mask_file)
    toml = tmp_path / "init.toml"
    toml.write_text('init = "init.png"\nseed = 7\n')  # relative to the TOML file
    cases = {
        "thr": (["--init", "0.5"], 0.5),
        "mask": (["--init", mask_file], {"mask": str(mask_file)}),
        "toml": (["--config", toml], {"mask": str(mask_file)}),
        "boxes": (["--fg-box", "10,10,20,20", "--bg-box", "0,0,5,5", "--bg-box", "26,26,32,32"],
                  {"fg_boxes": [[10, 10, 20, 20]], "bg_boxes": [[0, 0, 5, 5], [26, 26, 32, 32]]}),
    }
    dark = tmp_path / "dark.tif"  # the same disc, darker than its background
    tifffile.imwrite(dark, (1.0 - tifffile.imread(img)).astype(np.float32))
    (tmp_path / "dark.toml").write_text('init = "otsu_dark"\n')
    cases["dark"] = (["--init", "otsu_dark"], "otsu_dark")
    cases["dark_toml"] = (["--config", tmp_path / "dark.toml"], "otsu_dark")
    for name, (extra, desc) in cases.items():
        out = tmp_path / name
        src = dark if name.startswith("dark") else img
        rc, _, err = run(["segment", src, "-o", out, "--quiet"] + CONST + extra, capfd)
        assert rc == 0, (name, err)
        rep = json.loads((out / f"{src.stem}_report.json").read_text())
        assert rep["init"] == desc
        assert rep["seed"] == (7 if name == "toml" else 0)
        m = tifffile.imread(out / f"{src.stem}_mask.tif")
        assert dice(m, gt) > 0.8, name
    # a mask of the wrong shape names the mask file
    small = tmp_path / "small.npy"
    np.save(small, gt[:16, :16])
    rc, _, err = run(["segment", img, "-o", tmp_path / "o2", "--init", small] + CONST, capfd)
    assert_one_line_error(rc, err, "small.npy", "shape")
    assert files(tmp_path / "o2") == []


def test_bad_init_gt_clean_and_demo_options(tmp_path, capfd):
    img = write_blob(tmp_path)
    out = tmp_path / "out"
    cases = [
        (["--init", "1.5"], ["--init threshold must be in (0, 1)"]),
        (["--init", "0"], ["--init threshold must be in (0, 1)"]),
        (["--init", tmp_path / "nomask.tif"], ["nomask.tif", "not found"]),
        (["--bg-box", "0,0,4,4"], ["--bg-box needs at least one --fg-box"]),
        (["--init", "otsu", "--fg-box", "0,0,4,4"], ["either --init or --fg-box"]),
        (["--gt", tmp_path / "nogt.tif"], ["--gt", "nogt.tif", "not found"]),
        (["--clean", tmp_path / "noclean.png"], ["--clean", "noclean.png", "not found"]),
    ]
    for extra, words in cases:
        rc, _, err = run(["segment", img, "-o", out] + CONST + extra, capfd)
        assert_one_line_error(rc, err, *words)
    assert files(out) == []
    rc, _, err = run(["demo", "-o", out, "--size", "8"], capfd)
    assert_one_line_error(rc, err, "--size must be between 16 and 512")
    rc, _, err = run(["demo", "-o", out, "--noise", "nan"], capfd)
    assert_one_line_error(rc, err, "--noise")
    rc, _, err = run(["demo", "-o", out, "--noise", "-1"], capfd)
    assert_one_line_error(rc, err, "--noise")
    assert files(out) == []


def test_gt_and_clean_shape_mismatch(tmp_path, capfd):
    img = write_blob(tmp_path)
    np.save(tmp_path / "gt.npy", np.ones((16, 16), np.uint8))
    rc, _, err = run(["segment", img, "-o", tmp_path / "o", "--gt", tmp_path / "gt.npy"] + CONST,
                     capfd)
    assert_one_line_error(rc, err, "gt.npy", "shape")
    np.save(tmp_path / "clean.npy", np.ones((SIZE, 16), np.float32))
    rc, _, err = run(["segment", img, "-o", tmp_path / "o", "--clean", tmp_path / "clean.npy"]
                     + CONST, capfd)
    assert_one_line_error(rc, err, "clean.npy", "shape")
    assert files(tmp_path / "o") == []


# ------------------------------------------------------------------------------- bad inputs


def _bad_inputs(tmp_path):
    """name -> (path, words expected in the error line)."""
    noisy, _, _ = blob()
    cases = {}
    cases["missing"] = (tmp_path / "missing.tif", ["not found"])
    p = tmp_path / "img.bmp"
    p.write_bytes(b"BM123")
    cases["format"] = (p, ["unsupported format '.bmp'"])
    p = tmp_path / "corrupt.tif"
    p.write_bytes(b"II*\x00 truncated garbage")
    cases["unreadable"] = (p, ["cannot read image"])
    p = tmp_path / "stack.tif"
    with tifffile.TiffWriter(p) as tw:
        for _ in range(2):
            tw.write(noisy, photometric="minisblack")
    cases["multipage"] = (p, ["--volume"])
    p = tmp_path / "colour.png"
    rgb = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(p)
    cases["channels"] = (p, ["--channel-axis"])
    p = tmp_path / "nan.npy"
    a = noisy.copy()
    a[3, 4] = np.nan
    np.save(p, a)
    cases["nan"] = (p, ["non-finite"])
    p = tmp_path / "inf.tif"
    a = noisy.copy()
    a[0, 0] = np.inf
    tifffile.imwrite(p, a)
    cases["inf"] = (p, ["non-finite"])
    p = tmp_path / "constant.tif"
    tifffile.imwrite(p, np.full((SIZE, SIZE), 7, np.uint16))
    cases["constant"] = (p, ["constant"])
    p = tmp_path / "tiny.npy"
    np.save(p, noisy[:4, :4])
    cases["too_small"] = (p, ["too small"])
    p = tmp_path / "line.npy"
    np.save(p, noisy[0])
    cases["1d"] = (p, ["2-D"])
    return cases


def test_each_bad_input_is_one_line_exit_2(tmp_path, capfd):
    for name, (path, words) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out_{name}"
        rc, stdout, err = run(["segment", path, "-o", out] + CONST, capfd)
        assert_one_line_error(rc, err, path, *words)
        assert stdout == ""
        assert files(out) == [], name


def test_boxes_outside_image(tmp_path, capfd):
    img = write_blob(tmp_path)
    for box_args, word in [(["--fg-box", "0,0,40,40"], "foreground box"),
                           (["--fg-box", "2,2,10,10", "--bg-box", "20,20,20,30"], "background box"),
                           (["--fg-box", "2,2,10,10", "--bg-box", "5,5,12,12"], "overlap")]:
        rc, _, err = run(["segment", img, "-o", tmp_path / "out"] + CONST + box_args, capfd)
        assert_one_line_error(rc, err, img, word)
    assert files(tmp_path / "out") == []


def test_output_dir_not_writable(tmp_path, capfd):
    img = write_blob(tmp_path)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    rc, _, err = run(["segment", img, "-o", a_file] + CONST, capfd)
    assert_one_line_error(rc, err, a_file, "not a directory")
    rc, _, err = run(["segment", img, "-o", a_file / "sub"] + CONST, capfd)
    assert_one_line_error(rc, err, a_file / "sub", "cannot create output directory")
    rc, _, err = run(["demo", "-o", a_file / "sub"] + CONST, capfd)
    assert_one_line_error(rc, err, "cannot create output directory")
    # an output path that is a directory
    out = tmp_path / "out"
    (out / "img_mask.tif").mkdir(parents=True)
    rc, _, err = run(["segment", img, "-o", out, "--overwrite"] + CONST, capfd)
    assert_one_line_error(rc, err, "img_mask.tif", "is a directory")
    assert files(out) == ["img_mask.tif"]


def test_output_dir_write_failure_is_reported(tmp_path, capfd, monkeypatch):
    """An outdir that accepts no files (simulated: we may run as root) is caught up front."""
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    img = write_blob(tmp_path)
    rc, _, err = run(["segment", img, "-o", tmp_path / "ro"] + CONST, capfd)
    assert_one_line_error(rc, err, "ro", "not writable", "Permission denied")


def test_debug_shows_traceback(tmp_path, capfd):
    from self2seg_jax import io

    with pytest.raises(io.ImageReadError, match="not found"):
        cli.main(["segment", str(tmp_path / "missing.tif"), "-o", str(tmp_path), "--debug"])
    with pytest.raises(cli.CLIError, match="threshold"):
        cli.main(["segment", "x.tif", "-o", str(tmp_path), "--init", "2", "--debug"])


def test_internal_error_is_one_line_exit_1(tmp_path, capfd, monkeypatch):
    import self2seg_jax.api

    def boom(*a, **k):
        raise RuntimeError("XLA exploded\nwith a second line")

    monkeypatch.setattr(self2seg_jax.api, "segment", boom)
    img = write_blob(tmp_path)
    rc, _, err = run(["segment", img, "-o", tmp_path / "out"] + CONST, capfd)
    assert rc == 1 and "Traceback" not in err
    (line,) = error_lines(err)
    assert "internal error" in line and "XLA exploded with a second line" in line
    assert "--debug" in line and str(img) in line
    assert files(tmp_path / "out") == []
    # a fatal internal error in the demo: exit 1, and with --json a JSON object on stdout
    rc, out, err = run(["demo", "-o", tmp_path / "d", "--size", SIZE, "--json"] + CONST, capfd)
    assert rc == 1 and "Traceback" not in err
    assert json.loads(out)["exit_code"] == 1 and len(error_lines(err)) == 1
    with pytest.raises(RuntimeError, match="XLA exploded"):
        cli.main([str(a) for a in ["segment", img, "-o", tmp_path / "o3", "--debug"] + CONST])


# ------------------------------------------------------------------------------- safety


def test_no_overwrite_then_overwrite(tmp_path, capfd):
    img = write_blob(tmp_path)
    out = tmp_path / "out"
    rc, _, err = run(["segment", img, "-o", out, "--quiet"] + CONST, capfd)
    assert rc == 0, err
    before = {n: (out / n).read_bytes() for n in files(out)}
    rc, _, err = run(["segment", img, "-o", out, "--quiet", "--lam", "0.2"] + CONST[:-2], capfd)
    assert_one_line_error(rc, err, "img_mask.tif", "exists", "--overwrite")
    assert {n: (out / n).read_bytes() for n in files(out)} == before
    rc, _, err = run(["segment", img, "-o", out, "--quiet", "--overwrite", "--lam", "0.2"]
                     + CONST[:-2], capfd)
    assert rc == 0, err
    assert files(out) == sorted(before)
    rep = json.loads((out / "img_report.json").read_text())
    assert rep["options"]["lam"] == 0.2  # replaced
    assert rep["timings"]["includes_compilation"] is False  # a new lam: no recompilation


def test_never_overwrites_an_input(tmp_path, capfd):
    img = write_blob(tmp_path, "x.tif")
    gt_path = tmp_path / "x_mask.tif"  # would be the mask output of x.tif in the same folder
    tifffile.imwrite(gt_path, blob(0)[2].astype(np.uint8))
    before = gt_path.read_bytes()
    rc, _, err = run(["segment", img, "-o", tmp_path, "--gt", gt_path, "--overwrite"] + CONST,
                     capfd)
    assert_one_line_error(rc, err, "x_mask.tif", "would overwrite an input")
    assert gt_path.read_bytes() == before
    assert sorted(files(tmp_path)) == ["x.tif", "x_mask.tif"]
    # and in a batch, the input x_mask.tif is itself segmented but x.tif is refused
    rc, _, err = run(["segment", img, gt_path, "-o", tmp_path, "--overwrite", "--quiet"] + CONST,
                     capfd)
    assert rc == 2
    (line,) = error_lines(err)
    assert str(img) in line and "would overwrite an input" in line
    assert gt_path.read_bytes() == before
    assert (tmp_path / "x_mask_mask.tif").exists() and not (tmp_path / "x_denoised.tif").exists()


@pytest.mark.parametrize("exc,code", [(OSError(28, "No space left on device"), 2),
                                      (KeyboardInterrupt(), 130)])
def test_interrupted_write_leaves_nothing(tmp_path, capfd, monkeypatch, exc, code):
    """The writer fails half-way through the SECOND output file: no target, no temp file."""
    img = write_blob(tmp_path)
    out = tmp_path / "out"
    real = tifffile.imwrite
    calls = []

    def flaky(path, data, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as fh:
                fh.write(b"II*\x00partial")
            raise exc
        return real(path, data, *a, **k)

    monkeypatch.setattr(tifffile, "imwrite", flaky)
    rc, _, err = run(["segment", img, "-o", out, "--quiet"] + CONST, capfd)
    assert rc == code
    assert "Traceback" not in err
    if code == 2:
        assert_one_line_error(rc, err, img, "cannot write outputs", "No space left")
    else:
        assert "interrupted" in err
    assert len(calls) == 2
    assert files(out) == []  # neither the finished mask, nor the partial file, nor temps


def test_progress_lines_and_no_recompilation(tmp_path, capfd, monkeypatch):
    """Progress lines go to stderr without --quiet (and not with it); a second run of the same
    program in the same process does not recompile (and the report says so).

    Traces of the scheme are counted with a wrapper around ``alternating.w_step``, which only
    runs while a compiled outer step is being traced (whether the outer loop is one compiled
    ``run`` or driven from Python). ``alternating.run._cache_size()`` is no such counter: a
    run with a progress callback does not go through ``run``'s cache at all.
    """
    from self2seg_jax import alternating

    traces = []
    real = alternating.w_step

    def counting(*a, **k):
        traces.append(1)
        return real(*a, **k)

    monkeypatch.setattr(alternating, "w_step", counting)
    # a shape no other test in this file uses: the first run must compile
    img = write_blob(tmp_path, "img.tif", size=SIZE + 4)
    rc, out, err = run(["segment", img, "-o", tmp_path / "o1"] + CONST, capfd)
    assert rc == 0 and out == "", err
    rep1 = json.loads((tmp_path / "o1" / "img_report.json").read_text())
    lines = [ln for ln in err.splitlines() if ln.startswith("  img: outer ")]
    assert len(lines) == rep1["num_outer"] >= 1
    assert [ln.split()[2] for ln in lines] == [f"{k}:" for k in range(1, len(lines) + 1)]
    assert lines[0].startswith("  img: outer 1: energy ") and "pd iters" in lines[0]
    assert f"{img}: done in" in err and "(incl. compilation)" in err
    assert rep1["timings"]["includes_compilation"] is True and rep1["timings"]["compile_s"] > 0
    assert len(traces) >= 1
    n_traces = len(traces)

    rc, out, err = run(["segment", img, "-o", tmp_path / "o2", "--quiet", "--seed", "1",
                        "--lam", "0.04"] + CONST[:-2], capfd)
    assert rc == 0 and out == "" and err == ""  # --quiet: no progress, nothing at all
    rep2 = json.loads((tmp_path / "o2" / "img_report.json").read_text())
    assert rep2["timings"]["includes_compilation"] is False
    assert rep2["timings"]["compile_s"] == 0
    assert len(traces) == n_traces
    # quiet and verbose runs share one compiled program
    rc, _, err = run(["segment", img, "-o", tmp_path / "o3"] + CONST, capfd)
    assert rc == 0 and "  img: outer 1: energy " in err and "(incl. compilation)" not in err
    assert json.loads((tmp_path / "o3" / "img_report.json").read_text())["energies"] == \
        rep1["energies"]
    assert len(traces) == n_traces


# ------------------------------------------------------------------------------- colour / 3-D


def test_colour_png_three_classes(tmp_path, capfd):
    rng = np.random.default_rng(0)
    xx = np.mgrid[:32, :48][1]
    lab = np.digitize(xx, [16, 32])
    rgb = np.stack([lab * 100, 200 - lab * 100, np.full_like(lab, 90)], -1)
    rgb = rgb + 15 * rng.standard_normal((32, 48, 3))
    src = tmp_path / "rgb.png"
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(src)
    out = tmp_path / "out"
    # a colour file needs the flag: one-line error naming it
    rc, _, err = run(["segment", src, "-o", out, "--quiet", *CONST], capfd)
    assert_one_line_error(rc, err, src, "--channel-axis")
    rc, _, err = run(["segment", src, "-o", out, "--channel-axis", "-1", "--classes", "3",
                      "--quiet", *CONST], capfd)
    assert rc == 0, err
    assert files(out) == sorted(f"rgb{s}" for s in OUTPUT_SUFFIXES + ("_labels.tif",))
    labels = tifffile.imread(out / "rgb_labels.tif")
    den = tifffile.imread(out / "rgb_denoised.tif")
    assert labels.shape == (32, 48) and labels.dtype == np.uint8 and den.shape == (32, 48, 3)
    agree = max(np.mean(labels == lab), np.mean(labels == 2 - lab))
    assert agree > 0.95
    np.testing.assert_array_equal(tifffile.imread(out / "rgb_mask.tif"), labels > 0)
    rep = json.loads((out / "rgb_report.json").read_text())
    assert rep["num_classes"] == 3 and rep["layout"] == {"channel_axis": -1}
    assert len(rep["class_fractions"]) == 3 and sum(rep["class_fractions"]) == pytest.approx(1)
    assert all(len(s) == 3 for s in rep["train_steps"])
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
    rc, _, err = run(["segment", src, "-o", out, "--quiet", *CONST], capfd)
    assert_one_line_error(rc, err, src, "--volume")
    rc, _, err = run(["segment", src, "-o", out, "--volume", "--png", "--quiet", *CONST], capfd)
    assert_one_line_error(rc, err, "--png cannot hold a 3-D mask")
    rc, _, err = run(["segment", src, "-o", out, "--volume", "--spacing", "2,1,1", "--gt", gtp,
                      "--quiet", *CONST], capfd)
    assert rc == 0, err
    mask = tifffile.imread(out / "vol_mask.tif")
    assert mask.shape == gt.shape
    assert tifffile.imread(out / "vol_denoised.tif").shape == gt.shape
    rep = json.loads((out / "vol_report.json").read_text())
    assert rep["dice"] > 0.9 and rep["layout"] == {"volume": True, "spacing": [2.0, 1.0, 1.0]}
    assert rep["dice"] == pytest.approx(dice(mask, gt))
    from self2seg_jax import viz  # the overlay of a volume: its middle z slice
    with Image.open(out / "vol_overlay.png") as im:
        np.testing.assert_array_equal(np.asarray(im), viz.overlay_rgb(vol[5], mask[5], gt=gt[5]))
    # bad spacing: one-line error
    rc, _, err = run(["segment", src, "-o", tmp_path / "o2", "--volume", "--spacing", "1,1",
                      "--quiet", *CONST], capfd)
    assert_one_line_error(rc, err, "spacing")
    # a ground truth of the wrong shape for the volume
    rc, _, err = run(["segment", src, "-o", tmp_path / "o3", "--volume", "--gt", gtp,
                      "--channel-axis", "0", "--quiet", *CONST], capfd)
    assert rc == 2 and len(error_lines(err)) == 1
    assert files(tmp_path / "o2") == [] and files(tmp_path / "o3") == []


# ------------------------------------------------------------------------------- subprocess


def _subprocess(args, cwd):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-m", "self2seg_jax.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_subprocess_json_and_errors(tmp_path):
    img = write_blob(tmp_path, "s.tif")
    p = _subprocess(["segment", img, "missing.tif", "-o", tmp_path / "out", "--json"] + CONST,
                    tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    summary = json.loads(p.stdout)  # nothing but JSON on stdout
    assert [r["ok"] for r in summary["results"]] == [True, False]
    assert "Traceback" not in p.stderr
    (line,) = error_lines(p.stderr)
    assert line == "error: missing.tif: file not found"
    assert files(tmp_path / "out") == sorted(f"s{s}" for s in OUTPUT_SUFFIXES)
    # a fatal error with --json: the error on stderr, a JSON object on stdout
    p = _subprocess(["segment", img, "-o", img, "--json", "--quiet"], tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert json.loads(p.stdout)["exit_code"] == 2
    assert len(error_lines(p.stderr)) == 1 and "not a directory" in p.stderr
    # no command: usage on stderr, exit 2
    p = _subprocess([], tmp_path)
    assert p.returncode == 2 and "usage: self2seg" in p.stderr and p.stdout == ""


def test_subprocess_persistent_compilation_cache(tmp_path):
    """A second process on a same-shape image loads the compiled programs from the cache folder
    (no compilation reported); --no-compile-cache writes nothing there."""
    img = write_blob(tmp_path, "c.tif", size=SIZE + 6)  # a shape of its own
    cache = tmp_path / "cache"
    env = dict(os.environ, MPLBACKEND="Agg", SELF2SEG_CACHE_DIR=str(cache))

    def go(out, *extra):
        p = subprocess.run([sys.executable, "-m", "self2seg_jax.cli", "segment", str(img), "-o",
                            str(tmp_path / out), "--quiet", *extra, *CONST], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads((tmp_path / out / "c_report.json").read_text())["timings"]

    go("off", "--no-compile-cache")
    assert not cache.exists() or not any(cache.iterdir())
    first = go("o1")
    assert first["includes_compilation"] is True and any(cache.iterdir())
    second = go("o2")
    assert second["includes_compilation"] is False and second["compile_s"] == 0


def test_batch_flag_segments_same_shape_files_together_with_the_same_outputs(tmp_path, capfd):
    """--batch: files of one shape go through segment_batch (here: one CPU device, a thread
    pool); every file gets the outputs of a one-by-one run, a file of its own shape and a bad
    file are handled as without the flag."""
    files = [write_blob(tmp_path, f"b{k}.tif", seed=k) for k in range(3)]
    files.append(write_blob(tmp_path, "odd.tif", seed=7, size=SIZE + 4))
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    rc_one, _, err = run(["segment", *files, bad, "-o", tmp_path / "one", *CONST, "--quiet"],
                         capfd)
    assert rc_one == 2 and "bad.tif" in err
    rc, out, err = run(["segment", *files, bad, "-o", tmp_path / "many", *CONST, "--quiet",
                        "--batch", "--json"], capfd)
    assert rc == rc_one and "bad.tif" in err  # the bad file fails, the others are written
    summary = json.loads(out)
    assert summary["ok"] == 4 and summary["failed"] == 1
    for f in files:
        for suffix in OUTPUT_SUFFIXES:
            assert (tmp_path / "many" / (f.stem + suffix)).is_file()
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "many" / f"{f.stem}_mask.tif"),
                                      tifffile.imread(tmp_path / "one" / f"{f.stem}_mask.tif"))
    reps = {f.stem: json.loads((tmp_path / "many" / f"{f.stem}_report.json").read_text())
            for f in files}
    assert all(reps[f"b{k}"]["timings"]["batch_size"] == 3 for k in range(3))
    assert "batch_size" not in reps["odd"]["timings"]


def test_warm_process_imports_neither_flax_optax_nor_matplotlib(tmp_path, cheap_toml):
    """With its programs stored (export + compilation caches), a CNN-expert run needs neither
    the network's definition (Flax), nor the optimiser (optax), nor, with the default figure,
    matplotlib: ~1.5 s of a 2-core CPU process (benchmarks/results/cli_s19)."""
    img = write_blob(tmp_path, "w.tif", size=SIZE + 4)  # a shape of its own
    env = dict(os.environ, MPLBACKEND="Agg", SELF2SEG_CACHE_DIR=str(tmp_path / "cache"))

    def imported(out):
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "self2seg_jax.cli",
                            "segment", str(img), "-o", str(tmp_path / out), "--quiet",
                            "--config", str(cheap_toml)], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        return {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines()
                if line.startswith("import time:")}

    first = imported("o1")  # traces the scheme: the network and the optimiser are built
    assert {"flax", "optax"} <= first
    second = imported("o2")
    assert "jax" in second and not {"flax", "optax", "matplotlib"} & second
