"""Image files in and out (host side; never jitted).

Reading: TIFF (8/16-bit integer or float), PNG, JPEG and ``.npy``; 2-D images only (a
multi-page TIFF or an image with colour channels is rejected with a message naming the
supported shapes). Writing is atomic: the data go to a temporary file in the target folder,
which is then renamed over the target, so an interrupted run never leaves a half-written file.
Existing files are only replaced when ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

READ_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")


class ImageReadError(ValueError):
    """A file could not be read as a supported 2-D image (message names file and problem)."""


def read_image(path) -> np.ndarray:
    """Read a 2-D image file; raises :class:`ImageReadError` naming the file and the problem."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file not found")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a directory, not an image file")
    suffix = p.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise ImageReadError(
            f"{p}: unsupported format {suffix or '(no extension)'!r}; supported: "
            + ", ".join(READ_SUFFIXES)
        )
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                if len(tif.pages) > 1:
                    raise ImageReadError(
                        f"{p}: multi-page TIFF ({len(tif.pages)} pages) is not supported; "
                        "expected one 2-D (height, width) greyscale image"
                    )
                a = tif.asarray()
        elif suffix == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(p) as im:
                im.load()
                if im.mode in ("L", "I", "I;16", "I;16B", "F", "1"):
                    a = np.asarray(im)
                else:
                    a = np.asarray(im)
                    if a.ndim == 3 and a.shape[-1] in (3, 4) and _is_grey(a):
                        a = a[..., 0]
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(f"{p}: cannot read image ({type(e).__name__}: {e})") from None
    a = np.squeeze(np.asarray(a)) if np.asarray(a).ndim > 2 and 1 in np.asarray(a).shape else np.asarray(a)
    if a.ndim != 2:
        raise ImageReadError(
            f"{p}: image has shape {a.shape}; supported: 2-D (height, width) greyscale images "
            "(colour images and stacks are not supported yet)"
        )
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ImageReadError(f"{p}: unsupported pixel type {a.dtype}")
    return a


def _is_grey(a: np.ndarray) -> bool:
    return bool(np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]))


def _atomic_write(path: Path, writer, *, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (use overwrite / --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_image(path, array, *, overwrite: bool = False) -> Path:
    """Write ``array`` as TIFF (``.tif``/``.tiff``), PNG (8/16-bit integers) or ``.npy``."""
    path = Path(path)
    a = np.asarray(array)
    suffix = path.suffix.lower()

    def writer(tmp):
        if suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, a)
        elif suffix == ".png":
            from PIL import Image

            if a.dtype not in (np.uint8, np.uint16):
                raise ValueError(f"{path}: PNG needs uint8 or uint16 data, got {a.dtype}")
            Image.fromarray(a).save(tmp, format="PNG")
        elif suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, a, allow_pickle=False)
        else:
            raise ValueError(f"{path}: unsupported output format {suffix!r}")

    return _atomic_write(path, writer, overwrite=overwrite)


def write_json(path, obj, *, overwrite: bool = False) -> Path:
    def writer(tmp):
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, default=_json_default)
            fh.write("\n")

    return _atomic_write(Path(path), writer, overwrite=overwrite)


def write_figure(path, fig, *, overwrite: bool = False, dpi: int = 110) -> Path:
    return _atomic_write(
        Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"),
        overwrite=overwrite,
    )


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
