"""The ``self2seg`` command line, end to end in temporary folders.

Everything is tiny (32x32 images). Runs with CNN experts all use ONE static configuration
(:data:`CHEAP_TOML`) and with constant experts ONE other (:data:`CONST`), so each pytest worker
compiles each program at most once. Most tests call ``cli.main`` in-process; a few go through
``python -m self2seg_jax.cli`` in a subprocess (stdout purity, one-line errors, lazy imports).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from PIL import Image

from self2seg_jax import cli

SIZE = 32

# Tiny CNN experts (shared by the n2f segment run and the demo: one compilation per worker).
CHEAP_TOML = """\
net_width = 8
net_depth = 1
train_max_steps = 30
train_min_steps = 10
train_patience = 10
val_every = 10
n_average = 2
max_outer = 2
pd_max_iter = 300
init_denoise = false
"""

# Constant experts (Chan-Vese): compiles in a few seconds; used for the plumbing tests.
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


def write_blob(folder, name="img.tif", seed=0):
    noisy, clean, gt = blob(seed)
    p = folder / name
    if p.suffix == ".npy":
        np.save(p, noisy)
    elif p.suffix in (".png", ".jpg"):
        Image.fromarray((np.clip(noisy, 0, 1) * 255).astype(np.uint8)).save(p)
    else:
        tifffile.imwrite(p, noisy)
    return p


def run(argv, capfd):
    """``(exit code, stdout, stderr)`` of an in-process ``cli.main`` call."""
    rc = cli.main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return rc, out, err


def error_lines(err):
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def assert_one_line_error(rc, err, *words):
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for w in words:
        assert str(w) in lines[0], lines[0]
    return lines[0]


def files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def cheap_toml(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "cheap.toml"
    p.write_text(CHEAP_TOML)
    return p


# ------------------------------------------------------------------------------- help/version


def test_help_version_and_no_command(capfd):
    rc, out, _ = run(["--help"], capfd)
    assert rc == 0 and "segment" in out and "demo" in out and "examples:" in out
    rc, out, _ = run(["segment", "--help"], capfd)
    assert rc == 0
    for opt in ("--lam", "--mu", "--fg-expert", "--fg-box", "--bg-box", "--init", "--config",
                "--gt", "--clean", "--png", "--overwrite", "--json", "--quiet", "examples:"):
        assert opt in out, opt
    rc, out, _ = run(["demo", "--help"], capfd)
    assert rc == 0 and "--size" in out and "--noise" in out
    rc, out, _ = run(["--version"], capfd)
    import self2seg_jax

    assert rc == 0 and out.strip() == f"self2seg_jax {self2seg_jax.__version__}"
    rc, _, err = run([], capfd)
    assert rc == 2 and "usage" in err
    rc, _, err = run(["segment", "x.tif"], capfd)  # -o missing: argparse usage error
    assert rc == 2 and "--outdir" in err
    rc, _, err = run(["segment", "x.tif", "-o", "o", "--fg-box", "1,2,3"], capfd)
    assert rc == 2 and "four integers" in err


def test_help_defaults_match_config():
    from self2seg_jax import Self2SegConfig

    default = Self2SegConfig()
    for name, value in cli.HELP_DEFAULTS.items():
        assert getattr(default, name) == value, f"--help quotes a stale default for {name}"


def test_help_does_not_import_jax():
    """``--help`` must answer at once: neither it nor importing the CLI may import JAX."""
    code = textwrap.dedent("""
        import sys
        from self2seg_jax import cli
        assert cli.main(["--help"]) == 0
        assert cli.main(["segment", "--help"]) == 0
        assert cli.main(["demo", "--help"]) == 0
        assert cli.main(["--version"]) == 0
        heavy = sorted(m for m in ("jax", "jaxlib", "flax", "optax") if m in sys.modules)
        assert not heavy, f"imported by --help: {heavy}"
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage: self2seg" in p.stdout


# ------------------------------------------------------------------------------- configuration


def _args(argv):
    return cli.build_parser().parse_args(argv)


def test_config_flags_toml_and_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(CHEAP_TOML + 'lam = 0.07\nmu = 0\nseed = 5\ninit = 0.4\n'
                    'fg_box = [[1, 2, 10, 12]]\nbg_box = [[20, 20, 30, 30], [0, 0, 3, 3]]\n')
    cfg, extra = cli._config_from_args(_args(["segment", "a.tif", "-o", "o", "--config", str(toml),
                                              "--lam", "0.01", "--data-filter", "3"]))
    assert cfg.lam == 0.01  # flag beats TOML
    assert cfg.mu == 0.0 and isinstance(cfg.mu, float)
    assert (cfg.net_width, cfg.net_depth) == (8, 1)
    assert (cfg.train_max_steps, cfg.train_min_steps, cfg.train_patience) == (30, 10, 10)
    assert (cfg.val_every, cfg.n_average, cfg.init_denoise) == (10, 2, False)
    assert cfg.data_filter == 3
    assert extra["seed"] == 5 and extra["init"] == 0.4
    assert extra["fg_box"] == [(1, 2, 10, 12)] and len(extra["bg_box"]) == 2

    cfg, _ = cli._config_from_args(_args(
        ["segment", "a.tif", "-o", "o", "--net-width", "8", "--net-depth", "2", "--train-steps",
         "30", "--max-outer", "2", "--pd-max-iter", "300", "--mu", "0.001", "--fg-expert",
         "linear", "--bg-expert", "constant", "--linear-size", "5", "--learning-rate", "0.01",
         "--init-denoise", "--data-term", "blind_spot"]))
    assert cfg.data_term == "blind_spot"
    assert (cfg.net_width, cfg.net_depth, cfg.train_max_steps, cfg.max_outer, cfg.pd_max_iter) == (
        8, 2, 30, 2, 300)
    assert cfg.train_min_steps <= cfg.train_max_steps
    assert (cfg.fg_expert, cfg.bg_expert) == ("linear", "constant")
    assert (cfg.linear_size, cfg.mu) == (5, 0.001)
    assert cfg.learning_rate == 0.01 and cfg.init_denoise is True

    (tmp_path / "p.toml").write_text("paper = true\nmax_outer = 3\n")
    cfg, _ = cli._config_from_args(_args(["demo", "-o", "o", "--config", str(tmp_path / "p.toml")]))
    assert (cfg.net_width, cfg.net_depth, cfg.max_outer) == (64, 8, 3)


@pytest.mark.parametrize("text,words", [
    ("lam = [1", ["invalid TOML"]),
    ("nonsense = 1", ["unknown option 'nonsense'"]),
    ('lam = "big"', ["'lam' must be a number"]),
    ("net_width = 8.5", ["'net_width' must be an integer"]),
    ("init_denoise = 1", ["'init_denoise' must be true or false"]),
    ("lam = -1.0", ["lam must be a finite number > 0"]),
    ("data_filter = 2", ["data_filter must be an odd integer"]),
    ('fg_expert = "unet"', ["fg_expert must be one of"]),
    ("fg_box = [[1, 2, 3]]", ["'fg_box' must be a list"]),
    ('seed = "x"', ["'seed' must be an integer"]),
])
def test_bad_config_file(tmp_path, capfd, text, words):
    toml = tmp_path / "bad.toml"
    toml.write_text(text + "\n")
    img = write_blob(tmp_path)
    rc, out, err = run(["segment", img, "-o", tmp_path / "out", "--config", toml], capfd)
    assert_one_line_error(rc, err, toml, *words)
    assert files(tmp_path / "out") == []


def test_bad_options(tmp_path, capfd):
    img = write_blob(tmp_path)
    out = tmp_path / "out"
    cases = [
        (["--config", tmp_path / "missing.toml"], ["missing.toml", "not found"]),
        (["--lam", "-1"], ["lam must be a finite number > 0"]),
        (["--data-filter", "4"], ["data_filter"]),
        (["--init", "1.5"], ["--init threshold must be in (0, 1)"]),
        (["--init", tmp_path / "nomask.tif"], ["nomask.tif", "not found"]),
        (["--bg-box", "0,0,4,4"], ["--bg-box needs at least one --fg-box"]),
        (["--init", "otsu", "--fg-box", "0,0,4,4"], ["either --init or --fg-box"]),
        (["--gt", tmp_path / "nogt.tif"], ["nogt.tif", "not found"]),
        (["--clean", tmp_path / "noclean.png"], ["noclean.png", "not found"]),
    ]
    for extra, words in cases:
        rc, _, err = run(["segment", img, "-o", out] + extra, capfd)
        assert_one_line_error(rc, err, *words)
    assert files(out) == []
    rc, _, err = run(["demo", "-o", out, "--size", "8"], capfd)
    assert_one_line_error(rc, err, "--size must be between 16 and 512")
    rc, _, err = run(["demo", "-o", out, "--noise", "nan"], capfd)
    assert_one_line_error(rc, err, "--noise")


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
    cases["multipage"] = (p, ["multi-page TIFF", "2-D (height, width)"])
    p = tmp_path / "colour.png"
    rgb = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(p)
    cases["channels"] = (p, ["colour", "2-D (height, width)"])
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


def test_output_dir_write_failure_is_reported(tmp_path, capfd, monkeypatch):
    """An outdir that accepts no files (simulated: we may run as root) is caught up front."""
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    img = write_blob(tmp_path)
    rc, _, err = run(["segment", img, "-o", tmp_path / "ro"] + CONST, capfd)
    assert_one_line_error(rc, err, "ro", "not writable", "Permission denied")


def test_debug_shows_traceback(tmp_path):
    from self2seg_jax import io

    with pytest.raises(io.ImageReadError, match="not found"):
        cli.main(["segment", str(tmp_path / "missing.tif"), "-o", str(tmp_path), "--debug"])


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
    assert "--debug" in line


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
    with Image.open(out / "cells_overlay.png") as im:
        assert im.format == "PNG"
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
    assert rep["timings"]["segment_s"] > 0 and "write_s" in rep["timings"]
    for k in ("dice", "iou", "psnr_denoised", "psnr_input", "ssim_denoised"):
        assert isinstance(rep[k], float), k
    assert rep["dice"] > 0.8, rep["dice"]
    gt = r["gt"]
    inter = np.logical_and(mask > 0, gt).sum()
    assert rep["dice"] == pytest.approx(2 * inter / (mask.sum() + gt.sum()))
    assert rep["psnr_denoised"] > rep["psnr_input"]


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
    # plain output: Dice and PSNR on stdout; existing outputs are not replaced
    rc, out, err = run(["demo", "-o", tmp_path / "d2", "--size", SIZE, "--config", cheap_toml,
                        "--quiet"], capfd)
    assert rc == 0 and "Dice" in out and "PSNR" in out and err == ""
    rc, out, err = run(["demo", "-o", tmp_path / "d2", "--size", SIZE, "--config", cheap_toml],
                       capfd)
    assert_one_line_error(rc, err, "exists", "--overwrite")


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
    assert stdout == "" and "outer" not in err and "error" not in err
    for p in paths:
        m = np.asarray(Image.open(out / f"{p.stem}_mask.png"))
        assert m.dtype == np.uint8 and m.shape == (SIZE, SIZE) and set(np.unique(m)) <= {0, 1}
        assert (out / f"{p.stem}_denoised.tif").exists()
        dice = 2 * np.logical_and(m > 0, gt).sum() / (m.sum() + gt.sum())
        assert dice > 0.8, (p, dice)


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
    assert summary["failed"] == 2 and "non-finite" in summary["results"][1]["error"]
    assert files(out) == sorted(f"{n}{s}" for n in ("good1", "good2") for s in OUTPUT_SUFFIXES)
    assert "[1/4]" in err and "[3/4]" in err


def test_init_options(tmp_path, capfd):
    img = write_blob(tmp_path)
    _, _, gt = blob(0)
    mask_file = tmp_path / "init.png"
    Image.fromarray(gt.astype(np.uint8) * 255).save(mask_file)
    cases = {
        "thr": (["--init", "0.5"], 0.5),
        "mask": (["--init", mask_file], {"mask": str(mask_file)}),
        "boxes": (["--fg-box", "10,10,20,20", "--bg-box", "0,0,5,5", "--bg-box", "26,26,32,32"],
                  {"fg_boxes": [[10, 10, 20, 20]], "bg_boxes": [[0, 0, 5, 5], [26, 26, 32, 32]]}),
    }
    for name, (extra, desc) in cases.items():
        out = tmp_path / name
        rc, _, err = run(["segment", img, "-o", out, "--quiet"] + CONST + extra, capfd)
        assert rc == 0, (name, err)
        rep = json.loads((out / "img_report.json").read_text())
        assert rep["init"] == desc
        m = tifffile.imread(out / "img_mask.tif")
        assert 2 * np.logical_and(m > 0, gt).sum() / (m.sum() + gt.sum()) > 0.8, name
    # a mask of the wrong shape names the mask file
    small = tmp_path / "small.npy"
    np.save(small, gt[:16, :16])
    rc, _, err = run(["segment", img, "-o", tmp_path / "o2", "--init", small] + CONST, capfd)
    assert_one_line_error(rc, err, "small.npy", "shape")


def test_gt_shape_mismatch(tmp_path, capfd):
    img = write_blob(tmp_path)
    np.save(tmp_path / "gt.npy", np.ones((16, 16), np.uint8))
    rc, _, err = run(["segment", img, "-o", tmp_path / "o", "--gt", tmp_path / "gt.npy"] + CONST,
                     capfd)
    assert_one_line_error(rc, err, "gt.npy", "shape")
    assert files(tmp_path / "o") == []


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
    rc, _, err = run(["segment", img, "-o", out, "--quiet", "--overwrite"] + CONST, capfd)
    assert rc == 0, err
    assert files(out) == sorted(before)
    rep = json.loads((out / "img_report.json").read_text())
    assert rep["timings"]["includes_compilation"] is False  # same program: no recompilation


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
    assert gt_path.read_bytes() == before


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


def test_progress_hook_is_restored(tmp_path, capfd):
    from self2seg_jax import alternating

    before = alternating.PROGRESS_HOOK[0]
    img = write_blob(tmp_path)
    rc, _, err = run(["segment", img, "-o", tmp_path / "o"] + CONST, capfd)
    assert rc == 0 and "img: outer 1" in err
    assert alternating.PROGRESS_HOOK[0] is before


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
