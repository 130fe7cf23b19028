"""self2seg_jax.io (reading / atomic writing) and self2seg_jax.viz; no JAX needed."""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from PIL import Image

from self2seg_jax import io

RNG = np.random.default_rng(0)


def _leftovers(folder):
    """Hidden temporary files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_read_tiff_dtypes(tmp_path, dtype):
    a = (RNG.random((20, 30)) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "x.tif", a)
    b = io.read_image(tmp_path / "x.tif")
    assert b.shape == (20, 30) and b.dtype == dtype
    np.testing.assert_array_equal(a, b)


def test_read_tiff_suffix_case_and_tiff(tmp_path):
    a = RNG.integers(0, 255, (10, 12), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "x.TIFF", a)
    np.testing.assert_array_equal(io.read_image(tmp_path / "x.TIFF"), a)


def test_read_png_8_and_16_bit(tmp_path):
    a8 = RNG.integers(0, 255, (16, 18), dtype=np.uint8)
    Image.fromarray(a8).save(tmp_path / "a.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "a.png"), a8)
    a16 = RNG.integers(0, 65535, (16, 18)).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "b.png")
    b = io.read_image(tmp_path / "b.png")
    assert b.shape == (16, 18)
    np.testing.assert_array_equal(b.astype(np.int64), a16.astype(np.int64))


def test_read_jpeg_grey(tmp_path):
    a = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (16, 1))
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    b = io.read_image(tmp_path / "a.jpg")
    assert b.shape == (16, 24) and b.dtype == np.uint8
    assert np.abs(b.astype(int) - a.astype(int)).max() < 10


def test_read_npy_and_bool(tmp_path):
    a = RNG.standard_normal((9, 11))
    np.save(tmp_path / "a.npy", a)
    np.testing.assert_array_equal(io.read_image(tmp_path / "a.npy"), a)
    np.save(tmp_path / "m.npy", a > 0)
    m = io.read_image(tmp_path / "m.npy")
    assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}


def test_read_grey_rgb_png_is_accepted(tmp_path):
    g = RNG.integers(0, 255, (12, 14), dtype=np.uint8)
    Image.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([g, g, g, np.full_like(g, 255)], -1)).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgb.png"), g)
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgba.png"), g)


def test_read_singleton_axes_are_dropped(tmp_path):
    a = RNG.random((1, 10, 12)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    assert io.read_image(tmp_path / "a.npy").shape == (10, 12)
    np.save(tmp_path / "b.npy", a.reshape(10, 12, 1))
    assert io.read_image(tmp_path / "b.npy").shape == (10, 12)


def _expect_error(path, *words):
    with pytest.raises(io.ImageReadError) as e:
        io.read_image(path)
    msg = str(e.value)
    assert msg.startswith(str(path)), msg
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_read_missing_and_directory(tmp_path):
    _expect_error(tmp_path / "nope.tif", "not found")
    (tmp_path / "d.tif").mkdir()
    _expect_error(tmp_path / "d.tif", "directory")


@pytest.mark.parametrize("name", ["a.bmp", "a.txt", "noext"])
def test_read_unsupported_format(tmp_path, name):
    (tmp_path / name).write_bytes(b"whatever")
    _expect_error(tmp_path / name, "unsupported format", ".tif")


@pytest.mark.parametrize("name", ["bad.tif", "bad.png", "bad.jpg", "bad.npy"])
def test_read_corrupt_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00\x01 definitely not an image" * 3)
    _expect_error(tmp_path / name, "cannot read image")


def test_read_multipage_tiff(tmp_path):
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tw:
        for _ in range(3):
            tw.write(RNG.random((16, 16)).astype(np.float32), photometric="minisblack")
    _expect_error(tmp_path / "stack.tif", "multi-page TIFF (3 pages)", "2-D (height, width)")
    # one page holding a 3-D array (planar channels) is no 2-D image either
    tifffile.imwrite(tmp_path / "planes.tif", RNG.random((3, 16, 16)).astype(np.float32),
                     photometric="minisblack")
    _expect_error(tmp_path / "planes.tif", "2-D (height, width)")


def test_read_colour_images(tmp_path):
    rgb = RNG.integers(0, 255, (12, 14, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    _expect_error(tmp_path / "c.png", "colour", "2-D (height, width)")
    tifffile.imwrite(tmp_path / "c.tif", rgb)
    _expect_error(tmp_path / "c.tif", "(12, 14, 3)", "2-D (height, width)")
    np.save(tmp_path / "c.npy", RNG.random((4, 12, 14)))
    _expect_error(tmp_path / "c.npy", "(4, 12, 14)", "supported")


def test_read_bad_pixel_types(tmp_path):
    np.save(tmp_path / "z.npy", np.ones((8, 8), np.complex64))
    _expect_error(tmp_path / "z.npy", "pixel type")
    np.save(tmp_path / "e.npy", np.zeros((0, 8)))
    _expect_error(tmp_path / "e.npy", "empty")
    np.save(tmp_path / "v.npy", np.zeros(8))
    _expect_error(tmp_path / "v.npy", "shape (8,)")


# ------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix,dtype", [(".tif", np.float32), (".tif", np.uint8),
                                          (".png", np.uint8), (".png", np.uint16),
                                          (".npy", np.float64)])
def test_write_read_roundtrip(tmp_path, suffix, dtype):
    a = (RNG.random((10, 13)) * 100).astype(dtype)
    p = io.write_image(tmp_path / f"a{suffix}", a)
    assert p.exists()
    np.testing.assert_array_equal(io.read_image(p), a)
    assert _leftovers(tmp_path) == []


def test_written_files_have_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = io.write_image(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_write_bad_format_or_dtype_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="PNG needs uint8 or uint16"):
        io.write_image(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="unsupported output format"):
        io.write_image(tmp_path / "a.bmp", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_no_overwrite_without_flag(tmp_path):
    p = tmp_path / "a.tif"
    io.write_image(p, np.ones((4, 4), np.uint8))
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        io.write_image(p, np.zeros((4, 4), np.uint8))
    with pytest.raises(FileExistsError):
        io.write_json(tmp_path / "a.tif", {"x": 1})
    assert p.read_bytes() == before
    io.write_image(p, np.zeros((4, 4), np.uint8), overwrite=True)
    assert io.read_image(p).max() == 0
    assert _leftovers(tmp_path) == []


def _half_writer(monkeypatch, exc=None):
    """Make tifffile.imwrite write half a file and then fail."""
    exc = exc if exc is not None else OSError("simulated disk full")

    def broken(path, data, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00half-written")
        raise exc

    monkeypatch.setattr(tifffile, "imwrite", broken)


@pytest.mark.parametrize("exc", [OSError("simulated disk full"), KeyboardInterrupt()])
def test_atomic_write_failure_leaves_no_file(tmp_path, monkeypatch, exc):
    _half_writer(monkeypatch, exc)
    with pytest.raises(type(exc)):
        io.write_image(tmp_path / "a.tif", np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "a.tif"
    io.write_image(p, np.full((4, 4), 7, np.uint8))
    before = p.read_bytes()
    _half_writer(monkeypatch)
    with pytest.raises(OSError):
        io.write_image(p, np.zeros((4, 4), np.uint8), overwrite=True)
    assert p.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_atomic_group_all_or_nothing(tmp_path, monkeypatch):
    with io.AtomicGroup() as g:
        g.image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
        g.json(tmp_path / "a.json", {"v": np.float32(1.5), "arr": np.arange(3)})
        assert not (tmp_path / "a.png").exists()  # nothing visible before commit
        done = g.commit()
    assert sorted(p.name for p in done) == ["a.json", "a.png"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1.5, "arr": [0, 1, 2]}
    assert _leftovers(tmp_path) == []

    # a failure in a later file leaves none of the group's targets and no temporary file
    _half_writer(monkeypatch)
    out = tmp_path / "b"
    with pytest.raises(OSError, match="disk full"):
        with io.AtomicGroup() as g:
            g.image(out / "b_mask.png", np.zeros((4, 4), np.uint8))
            g.json(out / "b.json", {"x": 1})
            g.image(out / "b_denoised.tif", np.zeros((4, 4), np.float32))
            g.commit()
    assert list(out.iterdir()) == []

    # leaving the block without commit discards everything
    with io.AtomicGroup() as g:
        g.json(out / "c.json", {})
    assert list(out.iterdir()) == []


def test_atomic_group_respects_overwrite(tmp_path):
    io.write_json(tmp_path / "r.json", {"old": True})
    with pytest.raises(FileExistsError):
        with io.AtomicGroup() as g:
            g.json(tmp_path / "r.json", {"new": True})
    with io.AtomicGroup(overwrite=True) as g:
        g.json(tmp_path / "r.json", {"new": True})
        g.commit()
    assert json.loads((tmp_path / "r.json").read_text()) == {"new": True}
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------- viz


def test_overview_figure_writes_png(tmp_path):
    from self2seg_jax import viz

    img = RNG.random((24, 24)).astype(np.float32)
    for mask in (img > 0.5, np.zeros((24, 24), bool)):  # also an empty mask (no contour)
        res = SimpleNamespace(mask=mask, denoised=img, energies=np.array([3.0, 2.0]),
                              status="converged (mask unchanged)")
        fig = viz.overview_figure(img, res, gt=img > 0.4, title="t")
        p = io.write_figure(tmp_path / f"o{int(mask.any())}.png", fig)
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert _leftovers(tmp_path) == []


def _rgb_equal(a, colour):
    return np.all(a == np.asarray(colour, np.uint8), axis=-1)


def test_overlay_rgb_draws_the_mask_and_ground_truth_outlines_where_they_are():
    from skimage.segmentation import find_boundaries

    from self2seg_jax import viz

    img = RNG.random((300, 280)).astype(np.float32)  # >= min_side: drawn at 1:1
    lab = np.zeros((300, 280), np.int32)
    lab[40:120, 30:90] = 1
    lab[200:260, 150:260] = 2
    gt = np.zeros((300, 280), bool)
    gt[45:125, 30:95] = True
    out = viz.overlay_rgb(img, lab, gt=gt)
    assert out.shape == (300, 280, 3) and out.dtype == np.uint8
    # a class's outline: its pixels with a 4-neighbour of another class (scikit-image's "inner"
    # boundaries, connectivity 1), in the class colour; the gt's outline outside its objects
    inner = find_boundaries(lab, connectivity=1, mode="inner")
    outer_gt = find_boundaries(gt, connectivity=1, mode="outer") & ~gt
    yellow, magenta = (viz.CLASS_COLOURS[:2] * 255).astype(np.uint8)
    cyan = (viz.GT_COLOUR * 255).astype(np.uint8)
    np.testing.assert_array_equal(_rgb_equal(out, cyan), outer_gt)
    np.testing.assert_array_equal(_rgb_equal(out, yellow), inner & (lab == 1) & ~outer_gt)
    np.testing.assert_array_equal(_rgb_equal(out, magenta), inner & (lab == 2) & ~outer_gt)
    # background far from every outline: the grey image in the window of display_range
    lo, hi = viz.display_range(img)
    grey = np.round(np.clip((img - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    far = (lab == 0) & ~outer_gt
    for c in range(3):
        assert np.abs(out[..., c][far].astype(int) - grey[far]).max() <= 1
    # inside class 1, away from the outlines: 3/4 grey + 1/4 yellow
    core = (lab == 1) & ~inner & ~outer_gt
    g = np.clip((img - lo) / (hi - lo), 0, 1)[core]
    for c, (want) in enumerate(((0.75 * g + 0.25), (0.75 * g + 0.25), 0.75 * g)):
        assert np.abs(out[..., c][core] - want * 255).max() <= 1


def test_overlay_rgb_enlarges_small_images_and_handles_empty_and_constant_input():
    from self2seg_jax import viz

    img = RNG.random((20, 30)).astype(np.float32)
    mask = img > 0.5
    out = viz.overlay_rgb(img, mask)
    k = 8  # ceil(256 / 20) = 13, capped at max_scale 8
    assert out.shape == (20 * k, 30 * k, 3)
    np.testing.assert_array_equal(out[::k, ::k][~mask], np.repeat(
        out[::k, ::k][~mask][:, :1], 3, axis=1))  # background stays grey
    assert viz.overlay_rgb(img, mask, min_side=20).shape == (20, 30, 3)
    flat = viz.overlay_rgb(np.full((260, 260), 3.0), np.zeros((260, 260), bool))
    assert flat.shape == (260, 260, 3) and np.isfinite(flat).all()
    with pytest.raises(ValueError, match="shape"):
        viz.overlay_rgb(img, mask[:10])
    with pytest.raises(ValueError, match="ground truth shape"):
        viz.overlay_rgb(img, mask, gt=mask[:, :5])
