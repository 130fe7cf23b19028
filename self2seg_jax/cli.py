"""``self2seg`` command line: segment + denoise image files, or run the bundled demo.

Nothing heavy is imported at module import time, so ``self2seg --help`` returns at once
without importing or compiling JAX code. Errors on bad input are one line on stderr with
exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

EPILOG_SEGMENT = """examples:
  self2seg segment cells.tif -o out/
  self2seg segment data/*.tif -o out/ --lam 0.05 --data-filter 3
  self2seg segment zebra.png -o out/ --fg-box 10,10,60,60 --bg-box 100,100,150,150 \\
        --fg-expert linear --bg-expert linear
  self2seg segment img.tif -o out/ --gt img_mask.tif --json
"""


class CLIError(Exception):
    """A user-facing problem: printed as one line, exit code 2."""


def _box(text: str):
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {text!r} must be four integers y0,x0,y1,x1") from None
    if len(vals) != 4:
        raise argparse.ArgumentTypeError(f"box {text!r} must be four integers y0,x0,y1,x1")
    return vals


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--outdir", required=True, type=Path, help="output folder (created)")
    g = p.add_argument_group("method options (defaults: Self2SegConfig)")
    g.add_argument("--lam", type=float, help="TV weight lambda (image normalised to [0,1])")
    g.add_argument("--mu", type=float, help="reference-mask weight mu (eq. (10)); 0 = off")
    g.add_argument("--fg-expert", choices=["n2f", "linear", "constant"])
    g.add_argument("--bg-expert", choices=["n2f", "linear", "constant"])
    g.add_argument("--data-filter", type=int, help="odd mean-filter size for the data terms")
    g.add_argument("--linear-size", type=int, help="filter size of linear experts")
    g.add_argument("--net-width", type=int)
    g.add_argument("--net-depth", type=int)
    g.add_argument("--train-steps", type=int, dest="train_max_steps", help="max Adam steps per W-step")
    g.add_argument("--max-outer", type=int, help="max outer iterations")
    g.add_argument("--pd-max-iter", type=int, help="max primal-dual iterations per u-step")
    g.add_argument("--paper", action="store_true", help="start from Self2SegConfig.paper()")
    g.add_argument("--config", type=Path, help="TOML file with Self2SegConfig fields (and 'seed', 'init')")
    p.add_argument("--seed", type=int, default=None, help="PRNG seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout (only that)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    from self2seg_jax import __version__

    parser = argparse.ArgumentParser(
        prog="self2seg",
        description="Self2Seg: self-supervised joint segmentation and denoising of single noisy "
        "images (Gruber et al., arXiv 2309.10511), in JAX.",
        epilog="Run 'self2seg demo -o out/' for a first look, 'self2seg segment --help' for options.",
    )
    parser.add_argument("--version", action="version", version=f"self2seg_jax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="segment and denoise image files",
        description="Segment + denoise 2-D greyscale images (TIFF, PNG, JPEG, .npy). For each "
        "IMAGE writes <name>_mask.tif (uint8 0/1), <name>_denoised.tif (float32), "
        "<name>_overlay.png and <name>_report.json into OUTDIR.",
        epilog=EPILOG_SEGMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    seg.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    _add_common(seg)
    seg.add_argument("--init", default=None,
                     help="'otsu' (default), a threshold in (0,1), or a mask file")
    seg.add_argument("--fg-box", type=_box, action="append", default=[], metavar="Y0,X0,Y1,X1")
    seg.add_argument("--bg-box", type=_box, action="append", default=[], metavar="Y0,X0,Y1,X1")
    seg.add_argument("--gt", type=Path, help="ground-truth mask: report Dice and IoU")
    seg.add_argument("--clean", type=Path, help="clean image: report PSNR and SSIM of the denoised image")
    seg.add_argument("--png", action="store_true", help="write the mask as PNG instead of TIFF")

    demo = sub.add_parser(
        "demo",
        help="run on the bundled DSB2018 nuclei sample with added noise",
        description="Adds Gaussian noise to a crop of the bundled DSB2018 nuclei image, runs "
        "Self2Seg, writes mask, denoised image, figure and report, and prints Dice and PSNR "
        "against the ground truth.",
    )
    _add_common(demo)
    demo.add_argument("--noise", type=float, default=30.0, help="noise std on the 0-255 scale")
    demo.add_argument("--size", type=int, default=128, help="crop size (max 512)")
    return parser


# --------------------------------------------------------------------------------------------


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
    except Exception as e:
        raise CLIError(f"{path}: cannot read TOML config ({e})") from None


def _config_from_args(args) -> tuple:
    from self2seg_jax import Self2SegConfig

    extra = {}
    base = Self2SegConfig.paper() if args.paper else Self2SegConfig()
    fields = {f.name for f in dataclasses.fields(Self2SegConfig)}
    if args.config is not None:
        data = _load_toml(args.config)
        for k, v in data.items():
            if k in ("seed", "init", "fg_box", "bg_box"):
                extra[k] = v
            elif k in fields:
                base = dataclasses.replace(base, **{k: v})
            else:
                raise CLIError(f"{args.config}: unknown option {k!r}")
    for name in ("lam", "mu", "fg_expert", "bg_expert", "data_filter", "linear_size", "net_width",
                 "net_depth", "train_max_steps", "max_outer", "pd_max_iter"):
        v = getattr(args, name, None)
        if v is not None:
            base = dataclasses.replace(base, **{name: v})
    if not args.quiet and not args.json:
        base = dataclasses.replace(base, progress=True)
    try:
        base.validate()
    except ValueError as e:
        raise CLIError(str(e)) from None
    return base, extra


def _versions() -> dict:
    import jax

    import self2seg_jax

    return {
        "self2seg_jax": self2seg_jax.__version__,
        "jax": jax.__version__,
        "python": sys.version.split()[0],
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
    }


def _log(args, msg: str) -> None:
    if not args.quiet and not args.json:
        print(msg, file=sys.stderr, flush=True)


def _install_progress(args, name: str, t0: float) -> None:
    from self2seg_jax import alternating

    def hook(it, e, change, pd_it, steps):
        _log(args, f"  {name}: outer {int(it)}  energy {float(e):.5g}  mask change "
                   f"{float(change):.3%}  pd iters {int(pd_it)}  train steps "
                   f"{[int(s) for s in steps]}  [{time.perf_counter() - t0:.1f} s]")

    alternating.PROGRESS_HOOK[0] = hook


def _run_one(args, config, extra, image, name: str, outdir: Path, *, init, gt=None, clean=None,
             inputs=()) -> dict:
    import jax
    import numpy as np

    from self2seg_jax import io, metrics, segment, viz

    seed = args.seed if args.seed is not None else int(extra.get("seed", 0))
    suffix = ".png" if getattr(args, "png", False) else ".tif"
    paths = {
        "mask": outdir / f"{name}_mask{suffix}",
        "denoised": outdir / f"{name}_denoised.tif",
        "overlay": outdir / f"{name}_overlay.png",
        "report": outdir / f"{name}_report.json",
    }
    resolved_inputs = {Path(p).resolve() for p in inputs}
    for p in paths.values():
        if p.resolve() in resolved_inputs:
            raise CLIError(f"{p}: output would overwrite an input file")
        if p.exists() and not args.overwrite:
            raise CLIError(f"{p}: exists (use --overwrite to replace it)")
    t0 = time.perf_counter()
    _install_progress(args, name, t0)
    res = segment(jax.random.key(seed), image, init=init, config=config)
    jax.block_until_ready(res.u)
    elapsed = time.perf_counter() - t0
    report = {
        "input": name,
        "options": dataclasses.asdict(config),
        "seed": seed,
        "init": init if isinstance(init, (str, float, int)) else type(init).__name__,
        "versions": _versions(),
        "status": res.status,
        "num_outer": res.num_outer,
        "energies": [float(e) for e in res.energies],
        "mask_changes": [float(c) for c in res.mask_changes],
        "pd_iterations": [int(i) for i in res.pd_iterations],
        "train_steps": res.train_steps.tolist(),
        "seconds": round(elapsed, 3),
        "foreground_fraction": float(res.mask.mean()),
        "outputs": {k: str(v) for k, v in paths.items()},
    }
    if gt is not None:
        report["dice"] = metrics.dice(res.mask, gt)
        report["iou"] = metrics.iou(res.mask, gt)
    if clean is not None:
        rng = float(np.max(clean) - np.min(clean))
        report["psnr_denoised"] = metrics.psnr(res.denoised, clean, data_range=rng)
        report["psnr_input"] = metrics.psnr(image, clean, data_range=rng)
        report["ssim_denoised"] = metrics.ssim(res.denoised, clean, data_range=rng)
    try:
        io.write_image(paths["mask"], res.mask.astype(np.uint8), overwrite=args.overwrite)
        io.write_image(paths["denoised"], res.denoised.astype(np.float32), overwrite=args.overwrite)
        fig = viz.overview_figure(image, res, gt=gt, title=name)
        io.write_figure(paths["overlay"], fig, overwrite=args.overwrite)
        import matplotlib.pyplot as plt

        plt.close(fig)
        io.write_json(paths["report"], report, overwrite=args.overwrite)
    except (OSError, FileExistsError) as e:
        raise CLIError(f"cannot write outputs to {outdir}: {e}") from None
    return report


def _check_outdir(outdir: Path) -> None:
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"{outdir}: cannot create output directory ({e.strerror or e})") from None
    if not outdir.is_dir():
        raise CLIError(f"{outdir}: not a directory")
    import os

    if not os.access(outdir, os.W_OK | os.X_OK):
        raise CLIError(f"{outdir}: output directory is not writable")


def cmd_segment(args) -> int:
    from self2seg_jax import Boxes, io

    config, extra = _config_from_args(args)
    _check_outdir(args.outdir)
    fg_boxes = list(args.fg_box) or [tuple(b) for b in extra.get("fg_box", [])]
    bg_boxes = list(args.bg_box) or [tuple(b) for b in extra.get("bg_box", [])]
    init_arg = args.init if args.init is not None else extra.get("init", "otsu")
    gt = clean = None
    if args.gt is not None:
        gt = io.read_image(args.gt) > 0
    if args.clean is not None:
        clean = io.read_image(args.clean)
    init_mask = None
    if not (fg_boxes or bg_boxes) and isinstance(init_arg, str) and init_arg != "otsu":
        try:
            init_arg = float(init_arg)
        except ValueError:
            init_mask = io.read_image(Path(init_arg)) > 0
    summaries, failed = [], 0
    names_seen: set[str] = set()
    for path in args.images:
        name = path.stem
        if name in names_seen:
            name = f"{name}_{len(names_seen)}"
        names_seen.add(name)
        try:
            image = io.read_image(path)
            if fg_boxes or bg_boxes:
                init = Boxes(fg=fg_boxes, bg=bg_boxes)
            elif init_mask is not None:
                init = init_mask
            else:
                init = init_arg
            _log(args, f"{path}: {image.shape[0]}x{image.shape[1]} {image.dtype}")
            rep = _run_one(args, config, extra, image, name, args.outdir, init=init, gt=gt,
                           clean=clean, inputs=args.images)
            summaries.append({"file": str(path), "ok": True, **_short(rep)})
            _log(args, f"{path}: done in {rep['seconds']:.1f} s, {rep['num_outer']} outer "
                       f"iterations, foreground {rep['foreground_fraction']:.1%}"
                 + (f", Dice {rep['dice']:.4f}" if "dice" in rep else ""))
        except (ValueError, CLIError, FileExistsError, FloatingPointError) as e:
            if args.debug:
                raise
            failed += 1
            msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
            print(f"error: {msg}", file=sys.stderr)
            summaries.append({"file": str(path), "ok": False, "error": str(e)})
    if args.json:
        print(json.dumps({"results": summaries, "failed": failed}, indent=2))
    return EXIT_USAGE if failed else EXIT_OK


def _short(rep: dict) -> dict:
    keys = ("status", "num_outer", "seconds", "foreground_fraction", "dice", "iou",
            "psnr_denoised", "psnr_input", "ssim_denoised", "outputs")
    return {k: rep[k] for k in keys if k in rep}


def cmd_demo(args) -> int:
    import numpy as np

    from self2seg_jax import data

    config, extra = _config_from_args(args)
    _check_outdir(args.outdir)
    size = args.size
    if not (16 <= size <= 512):
        raise CLIError(f"--size must be between 16 and 512, got {size}")
    y0, x0 = (512 - size) // 2, (512 - size) // 2
    clean, gt = data.load_sample(crop=(y0, x0, y0 + size, x0 + size))
    seed = args.seed if args.seed is not None else 0
    noisy = data.add_gaussian_noise(seed, clean, args.noise)
    _log(args, f"demo: DSB2018 nuclei crop {size}x{size}, Gaussian noise std {args.noise:g} "
               "(0-255 scale)")
    rep = _run_one(args, config, extra, noisy, "demo", args.outdir, init="otsu", gt=gt, clean=clean)
    from self2seg_jax import io

    io.write_image(args.outdir / "demo_noisy.tif", noisy, overwrite=True)
    out = {
        "dice": rep["dice"],
        "iou": rep["iou"],
        "psnr_noisy": rep["psnr_input"],
        "psnr_denoised": rep["psnr_denoised"],
        "seconds": rep["seconds"],
        "num_outer": rep["num_outer"],
        "outputs": rep["outputs"],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"Dice {rep['dice']:.4f}  IoU {rep['iou']:.4f}  PSNR noisy {rep['psnr_input']:.2f} dB "
              f"-> denoised {rep['psnr_denoised']:.2f} dB  ({rep['num_outer']} outer iterations, "
              f"{rep['seconds']:.1f} s)")
        print(f"outputs in {args.outdir}/: " + ", ".join(Path(p).name for p in rep["outputs"].values()))
    del np
    return EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "segment":
            return cmd_segment(args)
        return cmd_demo(args)
    except (CLIError, ValueError, FileExistsError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
