"""Command-line parser and option resolution (defaults < ``--paper`` / TOML < flags).

The method flags and their help texts are generated from :class:`Self2SegConfig`'s fields
(those with ``cli`` metadata), so a new setting or default needs no change here. Nothing
heavy is imported: ``self2seg --help`` and ``--version`` never import JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from pathlib import Path

from self2seg_jax import __version__
from self2seg_jax.config import CHOICES, PRESETS, Self2SegConfig

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
  self2seg segment bricks.png -o out/ --preset textures --lam 0.06
  self2seg segment cells.tif -o out/ --figure overview   # 4 panels with the energy curve

A --config TOML file holds Self2SegConfig fields at top level, plus optionally 'seed',
'init' (\"otsu\", \"otsu_dark\", a threshold, or a mask file relative to the TOML file),
'fg_box' / 'bg_box' (lists of [y0, x0, y1, x1]) and 'preset = "textures"' (or
'paper = true'). Command-line options override it, e.g.

  lam = 0.02
  net_width = 16
  train_max_steps = 200
  init_denoise = true
  seed = 1

exit status: 0 success; 2 bad input or options, or some file failed; 1 internal error.
"""

EPILOG_DEMO = """examples:
  self2seg demo -o demo_out
  self2seg demo -o demo_out --size 256 --noise 50 --data-filter 3 --json
"""

EXTRA_KEYS = ("seed", "init", "fg_box", "bg_box", "paper", "preset")
FIELDS = {f.name: f for f in dataclasses.fields(Self2SegConfig)}
CLI_FIELDS = tuple(f for f in FIELDS.values() if "cli" in f.metadata)
FIGURES = ("overlay", "overview", "none")


def _number_or_auto(text: str):
    """A ``float | str`` field's flag (``--lam``): a number or ``auto``."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


_TYPES = {"float": float, "int": int, "str": str, "float | str": _number_or_auto}


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit code 2."""


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=90)


def _box(text: str):
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r} must be four integers y0,x0,y1,x1")
    return vals


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        msg = f"expected comma-separated numbers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata["cli"]["flag"] or "--" + field.name.replace("_", "-")


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`Self2SegConfig` field with ``cli`` metadata."""
    g = p.add_argument_group("method options (defaults: Self2SegConfig; override --config)")
    for f in CLI_FIELDS:
        meta = f.metadata["cli"]
        if f.type == "bool":
            state = "on" if f.default else "off"
            g.add_argument(flag_name(f), dest=f.name, action=argparse.BooleanOptionalAction,
                           default=None, help=f"{f.metadata['help']} (default: {state})")
            continue
        kw = {"choices": CHOICES[f.name]} if f.name in CHOICES else {"metavar": meta["metavar"]}
        g.add_argument(flag_name(f), dest=f.name, type=_TYPES[f.type], default=None,
                       help=f"{f.metadata['help']} (default {f.default:g})"
                       if f.type.startswith("float") else
                       f"{f.metadata['help']} (default {f.default})", **kw)
    g.add_argument("--preset", choices=PRESETS, default=None,
                   help="start from a named configuration (Self2SegConfig.preset): nuclei (the "
                        "defaults: objects brighter or darker than a flat background), textures "
                        "(regions that differ in texture, not in mean: two CNN experts, "
                        "blind-spot data terms), paper (= --paper)")
    g.add_argument("--paper", action="store_true",
                   help="start from Self2SegConfig.paper() (the authors' 64x8 CNNs, slow)")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML file with Self2SegConfig fields (and seed, init, fg_box, bg_box)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--outdir", required=True, type=Path,
                   help="output folder (created if missing)")
    _add_method_options(p)
    p.add_argument("--seed", type=int, default=None, help="PRNG seed (default 0)")
    p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                   help="do not use the persistent compilation cache (default: on, in "
                   "$SELF2SEG_CACHE_DIR or the user cache folder: a second run of the same "
                   "shape skips compiling)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--figure", choices=FIGURES, default=None,
                   help="<name>_overlay.png: 'overlay' (segment's default: the image at full "
                   "resolution, mask outline in yellow, ground truth's in cyan; no matplotlib), "
                   "'overview' (demo's default: input | denoised | mask | energy per iteration, "
                   "about 1 s more per process) or 'none' (not written)")
    p.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout (and nothing else on stdout)")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks instead of one-line errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="self2seg", epilog=EPILOG_MAIN, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrap("Self2Seg: self-supervised joint segmentation and denoising of single "
                          "noisy images (Gruber et al., arXiv 2309.10511), in JAX."))
    parser.add_argument("--version", action="version", version=f"self2seg_jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment", help="segment and denoise image files", epilog=EPILOG_SEGMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrap(
            "Segment + denoise images (TIFF 8/16-bit or float, PNG, JPEG, .npy; colour and "
            "stacks with the options below). For each IMAGE writes <name>_mask.tif (uint8 0/1; "
            ".png with --png), <name>_denoised.tif (float32), <name>_overlay.png (--figure) and "
            "<name>_report.json (options, versions, device, energies, iteration counts, "
            "timings, metrics) into OUTDIR."))
    seg.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image file(s)")
    _add_common(seg)
    gi = seg.add_argument_group("initialisation (default: Otsu, bright objects)")
    gi.add_argument("--init", default=None, metavar="INIT",
                    help="'otsu' (default; objects brighter than their background), "
                    "'otsu_dark' (objects darker than their background), a threshold in (0,1) "
                    "on the normalised image, or a mask file (non-zero = foreground)")
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
                    help="grid step per spatial axis, e.g. 3,1,1 when z steps are 3x the "
                    "pixel size")
    ge = seg.add_argument_group("evaluation and output")
    ge.add_argument("--gt", type=Path, metavar="MASK",
                    help="ground-truth mask (non-zero = foreground): report Dice and IoU")
    ge.add_argument("--clean", type=Path, metavar="IMAGE",
                    help="clean image: report PSNR and SSIM of the denoised image")
    ge.add_argument("--png", action="store_true", help="write the mask as PNG instead of TIFF")
    gd = seg.add_argument_group(
        "batches and many processes (one per host or SLURM task; see the README)")
    gd.add_argument("--batch", action="store_true",
                    help="segment files of one shape together (self2seg_jax.segment_batch): "
                    "split over every device of this node, on a CPU several at once from as "
                    "many threads as cores; the same outputs as one by one, no progress bars "
                    "for them")
    gd.add_argument("--distributed", action="store_true",
                    help="join a jax.distributed job: files of one shape are segmented as "
                    "global batches over every process's devices, the others are split "
                    "between processes; each output is written once; process 0 prints the "
                    "summary")
    gd.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                    help="process 0's address (with --num-processes and --process-id; without "
                    "the three the cluster's environment is read, e.g. SLURM)")
    gd.add_argument("--num-processes", type=int, default=None, metavar="N")
    gd.add_argument("--process-id", type=int, default=None, metavar="I")

    demo = sub.add_parser(
        "demo", help="run on the bundled DSB2018 nuclei sample with added noise",
        epilog=EPILOG_DEMO, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrap(
            "Adds Gaussian noise to a centre crop of the bundled DSB2018 nuclei image, runs "
            "Self2Seg, writes demo_mask.tif, demo_denoised.tif, demo_noisy.tif, "
            "demo_overlay.png and demo_report.json, and prints Dice and PSNR against the "
            "ground truth."))
    _add_common(demo)
    demo.add_argument("--noise", type=float, default=30.0, metavar="STD",
                      help="Gaussian noise std on the 0-255 scale (default 30)")
    demo.add_argument("--size", type=int, default=128, metavar="N",
                      help="crop size, 16..512 (default 128)")
    return parser


# ---------------------------------------------------------------------------------------------
# configuration: defaults < --paper / TOML < flags


def _one_line(e) -> str:
    return " ".join(str(e).split()) or type(e).__name__


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
    """Check a TOML value against a :class:`Self2SegConfig` field's type."""
    t = field.type
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "float | str" and value == "auto":  # lam: a number or "auto"
        return value
    if t.startswith("float") and is_num:
        return float(value)
    if (t == "int" and isinstance(value, int) and not isinstance(value, bool)) or (
            t == "bool" and isinstance(value, bool)) or (t == "str" and isinstance(value, str)):
        return value
    kind = {"float": "a number", "float | str": "a number or 'auto'", "int": "an integer",
            "bool": "true or false", "str": "a string"}.get(t, t)
    raise CLIError(f"{where}: option {field.name!r} must be {kind}, got {value!r}")


def _toml_box_list(value, key: str, where: str) -> list:
    ok = isinstance(value, list) and all(
        isinstance(b, list) and len(b) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) for v in b) for b in value)
    if not ok:
        raise CLIError(f"{where}: {key!r} must be a list of [y0, x0, y1, x1] integer lists")
    return [tuple(b) for b in value]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_toml_options(path: Path) -> tuple[dict, dict]:
    """``(config fields, extra keys)`` of a TOML file, type-checked."""
    where, fields, extra = str(path), {}, {}
    for k, v in _load_toml(path).items():
        if k == "seed":
            if not (isinstance(v, int) and not isinstance(v, bool)):
                raise CLIError(f"{where}: 'seed' must be an integer, got {v!r}")
            extra["seed"] = v
        elif k == "init":
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise CLIError(f"{where}: 'init' must be \"otsu\", \"otsu_dark\", a threshold "
                               f"or a mask file name, got {v!r}")
            from self2seg_jax.initialisation import OTSU_INITS

            if isinstance(v, str) and v not in OTSU_INITS and not _is_float(v):
                v = str(Path(path).parent / v)  # relative to the TOML file
            extra["init"] = v
        elif k in ("fg_box", "bg_box"):
            extra[k] = _toml_box_list(v, k, where)
        elif k == "paper":
            if not isinstance(v, bool):
                raise CLIError(f"{where}: 'paper' must be true or false, got {v!r}")
            extra["paper"] = v
        elif k == "preset":
            if v not in PRESETS:
                raise CLIError(f"{where}: 'preset' must be one of {', '.join(PRESETS)}, got {v!r}")
            extra["preset"] = v
        elif k == "progress":
            raise CLIError(f"{where}: 'progress' is set on the command line (--quiet)")
        elif k in FIELDS:
            fields[k] = _typed(FIELDS[k], v, where)
        else:
            known = ", ".join(sorted(set(FIELDS) - {"progress"} | set(EXTRA_KEYS)))
            raise CLIError(f"{where}: unknown option {k!r} (known: {known})")
    return fields, extra


def config_from_args(args) -> tuple[Self2SegConfig, dict]:
    """``(Self2SegConfig, extra)`` from the parsed arguments; ``extra`` holds the TOML's
    ``seed``, ``init``, ``fg_box``, ``bg_box``."""
    fields, extra = _read_toml_options(args.config) if args.config is not None else ({}, {})
    toml_paper, toml_preset = extra.pop("paper", False), extra.pop("preset", None)
    named = {n for n in (getattr(args, "preset", None), toml_preset,
                         "paper" if args.paper or toml_paper else None) if n}
    if len(named) > 1:
        raise CLIError(f"conflicting presets: {', '.join(sorted(named))} (--preset, --paper or "
                       f"the TOML file's 'preset' / 'paper'); name one")
    try:
        base = Self2SegConfig.preset(named.pop() if named else "nuclei", **fields)
    except (TypeError, ValueError) as e:
        raise CLIError(f"{args.config}: {_one_line(e)}" if fields else
                       f"invalid option: {_one_line(e)}") from None
    flags = {f.name: getattr(args, f.name) for f in CLI_FIELDS
             if getattr(args, f.name, None) is not None}
    try:
        return base.replace(**flags), extra
    except (TypeError, ValueError) as e:
        raise CLIError(f"invalid option: {_one_line(e)}") from None
