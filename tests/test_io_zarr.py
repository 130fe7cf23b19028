"""OME-Zarr in and out: round trips keep data and axes (from the metadata, never guessed),
writes are atomic directories that never replace an existing one without overwrite, bad
inputs get one-line errors; the command line takes OME-Zarr images (2-D, 3-D, channels) and
writes OME-Zarr masks (with a label image) and denoised images, never touching the input."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from self2seg_jax import io
from tests.test_cli_run import CONST, blob, run

pytest.importorskip("ome_zarr")


@pytest.mark.parametrize("axes,shape", [("yx", (20, 30)), ("zyx", (4, 20, 30)),
                                        ("cyx", (3, 20, 30)), ("czyx", (2, 4, 20, 30))])
def test_round_trip_keeps_data_and_axes(tmp_path, axes, shape, rng):
    a = rng.random(shape).astype(np.float32)
    io.write_ome_zarr(tmp_path / "a.ome.zarr", a, axes)
    b, got = io.read_ome_zarr(tmp_path / "a.ome.zarr")
    assert got == tuple(axes)
    np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["a.ome.zarr"]  # no temporaries left


def test_singleton_axes_are_dropped_and_time_series_rejected(tmp_path, rng):
    io.write_ome_zarr(tmp_path / "t1.zarr", rng.random((1, 1, 5, 16, 16)), "tczyx")
    a, axes = io.read_ome_zarr(tmp_path / "t1.zarr")
    assert axes == ("z", "y", "x") and a.shape == (5, 16, 16)
    io.write_ome_zarr(tmp_path / "t3.zarr", rng.random((3, 16, 16)), "tyx")
    with pytest.raises(io.ImageReadError, match="time series"):
        io.read_ome_zarr(tmp_path / "t3.zarr")


def test_bad_inputs_give_one_line_errors(tmp_path):
    with pytest.raises(io.ImageReadError, match="not found"):
        io.read_ome_zarr(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(io.ImageReadError, match="not an OME-Zarr image"):
        io.read_ome_zarr(tmp_path / "empty.zarr")
    with pytest.raises(ValueError, match="axes"):
        io.write_ome_zarr(tmp_path / "x.zarr", np.zeros((4, 4)), "zyx")


def test_writes_never_replace_without_overwrite(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    io.write_ome_zarr(tmp_path / "m.zarr", m, "yx", labels=True)
    assert (tmp_path / "m.zarr" / "labels").is_dir()
    with pytest.raises(FileExistsError):
        io.write_ome_zarr(tmp_path / "m.zarr", m + 1, "yx")
    np.testing.assert_array_equal(io.read_ome_zarr(tmp_path / "m.zarr")[0], m)
    io.write_ome_zarr(tmp_path / "m.zarr", m + 1, "yx", overwrite=True)
    np.testing.assert_array_equal(io.read_ome_zarr(tmp_path / "m.zarr")[0], m + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]


def _digest(folder) -> str:
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            h.update(f.encode())
            with open(os.path.join(root, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


@pytest.mark.parametrize("case", ["2d", "3d", "channels"])
def test_cli_segments_ome_zarr_and_writes_ome_zarr(tmp_path, capfd, case):
    noisy, _, gt = blob(0)
    if case == "2d":
        img, axes = noisy, "yx"
    elif case == "3d":
        img, axes = np.stack([noisy] * 8), "zyx"
    else:
        img, axes = np.stack([noisy, 0.5 * noisy]), "cyx"
    src = tmp_path / "in.ome.zarr"
    io.write_ome_zarr(src, img, axes)
    before = _digest(src)
    rc, out, err = run(["segment", src, "-o", tmp_path / "out", *CONST], capfd)
    assert rc == 0, err
    assert _digest(src) == before  # the input is never modified
    mask, maxes = io.read_ome_zarr(tmp_path / "out" / "in_mask.ome.zarr")
    den, daxes = io.read_ome_zarr(tmp_path / "out" / "in_denoised.ome.zarr")
    assert maxes == tuple(a for a in axes if a != "c") and daxes == tuple(axes)
    assert den.shape == img.shape and den.dtype == np.float32
    want = gt if case != "3d" else np.stack([gt] * 8)
    assert mask.shape == want.shape and np.mean((mask > 0) == want) > 0.95
    assert (tmp_path / "out" / "in_mask.ome.zarr" / "labels").is_dir()
    assert (tmp_path / "out" / "in_report.json").is_file()


def test_cli_rejects_flags_that_contradict_the_metadata(tmp_path, capfd):
    noisy, _, _ = blob(0)
    io.write_ome_zarr(tmp_path / "a.zarr", noisy, "yx")
    rc, _, err = run(["segment", tmp_path / "a.zarr", "-o", tmp_path / "o", "--volume", *CONST],
                     capfd)
    assert rc == 2 and "have no z" in err
    rc, _, err = run(["segment", tmp_path / "a.zarr", "-o", tmp_path / "o", "--channel-axis",
                      "0", *CONST], capfd)
    assert rc == 2 and "contradicts the OME-Zarr axes" in err
