"""Image files in and out (host side; never jitted; imports no JAX).

Reading: TIFF (8/16/32-bit integer or float), PNG, JPEG and ``.npy``; 2-D greyscale images
only. A multi-page TIFF, a stack or an image with colour channels is rejected with a message
naming the file and the supported shapes (an RGB(A) PNG/JPEG whose three colour channels are
identical and whose alpha, if any, is constant is accepted as the greyscale image it is).
OME-Zarr (OME-NGFF) images: :func:`read_ome_zarr` (level 0 and the axes of its metadata) and
:func:`write_ome_zarr` (written as a directory, atomically renamed into place).

Writing is atomic: the data go to a hidden temporary file in the target folder, which is then
renamed over the target (``os.replace``), so an interrupted run never leaves a half-written
file, and a failed write leaves neither the target nor the temporary file behind. Existing
files are only replaced when ``overwrite=True``. :class:`AtomicGroup` extends this to a set of
files: all are written to temporary files first and only renamed into place once every one
of them has been written, so a failure leaves none of the targets.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

READ_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")
WRITE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
SUPPORTED_SHAPES = (
    "supported here: one 2-D (height, width) greyscale image; colour images and multi-page "
    "stacks need the multi-channel / volume options (self2seg segment --channel-axis -1 for "
    "colour, --volume for a z-stack)"
)
SUPPORTED_ND = "supported: 2-D, colour (h, w, L), stacks (z, y, x) and (z, y, x, L)"

_GREY_PIL_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1")


class ImageReadError(ValueError):
    """A file could not be read as a supported 2-D image (message names file and problem)."""


def read_image(path, *, allow_nd: bool = False) -> np.ndarray:
    """Read a 2-D greyscale image file as a NumPy array (its own dtype; bool becomes uint8).

    With ``allow_nd=True`` colour images (``(h, w, 3|4)``; a constant alpha is dropped) and
    multi-page TIFF stacks (``(z, y, x)`` or ``(z, y, x, L)``) are returned as they are, up to
    4 axes; what the axes mean is the caller's to say.

    Raises:
      ImageReadError: (a ``ValueError``) missing / unreadable file, unsupported format, shape
        or pixel type; the message starts with the file name.
    """
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
            a = _read_tiff(p, allow_nd)
        elif suffix == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            a = _read_pil(p, allow_nd)
    except ImageReadError:
        raise
    except Exception as e:
        msg = f"{type(e).__name__}: {_one_line(e)}"
        raise ImageReadError(f"{p}: cannot read image ({msg})") from None
    a = np.asarray(a)
    if a.ndim > 2:
        # drop singleton page / channel axes, e.g. (1, h, w) or (h, w, 1)
        a = a.reshape([n for n in a.shape if n != 1]) if a.ndim - 2 == a.shape.count(1) else a
    if allow_nd:
        if a.ndim == 3 and a.shape[-1] == 4 and np.all(a[..., 3] == a.flat[3]):
            a = a[..., :3]  # constant alpha
        if not 2 <= a.ndim <= 4:
            raise ImageReadError(f"{p}: image has shape {a.shape}; {SUPPORTED_ND}")
    elif a.ndim != 2:
        raise ImageReadError(f"{p}: image has shape {a.shape}; {SUPPORTED_SHAPES}")
    if a.size == 0:
        raise ImageReadError(f"{p}: image is empty (shape {a.shape})")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ImageReadError(
            f"{p}: unsupported pixel type {a.dtype}; supported: integer or floating-point pixels"
        )
    return a


def _read_tiff(p: Path, allow_nd: bool = False) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(p) as tif:
        n = len(tif.pages)
        if n == 0:
            raise ImageReadError(f"{p}: cannot read image (TIFF contains no image)")
        if n > 1 and not allow_nd:
            raise ImageReadError(f"{p}: multi-page TIFF ({n} pages); {SUPPORTED_SHAPES}")
        a = tif.asarray()
    if a.ndim == 3 and a.shape[-1] in (3, 4) and _is_grey(a) and not allow_nd:
        a = a[..., 0]
    return a


def _read_pil(p: Path, allow_nd: bool = False) -> np.ndarray:
    from PIL import Image

    with Image.open(p) as im:
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            raise ImageReadError(f"{p}: image has {n_frames} frames; {SUPPORTED_SHAPES}")
        im.load()
        if im.mode in _GREY_PIL_MODES:
            return np.asarray(im)
        if im.mode == "P":  # palette: look the colours up
            im = im.convert("RGBA")
        elif im.mode == "LA":
            im = im.convert("RGBA")
        elif im.mode not in ("RGB", "RGBA"):
            raise ImageReadError(f"{p}: unsupported colour mode {im.mode!r}; {SUPPORTED_SHAPES}")
        a = np.asarray(im)
    if _is_grey(a):
        return a[..., 0]
    if allow_nd:
        return a
    raise ImageReadError(f"{p}: colour image with shape {a.shape}; {SUPPORTED_SHAPES}")


def _is_grey(a: np.ndarray) -> bool:
    """RGB(A) with three identical colour channels and a constant (or no) alpha channel."""
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        return False
    grey = np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    if a.shape[-1] == 4:
        grey = grey and bool(np.all(a[..., 3] == a[0, 0, 3]))
    return bool(grey)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# ---------------------------------------------------------------------------------------------
# atomic writing


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (use overwrite / --overwrite to replace it)")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_for(path: Path) -> str:
    """A new hidden temporary file next to ``path`` with the usual permissions (not 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except (AttributeError, OSError):  # pragma: no cover - Windows
        pass
    finally:
        os.close(fd)
    return tmp


def _unlink_quiet(tmp) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def _atomic_write(path: Path, writer: Callable[[str], None], *, overwrite: bool) -> Path:
    path = Path(path)
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_for(path)
    try:
        writer(tmp)
        if not overwrite and path.exists():  # appeared while we were writing
            raise FileExistsError(f"{path}: exists (use overwrite / --overwrite to replace it)")
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return path


class AtomicGroup:
    """Write several files all-or-nothing.

    ``add(path, writer)`` writes to a temporary file next to ``path`` at once; ``commit()``
    renames all of them into place. Leaving the ``with`` block with an exception (or without
    ``commit()``) removes every temporary file and leaves the targets untouched::

        with io.AtomicGroup(overwrite=False) as g:
            g.image(out / "a_mask.tif", mask)
            g.json(out / "a_report.json", report)
            g.commit()
    """

    def __init__(self, *, overwrite: bool = False):
        self.overwrite = overwrite
        self._pending: list[tuple[str, Path]] = []
        self.committed: list[Path] = []

    def __enter__(self) -> AtomicGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    def add(self, path, writer: Callable[[str], None], *, directory: bool = False) -> None:
        """Write ``path`` through ``writer(tmp)`` now, rename it at :meth:`commit`.
        ``directory``: the target is a directory (``writer`` fills an empty temporary one)."""
        path = Path(path)
        if directory:
            if path.exists() and not path.is_dir():
                raise FileExistsError(f"{path}: exists and is not a directory")
            if path.exists() and not self.overwrite:
                raise FileExistsError(f"{path}: exists (use overwrite / --overwrite to replace "
                                      "it)")
        else:
            _check_target(path, self.overwrite)
        if any(path == q for _, q in self._pending):
            raise ValueError(f"{path}: written twice in one group")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = (tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
               if directory else _tmp_for(path))
        try:
            writer(tmp)
        except BaseException:
            _remove_quiet(tmp)
            raise
        self._pending.append((tmp, path))

    def image(self, path, array) -> None:
        self.add(path, _image_writer(Path(path), array))

    def json(self, path, obj) -> None:
        self.add(path, _json_writer(obj))

    def figure(self, path, fig, dpi: int = 110) -> None:
        self.add(path, _figure_writer(fig, dpi))

    def ome_zarr(self, path, array, axes: str, *, labels: bool = False) -> None:
        """An OME-Zarr image (a directory): see :func:`write_ome_zarr`."""
        self.add(path, _ome_zarr_writer(array, axes, labels), directory=True)

    def commit(self) -> list[Path]:
        if not self.overwrite:
            for _, path in self._pending:
                if path.exists():
                    raise FileExistsError(f"{path}: exists (use overwrite / --overwrite to "
                                          "replace it)")
        while self._pending:
            tmp, path = self._pending[0]
            if Path(tmp).is_dir():
                _replace_dir(tmp, path)
            else:
                os.replace(tmp, path)
            self._pending.pop(0)
            self.committed.append(path)
        return list(self.committed)

    def abort(self) -> None:
        for tmp, _ in self._pending:
            _remove_quiet(tmp)
        self._pending = []


def _remove_quiet(tmp) -> None:
    import shutil

    if Path(tmp).is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        _unlink_quiet(tmp)


def _replace_dir(tmp, path: Path) -> None:
    """Rename the directory ``tmp`` to ``path``; an existing ``path`` (overwrite) is moved
    aside first and removed only after the new one is in place."""
    import shutil

    old = None
    if path.exists():
        old = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent)
        os.rmdir(old)
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _image_writer(path: Path, array) -> Callable[[str], None]:
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported output format {suffix!r}; supported: " + ", ".join(WRITE_SUFFIXES)
        )
    if suffix == ".png" and a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: PNG needs uint8 or uint16 data, got {a.dtype}")

    def writer(tmp):
        if suffix in (".tif", ".tiff"):
            import tifffile

            rgb = a.ndim == 3 and a.shape[-1] in (3, 4)
            tifffile.imwrite(tmp, a, photometric="rgb" if rgb else "minisblack")
        elif suffix == ".png":
            from PIL import Image

            # zlib level 3: half the time of PIL's default 6 on a 2048^2 RGB overlay, ~10 %
            # smaller files there
            Image.fromarray(a).save(tmp, format="PNG", compress_level=3)
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, a, allow_pickle=False)

    return writer


def _json_writer(obj) -> Callable[[str], None]:
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n"

    def writer(tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return writer


def _figure_writer(fig, dpi: int) -> Callable[[str], None]:
    return lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")


def write_image(path, array, *, overwrite: bool = False) -> Path:
    """Write ``array`` as TIFF (``.tif``/``.tiff``), PNG (uint8/uint16) or ``.npy``, atomically."""
    path = Path(path)
    return _atomic_write(path, _image_writer(path, array), overwrite=overwrite)


def write_json(path, obj, *, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON (NumPy scalars/arrays and paths converted), atomically."""
    return _atomic_write(Path(path), _json_writer(obj), overwrite=overwrite)


def write_figure(path, fig, *, overwrite: bool = False, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG, atomically."""
    return _atomic_write(Path(path), _figure_writer(fig, dpi), overwrite=overwrite)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------
# OME-Zarr (OME-NGFF): axes from the metadata, written atomically as directories

ZARR_SUFFIX = ".zarr"  # also ".ome.zarr"
OME_AXES = ("t", "c", "z", "y", "x")


def is_ome_zarr(path) -> bool:
    """Whether ``path`` names an OME-Zarr image (``.zarr`` / ``.ome.zarr``)."""
    return Path(path).suffix.lower() == ZARR_SUFFIX


def _ome_zarr_libs():
    try:
        import zarr  # noqa: F401
        from ome_zarr import io as ome_io
        from ome_zarr import reader as ome_reader
        from ome_zarr import writer as ome_writer
    except ImportError:
        raise ImageReadError("OME-Zarr needs the 'ome-zarr' package: pip install "
                             "'self2seg_jax[zarr]'") from None
    return ome_io, ome_reader, ome_writer


def read_ome_zarr(path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Level 0 of an OME-NGFF image and its axis names, as the metadata gives them.

    A time axis of length 1 and a ``c`` or ``z`` axis of length 1 are dropped; the remaining
    axes are some of ``c, z, y, x`` (in the file's order), ``y`` and ``x`` always present.

    Raises:
      ImageReadError: missing path, not an OME-Zarr image, no axes metadata (NGFF < 0.4),
        a time series, an unknown axis, or unsupported pixels; the message starts with the path.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: not found")
    ome_io, ome_reader, _ = _ome_zarr_libs()
    try:
        import contextlib
        import logging

        logging.getLogger("ome_zarr").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(None):
            loc = ome_io.parse_url(str(p), mode="r")
            nodes = list(ome_reader.Reader(loc)()) if loc is not None else []
    except Exception as e:  # noqa: BLE001 — any library error: a one-line message
        raise ImageReadError(f"{p}: cannot read OME-Zarr ({type(e).__name__}: "
                             f"{_one_line(e)})") from None
    node = next((n for n in nodes if n.data and "axes" in n.metadata), None)
    if node is None:
        why = "no multiscale image with axes metadata (OME-NGFF >= 0.4)" if nodes else \
            "not an OME-Zarr image"
        raise ImageReadError(f"{p}: {why}")
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in node.metadata["axes"]]
    a = np.asarray(node.data[0])
    if len(axes) != a.ndim:
        raise ImageReadError(f"{p}: {len(axes)} axes in the metadata for an array of shape "
                             f"{a.shape}")
    unknown = [n for n in axes if n not in OME_AXES]
    if unknown or "y" not in axes or "x" not in axes:
        raise ImageReadError(f"{p}: axes {axes}; supported: some of {OME_AXES} with y and x")
    for name in ("t", "z", "c"):
        if name in axes and a.shape[axes.index(name)] == 1:
            a = a.squeeze(axes.index(name))
            axes.remove(name)
    if "t" in axes:
        raise ImageReadError(f"{p}: a time series ({a.shape[axes.index('t')]} time points); "
                             "segment one time point at a time")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ImageReadError(f"{p}: unsupported pixel type {a.dtype}")
    return a, tuple(axes)


def _ome_zarr_writer(array, axes: str, labels: bool) -> Callable[[str], None]:
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if len(axes) != a.ndim:
        raise ValueError(f"axes {axes!r} do not match an array of shape {a.shape}")

    def writer(tmpdir):
        import zarr

        _, _, ome_writer = _ome_zarr_libs()
        root = zarr.open_group(tmpdir, mode="w")
        ome_writer.write_image(a, root, axes=list(axes), scale_factors=[])
        if labels:  # the same mask as a label image, so viewers (napari) show it as labels
            ome_writer.write_labels(a, root, name="mask", axes=list(axes), scaler=None,
                                    scale_factors=[])

    return writer


def write_ome_zarr(path, array, axes: str, *, labels: bool = False,
                   overwrite: bool = False) -> Path:
    """Write ``array`` (axes named by ``axes``, e.g. ``"zyx"``) as a one-level OME-Zarr image,
    atomically (a hidden temporary directory renamed into place); ``labels`` adds it as the
    label image ``labels/mask`` too."""
    with AtomicGroup(overwrite=overwrite) as g:
        g.ome_zarr(path, array, axes, labels=labels)
        return g.commit()[0]
