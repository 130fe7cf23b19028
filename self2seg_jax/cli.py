"""``self2seg`` command line: segment + denoise image files, or run the bundled demo.

Nothing heavy is imported when the parser is built, so ``self2seg --help`` and
``self2seg --version`` return at once without importing JAX (the version is read from the
package source, not by importing the package). Problems with the input (missing, unreadable
or unsupported files, bad shapes, NaN/Inf pixels, constant images, boxes outside the image,
an output folder that cannot be written, ...) are reported as one line on stderr,
``error: <file>: <problem>``, with exit code 2; ``--debug`` shows the traceback instead. In a
batch, a bad file is reported and the other files are still processed; the exit code is then
2. Outputs are written all-or-nothing per input (temporary files renamed into place), never
over an input file, and never over an existing file without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG_MAIN = """examples:
  self2seg demo -o demo_out                       # bundled DSB2018 nuclei crop + noise
  self2seg segment cells.tif -o out/              # writes out/cells_{mask,denoised}.tif, ...
  self2seg segment data/*.tif -o out/ --quiet --json > summary.json

exit status: 0 success; 2 bad input or options, or some file of a batch failed;
1 internal error; 130 interrupted.
"""

EPILOG_SEGMENT = """examples:
  self2seg segment cells.tif -o out/
  self2seg segment data/*.tif -o out/ --lam 0.05 --data-filter 3
  self2seg segment zebra.png -o out/ --fg-box 10,10,60,60 --bg-box 100,100,150,150 \\
        --fg-expert linear --bg-expert linear
  self2seg segment img.tif -o out/ --init 0.4 --gt img_mask.tif --clean img_clean.tif --json
  self2seg segment img.tif -o out/ --config settings.toml --overwrite

A --config TOML file holds Self2SegConfig fields at top level, plus optionally 'seed',
'init' (\"otsu\", a threshold, or a mask file relative to the TOML file), 'fg_box' / 'bg_box'
(lists of [y0, x0, y1, x1]) and 'paper = true'. Command-line options override it, e.g.

  lam = 0.02
  net_width = 16
  train_max_steps = 200
  init_denoise = false
  seed = 1

exit status: 0 success; 2 bad input or options, or some file failed; 1 internal error.
"""

EPILOG_DEMO = """examples:
  self2seg demo -o demo_out
  self2seg demo -o demo_out --size 256 --noise 50 --data-filter 3 --json
"""


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit code 2."""


# ---------------------------------------------------------------------------------------------
# parser (must stay free of heavy imports)


def package_version() -> str:
    """The package version, without importing the package (which imports JAX)."""
    try:
        text = (Path(__file__).with_name("__init__.py")).read_text(encoding="utf-8")
        m = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.M)
        if m:
            return m.group(1)
    except OSError:  # pragma: no cover - zipped installs
        pass
    try:  # pragma: no cover
        from importlib.metadata import version

        return version("self2seg_jax")
    except Exception:  # pragma: no cover
        return "unknown"


def _box(text: str):
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r} must be four integers y0,x0,y1,x1")
    return vals


# Defaults quoted in --help (the parser must not import the config module, which imports JAX);
# tests/test_cli.py checks them against Self2SegConfig().
HELP_DEFAULTS = {
    "lam": 0.03, "mu": 0.01, "fg_expert": "n2f", "bg_expert": "constant", "data_filter": 1,
    "linear_size": 15, "net_width": 32, "net_depth": 4, "learning_rate": 0.001,
    "train_max_steps": 400, "max_outer": 8, "pd_max_iter": 3000, "init_denoise": True,
    "data_term": "output",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    d = HELP_DEFAULTS
    p.add_argument("-o", "--outdir", required=True, type=Path,
                   help="output folder (created if missing)")
    g = p.add_argument_group("method options (defaults: Self2SegConfig; override --config)")
    g.add_argument("--lam", type=float, metavar="LAM",
                   help="TV weight lambda (image normalised to [0,1]); about 0.005..0.1, "
                   f"larger = smoother (default {d['lam']:g})")
    g.add_argument("--mu", type=float, metavar="MU",
                   help=f"reference-mask weight mu (eq. (10)); 0 = off (default {d['mu']:g})")
    g.add_argument("--fg-expert", choices=["n2f", "linear", "constant"],
                   help="foreground expert: CNN, linear filter or region mean "
                   f"(default {d['fg_expert']})")
    g.add_argument("--bg-expert", choices=["n2f", "linear", "constant"],
                   help=f"background expert (default {d['bg_expert']})")
    g.add_argument("--data-filter", type=int, metavar="K",
                   help="odd mean-filter size for the data terms, 3 at high noise "
                   f"(default {d['data_filter']} = off)")
    g.add_argument("--data-term", choices=["output", "blind_spot"],
                   help="experts' residuals from their outputs (paper) or from blind-spot "
                   "predictions that never see the pixel's own noise (two classes only; "
                   f"default {d['data_term']})")
    g.add_argument("--linear-size", type=int, metavar="K",
                   help=f"odd filter size of linear experts (default {d['linear_size']})")
    g.add_argument("--net-width", type=int, metavar="C",
                   help=f"CNN expert channels (default {d['net_width']})")
    g.add_argument("--net-depth", type=int, metavar="L",
                   help=f"CNN expert 3x3 conv layers (default {d['net_depth']})")
    g.add_argument("--learning-rate", type=float, metavar="LR",
                   help=f"Adam step size (default {d['learning_rate']:g})")
    g.add_argument("--train-steps", type=int, dest="train_max_steps", metavar="N",
                   help=f"max Adam steps per expert training (default {d['train_max_steps']})")
    g.add_argument("--max-outer", type=int, metavar="N",
                   help=f"max outer iterations (default {d['max_outer']})")
    g.add_argument("--pd-max-iter", type=int, metavar="N",
                   help=f"max primal-dual iterations per mask step (default {d['pd_max_iter']})")
    g.add_argument("--init-denoise", action=argparse.BooleanOptionalAction, default=None,
                   help="threshold the Noise2Fast-denoised image for the Otsu/threshold "
                   f"initialisation (default: {'on' if d['init_denoise'] else 'off'})")
    g.add_argument("--paper", action="store_true",
                   help="start from Self2SegConfig.paper() (64x8 CNNs, slow)")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML file with Self2SegConfig fields (and seed, init, fg_box, bg_box)")
    p.add_argument("--seed", type=int, default=None, help="PRNG seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout (and nothing else on stdout)")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks instead of one-line errors")


def _wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(text, width=90)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="self2seg",
        description=_wrap("Self2Seg: self-supervised joint segmentation and denoising of single "
                          "noisy images (Gruber et al., arXiv 2309.10511), in JAX."),
        epilog=EPILOG_MAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"self2seg_jax {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="segment and denoise image files",
        description=_wrap(
            "Segment + denoise 2-D greyscale images (TIFF 8/16-bit or float, PNG, JPEG, .npy). "
            "For each IMAGE writes <name>_mask.tif (uint8 0/1; .png with --png), "
            "<name>_denoised.tif (float32), <name>_overlay.png and <name>_report.json (options, "
            "versions, device, energies, iteration counts, timings, metrics) into OUTDIR."),
        epilog=EPILOG_SEGMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seg.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                     help="2-D greyscale image file(s)")
    _add_common(seg)
    gi = seg.add_argument_group("initialisation (default: Otsu)")
    gi.add_argument("--init", default=None, metavar="INIT",
                    help="'otsu' (default), a threshold in (0,1) on the normalised image, or a "
                    "mask file (non-zero = foreground)")
    gi.add_argument("--fg-box", type=_box, action="append", default=[], metavar="Y0,X0,Y1,X1",
                    help="foreground box (half-open pixel ranges); repeatable")
    gi.add_argument("--bg-box", type=_box, action="append", default=[], metavar="Y0,X0,Y1,X1",
                    help="background box; repeatable (default: outside the foreground boxes)")
    gm = seg.add_argument_group(
        "multi-class, colour and 3-D (a 3-axis file is never guessed: say what it is)")
    gm.add_argument("--classes", type=int, default=None, metavar="C",
                    help="number of classes C >= 2 (default 2); C > 2 also writes "
                    "<name>_labels.tif (uint8 0..C-1; --init may then be a label image)")
    gm.add_argument("--channel-axis", type=int, default=None, metavar="AXIS",
                    help="the file has colour/channels on this axis (e.g. -1 for RGB)")
    gm.add_argument("--volume", action="store_true",
                    help="the file is a (z, y, x) stack (multi-page TIFF or .npy): 3-D TV and "
                    "3-D CNN experts")
    gm.add_argument("--spacing", type=_floats, default=None, metavar="DZ,DY,DX",
                    help="grid step per spatial axis, e.g. 3,1,1 when z steps are 3x the pixel size")
    ge = seg.add_argument_group("evaluation and output")
    ge.add_argument("--gt", type=Path, metavar="MASK",
                    help="ground-truth mask (non-zero = foreground): report Dice and IoU")
    ge.add_argument("--clean", type=Path, metavar="IMAGE",
                    help="clean image: report PSNR and SSIM of the denoised image")
    ge.add_argument("--png", action="store_true", help="write the mask as PNG instead of TIFF")

    demo = sub.add_parser(
        "demo",
        help="run on the bundled DSB2018 nuclei sample with added noise",
        description=_wrap(
            "Adds Gaussian noise to a centre crop of the bundled DSB2018 nuclei image, runs "
            "Self2Seg, writes demo_mask.tif, demo_denoised.tif, demo_noisy.tif, "
            "demo_overlay.png and demo_report.json, and prints Dice and PSNR against the "
            "ground truth."),
        epilog=EPILOG_DEMO,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(demo)
    demo.add_argument("--noise", type=float, default=30.0, metavar="STD",
                      help="Gaussian noise std on the 0-255 scale (default 30)")
    demo.add_argument("--size", type=int, default=128, metavar="N",
                      help="crop size, 16..512 (default 128)")
    return parser


# ---------------------------------------------------------------------------------------------
# configuration

_EXTRA_KEYS = ("seed", "init", "fg_box", "bg_box", "paper")
_FLAG_FIELDS = ("lam", "mu", "fg_expert", "bg_expert", "data_filter", "linear_size", "net_width",
                "net_depth", "learning_rate", "train_max_steps", "max_outer", "pd_max_iter",
                "init_denoise", "data_term")


def _load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise CLIError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise CLIError(f"{path}: config file is a directory") from None
    except OSError as e:
        raise CLIError(f"{path}: cannot read config file ({e.strerror or e})") from None
    except Exception as e:
        raise CLIError(f"{path}: invalid TOML ({_one_line(e)})") from None


def _typed(field: dataclasses.Field, value, where: str):
    """Check a TOML value against a Self2SegConfig field type (annotations are strings)."""
    t = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "float" and is_num:
        return float(value)
    if t == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if t == "bool" and isinstance(value, bool):
        return value
    if t == "str" and isinstance(value, str):
        return value
    kind = {"float": "a number", "int": "an integer", "bool": "true or false",
            "str": "a string"}.get(t, t)
    raise CLIError(f"{where}: option {field.name!r} must be {kind}, got {value!r}")


def _toml_box_list(value, key: str, where: str) -> list:
    ok = isinstance(value, list) and all(
        isinstance(b, list) and len(b) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) for v in b)
        for b in value
    )
    if not ok:
        raise CLIError(f"{where}: {key!r} must be a list of [y0, x0, y1, x1] integer lists")
    return [tuple(b) for b in value]


def _config_from_args(args) -> tuple:
    """``(Self2SegConfig, extra)``: defaults < --paper / TOML < command-line flags."""
    from self2seg_jax.config import Self2SegConfig

    extra: dict = {}
    data: dict = {}
    fields = {f.name: f for f in dataclasses.fields(Self2SegConfig)}
    if args.config is not None:
        where = str(args.config)
        data = _load_toml(args.config)
        for k, v in data.items():
            if k == "seed":
                if not (isinstance(v, int) and not isinstance(v, bool)):
                    raise CLIError(f"{where}: 'seed' must be an integer, got {v!r}")
                extra["seed"] = v
            elif k == "init":
                if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                    raise CLIError(f"{where}: 'init' must be \"otsu\", a threshold or a mask "
                                   f"file name, got {v!r}")
                if isinstance(v, str) and v != "otsu" and not _is_float(v):
                    v = str(Path(args.config).parent / v)  # relative to the TOML file
                extra["init"] = v
            elif k in ("fg_box", "bg_box"):
                extra[k] = _toml_box_list(v, k, where)
            elif k == "paper":
                if not isinstance(v, bool):
                    raise CLIError(f"{where}: 'paper' must be true or false, got {v!r}")
            elif k == "progress":
                raise CLIError(f"{where}: 'progress' is set on the command line (--quiet)")
            elif k in fields:
                data[k] = _typed(fields[k], v, where)
            else:
                known = ", ".join(sorted(set(fields) - {"progress"} | set(_EXTRA_KEYS)))
                raise CLIError(f"{where}: unknown option {k!r} (known: {known})")
    paper = args.paper or bool(data.get("paper", False))
    base = Self2SegConfig.paper() if paper else Self2SegConfig()
    if args.config is not None:  # errors from the file name the file
        try:
            base = dataclasses.replace(base, **{k: v for k, v in data.items() if k in fields})
            base.validate()
        except (TypeError, ValueError) as e:
            raise CLIError(f"{args.config}: {_one_line(e)}") from None
    try:
        for name in _FLAG_FIELDS:
            v = getattr(args, name, None)
            if v is not None:
                base = dataclasses.replace(base, **{name: v})
        if base.train_min_steps > base.train_max_steps:  # same schedule, consistent report
            base = dataclasses.replace(base, train_min_steps=base.train_max_steps)
        # Progress is always compiled in (one cheap host callback per outer iteration) so that
        # quiet / --json / verbose runs share one compiled program; the hook decides to print.
        base = dataclasses.replace(base, progress=True)
        base.validate()
    except (TypeError, ValueError) as e:
        raise CLIError(f"invalid option: {_one_line(e)}") from None
    return base, extra


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# helpers


def _one_line(e) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _log(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _finite_or_none(obj):
    """JSON-safe copy: NaN/Inf floats become None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _versions() -> dict:
    import platform

    import jax
    import jaxlib
    import numpy as np

    dev = jax.devices()[0]
    return {
        "self2seg_jax": package_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{dev.id} ({getattr(dev, 'device_kind', '?')})",
    }


def _check_outdir(outdir: Path) -> None:
    import tempfile

    if outdir.exists() and not outdir.is_dir():
        raise CLIError(f"{outdir}: output directory exists and is not a directory")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{outdir}: cannot create output directory ({e.strerror or e})") from None
    try:
        with tempfile.TemporaryFile(dir=outdir):
            pass
    except OSError as e:
        raise CLIError(f"{outdir}: output directory is not writable ({e.strerror or e})") from None


def _classify(e: BaseException) -> tuple[int, str]:
    """``(exit code, one-line message)`` of an exception."""
    if isinstance(e, (CLIError, ValueError, OSError, FloatingPointError)):
        return EXIT_USAGE, _one_line(e)
    return EXIT_FAIL, (f"internal error ({type(e).__name__}: {_one_line(e)}); rerun with --debug "
                       "for the traceback")


def _error(args, msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


class _Progress:
    """Installs the per-outer-iteration host callback for one file; restores the old one."""

    def __init__(self, args, name: str):
        self.args, self.name = args, name

    def __enter__(self):
        from self2seg_jax import alternating

        self._mod = alternating
        self._old = alternating.PROGRESS_HOOK[0]
        t0 = time.perf_counter()
        args, name = self.args, self.name

        def hook(it, e, change, pd_it, steps):
            if args.quiet:
                return
            _log(args, f"  {name}: outer {int(it)}  energy {float(e):.5g}  mask change "
                       f"{float(change):.3%}  pd iters {int(pd_it)}  train steps "
                       f"{[int(s) for s in steps]}  [{time.perf_counter() - t0:.1f} s]")

        alternating.PROGRESS_HOOK[0] = hook
        return self

    def __exit__(self, *exc):
        self._mod.PROGRESS_HOOK[0] = self._old


# ---------------------------------------------------------------------------------------------
# one image


def _floats(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    return vals


def _nd_options(args) -> dict:
    """segment() keyword arguments of the multi-class / colour / 3-D options."""
    kw = {}
    if getattr(args, "classes", None) is not None:
        kw["num_classes"] = args.classes
    if getattr(args, "channel_axis", None) is not None:
        kw["channel_axis"] = args.channel_axis
    if getattr(args, "volume", False):
        kw["volume"] = True
    if getattr(args, "spacing", None) is not None:
        kw["spacing"] = args.spacing
    return kw


def _spatial_shape(image, kw) -> tuple:
    shape = list(image.shape)
    if "channel_axis" in kw and -len(shape) <= kw["channel_axis"] < len(shape):
        shape.pop(kw["channel_axis"])
    return tuple(shape)


def _view2d(image, res, gt, kw):
    """2-D views for the overview figure: the middle z slice of a volume, the channel mean of
    a colour image."""
    import numpy as np

    if "channel_axis" in kw:
        image = np.moveaxis(np.asarray(image, np.float32), kw["channel_axis"], -1).mean(-1)
        res = dataclasses.replace(
            res, denoised=np.moveaxis(res.denoised, kw["channel_axis"], -1).mean(-1))
    if kw.get("volume"):
        z = image.shape[0] // 2
        image = image[z]
        res = dataclasses.replace(res, mask=res.mask[z], denoised=res.denoised[z], u=res.u[z])
        gt = gt[z] if gt is not None else None
    return image, res, gt


def _output_paths(outdir: Path, name: str, png: bool) -> dict:
    return {
        "mask": outdir / f"{name}_mask{'.png' if png else '.tif'}",
        "denoised": outdir / f"{name}_denoised.tif",
        "overlay": outdir / f"{name}_overlay.png",
        "report": outdir / f"{name}_report.json",
    }


def _check_outputs(paths, inputs, overwrite: bool) -> None:
    resolved = {Path(p).resolve() for p in inputs if p is not None}
    for p in paths:
        if p.resolve() in resolved:
            raise CLIError(f"{p}: output would overwrite an input file; choose another -o")
        if p.is_dir():
            raise CLIError(f"{p}: output path is a directory")
        if p.exists() and not overwrite:
            raise CLIError(f"{p}: exists (use --overwrite to replace it)")


def _check_same_shape(what: str, path, a, image) -> None:
    if a is not None and a.shape != image.shape:
        raise CLIError(f"{what} {path} has shape {a.shape}, the image has shape {image.shape}")


def _run_one(args, config, extra, image, name: str, outdir: Path, *, init, init_desc,
             gt=None, clean=None, inputs=(), extra_outputs=None, t_read: float = 0.0) -> dict:
    """Segment one image and write its outputs (all-or-nothing); returns its report."""
    import warnings

    import jax
    import numpy as np

    from self2seg_jax import alternating, io, metrics, viz
    from self2seg_jax.api import segment

    seed = args.seed if args.seed is not None else int(extra.get("seed", 0))
    kw = _nd_options(args)
    paths = _output_paths(outdir, name, getattr(args, "png", False))
    if kw.get("num_classes", 2) > 2:
        paths["labels"] = outdir / f"{name}_labels.tif"
    if getattr(args, "png", False) and kw.get("volume"):
        raise CLIError("--png cannot hold a 3-D mask; drop --png for volumes")
    extra_outputs = dict(extra_outputs or {})
    _check_outputs(list(paths.values()) + [outdir / n for n in extra_outputs], inputs,
                   args.overwrite)
    spatial = _spatial_shape(image, kw)
    if gt is not None and gt.shape != spatial:
        raise CLIError(f"ground truth {args.gt} has shape {gt.shape}, the image has spatial "
                       f"shape {spatial}")
    _check_same_shape("clean image", getattr(args, "clean", None), clean, image)

    t0 = time.perf_counter()
    from self2seg_jax import multiclass

    traces0 = alternating.TRACE_COUNT[0] + multiclass.TRACE_COUNT[0]
    with warnings.catch_warnings(record=True) as caught, _Progress(args, name):
        warnings.simplefilter("always")
        res = segment(jax.random.key(seed), image, init=init, config=config, **kw)
    t_seg = time.perf_counter() - t0
    compiled = alternating.TRACE_COUNT[0] + multiclass.TRACE_COUNT[0] != traces0
    warn_msgs = [_one_line(w.message) for w in caught if issubclass(w.category, Warning)]
    for w in warn_msgs:
        _log(args, f"  {name}: warning: {w}")

    report = {
        "input": name,
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "options": {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"},
        "seed": seed,
        "init": init_desc,
        "versions": _versions(),
        "status": res.status,
        "num_outer": res.num_outer,
        "energies": [float(e) for e in res.energies],
        "mask_changes": [float(c) for c in res.mask_changes],
        "pd_iterations": [int(i) for i in res.pd_iterations],
        "train_steps": np.asarray(res.train_steps).tolist(),
        "foreground_fraction": float(res.mask.mean()),
        "num_classes": int(res.probabilities.shape[0]),
        "class_fractions": np.bincount(res.labels.ravel(), minlength=res.probabilities.shape[0])
        .astype(float).__truediv__(res.labels.size).tolist(),
        "layout": {k: v for k, v in kw.items() if k != "num_classes"},
        "warnings": warn_msgs,
    }
    if gt is not None:
        report["dice"] = metrics.dice(res.mask, gt)
        report["iou"] = metrics.iou(res.mask, gt)
    if clean is not None:
        rng = float(np.max(clean) - np.min(clean)) or 1.0
        report["psnr_denoised"] = metrics.psnr(res.denoised, clean, data_range=rng)
        report["psnr_input"] = metrics.psnr(image, clean, data_range=rng)
        report["ssim_denoised"] = metrics.ssim(res.denoised, clean, data_range=rng)
    outputs = {k: str(v) for k, v in paths.items()}
    outputs.update({Path(n).stem.removeprefix(f"{name}_"): str(outdir / n) for n in extra_outputs})
    report["outputs"] = outputs

    t1 = time.perf_counter()
    im2, res2, gt2 = _view2d(image, res, gt, kw)
    fig = viz.overview_figure(im2, res2, gt=gt2, title=name)
    try:
        with io.AtomicGroup(overwrite=args.overwrite) as group:
            group.image(paths["mask"], res.mask.astype(np.uint8))
            group.image(paths["denoised"], res.denoised.astype(np.float32))
            if "labels" in paths:
                group.image(paths["labels"], res.labels.astype(np.uint8))
            for n, arr in extra_outputs.items():
                group.image(outdir / n, arr)
            group.figure(paths["overlay"], fig)
            t_write = time.perf_counter() - t1
            report["timings"] = {
                "read_s": round(t_read, 4),
                "segment_s": round(t_seg, 4),
                "includes_compilation": compiled,
                "write_s": round(t_write, 4),
            }
            report["seconds"] = round(t_seg, 3)
            report = _finite_or_none(report)
            group.json(paths["report"], report)
            group.commit()
    except FileExistsError as e:
        raise CLIError(f"{_one_line(e)}") from None
    except OSError as e:
        raise CLIError(f"cannot write outputs to {outdir} ({e.strerror or _one_line(e)})") from None
    return report


def _short(rep: dict) -> dict:
    keys = ("status", "num_outer", "seconds", "foreground_fraction", "dice", "iou",
            "psnr_denoised", "psnr_input", "ssim_denoised", "warnings", "outputs")
    return {k: rep[k] for k in keys if k in rep}


# ---------------------------------------------------------------------------------------------
# commands


def _resolve_init(args, extra):
    """``(kind, value)``: ``('otsu', 'otsu')``, ``('threshold', float)``, ``('mask', Path)``
    or ``('boxes', Boxes)``."""
    fg_boxes = list(args.fg_box) or list(extra.get("fg_box", []))
    bg_boxes = list(args.bg_box) or list(extra.get("bg_box", []))
    init_arg = args.init if args.init is not None else extra.get("init")
    if fg_boxes or bg_boxes:
        if args.init is not None:
            raise CLIError("use either --init or --fg-box/--bg-box, not both")
        if not fg_boxes:
            raise CLIError("--bg-box needs at least one --fg-box")
        from self2seg_jax.initialisation import Boxes

        return "boxes", Boxes(fg=fg_boxes, bg=bg_boxes)
    if init_arg is None or init_arg == "otsu":
        return "otsu", "otsu"
    if isinstance(init_arg, (int, float)) or _is_float(str(init_arg)):
        t = float(init_arg)
        if not (0.0 < t < 1.0):
            raise CLIError(f"--init threshold must be in (0, 1) (the image is min-max "
                           f"normalised), got {init_arg}")
        return "threshold", t
    return "mask", Path(init_arg)


def _read(path: Path, what: str | None = None, allow_nd: bool = False):
    from self2seg_jax import io

    if what is None:
        return io.read_image(path, allow_nd=allow_nd)
    try:
        return io.read_image(path, allow_nd=allow_nd)
    except io.ImageReadError as e:
        raise CLIError(f"{what}: {e}") from None


def cmd_segment(args) -> int:
    config, extra = _config_from_args(args)
    init_kind, init_val = _resolve_init(args, extra)
    _check_outdir(args.outdir)
    nd = bool(_nd_options(args))
    multi = (args.classes or 2) > 2
    gt = (_read(args.gt, "--gt", nd) > 0) if args.gt is not None else None
    clean = _read(args.clean, "--clean", nd) if args.clean is not None else None
    init_mask = None
    if init_kind == "mask":
        init_mask = _read(init_val, "--init mask", nd)
        init_mask = init_mask.astype("int32") if multi else init_mask > 0
        init_desc = {"mask": str(init_val)}
    elif init_kind == "boxes":
        init_desc = {"fg_boxes": [list(b) for b in init_val.fg],
                     "bg_boxes": [list(b) for b in init_val.bg]}
    else:
        init_desc = init_val
    inputs = list(args.images) + [args.gt, args.clean, args.config]
    if init_kind == "mask":
        inputs.append(init_val)

    summaries, codes = [], []
    used_names: set[str] = set()
    n = len(args.images)
    for i, path in enumerate(args.images, 1):
        name = path.stem
        k = 1
        while name in used_names:
            name = f"{path.stem}_{k}"
            k += 1
        used_names.add(name)
        prefix = f"[{i}/{n}] " if n > 1 else ""
        try:
            t0 = time.perf_counter()
            image = _read(path, allow_nd=nd)
            t_read = time.perf_counter() - t0
            if image.ndim == 3 and not nd:
                raise CLIError(f"{path}: has 3 axes {image.shape}; pass --channel-axis -1 for a "
                               "colour image or --volume for a (z, y, x) stack")
            if init_kind == "mask":
                if init_mask.shape != _spatial_shape(image, _nd_options(args)):
                    raise CLIError(f"--init mask {init_val} has shape {init_mask.shape}, the "
                                   f"image has shape {image.shape}")
                init = init_mask
            else:
                init = init_val
            _log(args, f"{prefix}{path}: {'x'.join(map(str, image.shape))} {image.dtype}")
            rep = _run_one(args, config, extra, image, name, args.outdir, init=init,
                           init_desc=init_desc, gt=gt, clean=clean, inputs=inputs,
                           t_read=t_read)
            summaries.append({"file": str(path), "ok": True, **_short(rep)})
            comp = " (incl. compilation)" if rep["timings"]["includes_compilation"] else ""
            _log(args, f"{prefix}{path}: done in {rep['seconds']:.1f} s{comp}, "
                       f"{rep['num_outer']} outer iterations ({rep['status']}), foreground "
                       f"{rep['foreground_fraction']:.1%}"
                 + (f", Dice {rep['dice']:.4f}" if rep.get("dice") is not None else "")
                 + (f", PSNR {rep['psnr_denoised']:.2f} dB"
                    if rep.get("psnr_denoised") is not None else ""))
        except KeyboardInterrupt:
            raise
        except Exception as e:
            if args.debug:
                raise
            code, msg = _classify(e)
            codes.append(code)
            if not msg.startswith(str(path)):
                msg = f"{path}: {msg}"
            _error(args, msg)
            summaries.append({"file": str(path), "ok": False, "error": msg})
    failed = len(codes)
    if n > 1:
        _log(args, f"{n - failed} of {n} files done" + (f", {failed} failed" if failed else ""))
    if args.json:
        print(json.dumps(_finite_or_none({"results": summaries, "ok": n - failed,
                                          "failed": failed}), indent=2), flush=True)
    if not failed:
        return EXIT_OK
    return EXIT_USAGE if EXIT_USAGE in codes else EXIT_FAIL


def cmd_demo(args) -> int:
    size, noise = args.size, args.noise
    if not (16 <= size <= 512):
        raise CLIError(f"--size must be between 16 and 512, got {size}")
    if not (math.isfinite(noise) and noise >= 0):
        raise CLIError(f"--noise must be a finite number >= 0, got {noise}")
    config, extra = _config_from_args(args)
    _check_outdir(args.outdir)

    from self2seg_jax import data

    y0 = x0 = (512 - size) // 2
    clean, gt = data.load_sample(crop=(y0, x0, y0 + size, x0 + size))
    seed = args.seed if args.seed is not None else int(extra.get("seed", 0))
    noisy = data.add_gaussian_noise(seed, clean, noise)
    _log(args, f"demo: DSB2018 nuclei crop {size}x{size} at ({y0}, {x0}), Gaussian noise std "
               f"{noise:g} (0-255 scale)")
    rep = _run_one(args, config, extra, noisy, "demo", args.outdir, init="otsu",
                   init_desc="otsu", gt=gt, clean=clean, extra_outputs={"demo_noisy.tif": noisy})
    out = {
        "dice": rep["dice"],
        "iou": rep["iou"],
        "psnr_noisy": rep["psnr_input"],
        "psnr_denoised": rep["psnr_denoised"],
        "ssim_denoised": rep["ssim_denoised"],
        "status": rep["status"],
        "num_outer": rep["num_outer"],
        "seconds": rep["seconds"],
        "outputs": rep["outputs"],
    }
    if args.json:
        print(json.dumps(_finite_or_none(out), indent=2), flush=True)
    else:
        comp = " incl. compilation" if rep["timings"]["includes_compilation"] else ""
        print(f"Dice {_fmt(rep['dice'], '.4f')}  IoU {_fmt(rep['iou'], '.4f')}  PSNR noisy "
              f"{_fmt(rep['psnr_input'], '.2f')} dB -> denoised "
              f"{_fmt(rep['psnr_denoised'], '.2f')} dB  ({rep['num_outer']} outer iterations, "
              f"{rep['seconds']:.1f} s{comp})")
        print(f"outputs in {args.outdir}: "
              + ", ".join(Path(p).name for p in rep["outputs"].values()))
    return EXIT_OK


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def main(argv=None) -> int:
    """Entry point of ``self2seg``; returns the exit code (``--help`` returns 0)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a usage error (2, message printed)
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "segment":
            return cmd_segment(args)
        return cmd_demo(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        code, msg = _classify(e)
        _error(args, msg)
        if args.json:
            print(json.dumps({"error": msg, "exit_code": code}), flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
