"""The ``segment`` and ``demo`` commands: one function per step of a file's run.

A file goes through :func:`plan_outputs` (paths, never over an input, nothing existing unless
``--overwrite``) -> :func:`segment_image` (the run, with its progress lines, warnings and
compilation time) -> :mod:`~self2seg_jax.cli.report` (report and metrics) ->
:func:`write_outputs` (figure, all files written all-or-nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import warnings as _warnings
from pathlib import Path

from self2seg_jax.cli import report as rpt
from self2seg_jax.cli.parser import CLIError, _is_float, _one_line, config_from_args

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def log(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def error(args, msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def classify(e: BaseException) -> tuple[int, str]:
    """``(exit code, one-line message)`` of an exception."""
    if isinstance(e, (CLIError, ValueError, OSError, FloatingPointError)):
        return EXIT_USAGE, _one_line(e)
    return EXIT_FAIL, (f"internal error ({type(e).__name__}: {_one_line(e)}); rerun with --debug "
                       "for the traceback")


def check_outdir(outdir: Path) -> None:
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


def cache_dir() -> Path:
    """Where the CLI keeps JAX's persistent compilation cache: ``$SELF2SEG_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/self2seg_jax/jax`` (``~/.cache/self2seg_jax/jax``)."""
    if os.environ.get("SELF2SEG_CACHE_DIR"):
        return Path(os.environ["SELF2SEG_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "self2seg_jax" / "jax"


@contextlib.contextmanager
def export_cache_restored():
    """Restore the export cache's folder (:mod:`self2seg_jax.aot`) after a command: the CLI
    turns it on for its process; called in-process (tests, notebooks) it must not stay on."""
    from self2seg_jax import aot

    before = aot.folder()
    try:
        yield
    finally:
        if before is None:
            aot.disable()
        else:
            aot.enable(before)


def use_compile_cache(args) -> None:
    """Turn on JAX's persistent compilation cache (every compiled program is written, so a
    later process with same-shape inputs loads instead of compiling) and the export cache in
    its ``exported`` subfolder (:mod:`self2seg_jax.aot`: the scheme's programs serialised, so
    such a process does not trace them either; ``SELF2SEG_EXPORT_CACHE=0`` leaves that one
    off); ``--no-compile-cache`` leaves both off. An unusable folder only costs the cache,
    never the run."""
    if not getattr(args, "compile_cache", True):
        return
    import jax

    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log(args, f"warning: compilation cache disabled ({path}: {e.strerror or e})")
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if os.environ.get("SELF2SEG_EXPORT_CACHE", "1") != "0":  # skip tracing too (self2seg_jax.aot)
        from self2seg_jax import aot

        try:
            aot.enable(path / "exported")
        except OSError as e:
            log(args, f"warning: export cache disabled ({path / 'exported'}: {e.strerror or e})")


def read(path: Path, what: str | None = None, allow_nd: bool = False):
    from self2seg_jax import io

    try:
        return io.read_image(path, allow_nd=allow_nd)
    except io.ImageReadError as e:
        if what is None:
            raise
        raise CLIError(f"{what}: {e}") from None


def layout_options(args) -> dict:
    """``segment`` keyword arguments of the multi-class / colour / 3-D options."""
    kw = {"num_classes": getattr(args, "classes", None),
          "channel_axis": getattr(args, "channel_axis", None),
          "volume": getattr(args, "volume", False) or None,
          "spacing": getattr(args, "spacing", None)}
    return {k: v for k, v in kw.items() if v is not None}


def spatial_shape(image, kw) -> tuple:
    shape = list(image.shape)
    if "channel_axis" in kw and -len(shape) <= kw["channel_axis"] < len(shape):
        shape.pop(kw["channel_axis"])
    return tuple(shape)


def zarr_layout(args, path: Path, axes: tuple) -> dict:
    """The ``segment`` layout options of an OME-Zarr image, from its axes metadata (``c`` ->
    channel axis, ``z`` -> volume); flags that contradict the metadata are an error."""
    kw = {k: v for k, v in layout_options(args).items() if k in ("num_classes", "spacing")}
    meta = {"channel_axis": axes.index("c") if "c" in axes else None, "volume": "z" in axes}
    flag_c = getattr(args, "channel_axis", None)
    if flag_c is not None and (meta["channel_axis"] is None
                               or flag_c % len(axes) != meta["channel_axis"]):
        raise CLIError(f"{path}: --channel-axis {flag_c} contradicts the OME-Zarr axes "
                       f"{''.join(axes)}; drop it (the metadata says where the channels are)")
    if getattr(args, "volume", False) and not meta["volume"]:
        raise CLIError(f"{path}: --volume, but the OME-Zarr axes {''.join(axes)} have no z")
    if meta["channel_axis"] is not None:
        kw["channel_axis"] = meta["channel_axis"]
    if meta["volume"]:
        kw["volume"] = True
    return kw


def resolve_init(args, extra):
    """``(kind, value)``: ``('otsu', 'otsu' or 'otsu_dark')``, ``('threshold', float)``,
    ``('mask', Path)`` or ``('boxes', Boxes)``."""
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
    from self2seg_jax.initialisation import OTSU_INITS

    if init_arg is None or init_arg in OTSU_INITS:
        return "otsu", init_arg or "otsu"
    if isinstance(init_arg, (int, float)) or _is_float(str(init_arg)):
        t = float(init_arg)
        if not 0.0 < t < 1.0:
            raise CLIError(f"--init threshold must be in (0, 1) (the image is min-max "
                           f"normalised), got {init_arg}")
        return "threshold", t
    return "mask", Path(init_arg)


# ---------------------------------------------------------------------------------------------
# the steps of one file


def figure_kind(args) -> str:
    """What ``<name>_overlay.png`` holds (``--figure``): "overlay" (the default of ``segment``),
    "overview" (the default of ``demo``) or "none" (no file)."""
    kind = getattr(args, "figure", None)
    if kind is None:
        kind = "overview" if getattr(args, "command", None) == "demo" else "overlay"
    return kind


def plan_outputs(args, outdir: Path, name: str, kw: dict, inputs, extra_names=(),
                 zarr: bool = False) -> dict:
    """Output paths of one input, checked: never an input file, nothing existing unless
    ``--overwrite``. ``zarr``: mask and denoised image as OME-Zarr (an OME-Zarr input)."""
    png = getattr(args, "png", False)
    if png and kw.get("volume"):
        raise CLIError("--png cannot hold a 3-D mask; drop --png for volumes")
    mask_ext = ".ome.zarr" if zarr else (".png" if png else ".tif")
    paths = {
        "mask": outdir / f"{name}_mask{mask_ext}",
        "denoised": outdir / f"{name}_denoised{'.ome.zarr' if zarr else '.tif'}",
        "overlay": outdir / f"{name}_overlay.png",
        "report": outdir / f"{name}_report.json",
    }
    if figure_kind(args) == "none":
        del paths["overlay"]
    if kw.get("num_classes", 2) > 2:
        paths["labels"] = outdir / f"{name}_labels{'.ome.zarr' if zarr else '.tif'}"
    for n in extra_names:
        paths[Path(n).stem.removeprefix(f"{name}_")] = outdir / n
    resolved = {Path(p).resolve() for p in inputs if p is not None}
    for p in paths.values():
        if p.resolve() in resolved:
            raise CLIError(f"{p}: output would overwrite an input file; choose another -o")
        if p.is_dir() and not str(p).endswith(".zarr"):
            raise CLIError(f"{p}: output path is a directory")
        if p.exists() and not args.overwrite:
            raise CLIError(f"{p}: exists (use --overwrite to replace it)")
    return paths


@contextlib.contextmanager
def watched():
    """Time a segmentation call and record its warnings and XLA compilations: ``with
    watched() as w: ...``, then ``w["timings"]`` (the report's timing fields) and
    ``w["warnings"]`` (one-line messages)."""
    from self2seg_jax.progress import compilations

    out: dict = {}
    t0 = time.perf_counter()
    with _warnings.catch_warnings(record=True) as caught, compilations() as watch:
        _warnings.simplefilter("always")
        yield out
    out["warnings"] = [_one_line(w.message) for w in caught if issubclass(w.category, Warning)]
    out["timings"] = {"segment_s": round(time.perf_counter() - t0, 4),
                      "compile_s": round(watch["seconds"], 4),
                      "includes_compilation": watch["count"] > 0,
                      "cache_hits": watch["cache_hits"]}


def segment_image(args, config, image, *, init, seed: int, kw: dict, name: str):
    """Run :func:`self2seg_jax.segment` with per-iteration progress lines on stderr; returns
    ``(result, timings, warning messages)``."""
    import jax

    from self2seg_jax.api import segment
    from self2seg_jax.progress import Bar, training_listener

    # one bar per file: a live line on a terminal (training steps with progress_training),
    # the per-iteration lines only when stderr is a file or pipe; nothing with --quiet
    bar = Bar(config.max_outer, config.train_max_steps, name=name,
              target="none" if args.quiet else ("terminal" if sys.stderr.isatty() else "lines"))
    live = config.progress_training and bar.target == "terminal"
    try:
        with watched() as w, (training_listener(bar.training) if live
                              else contextlib.nullcontext()):
            res = segment(jax.random.key(seed), image, init=init, config=config,
                          progress=bar.outer, **kw)
    finally:
        bar.close()
    for m in w["warnings"]:
        log(args, f"  {name}: warning: {m}")
    return res, w["timings"], w["warnings"]


def _view2d(image, res, gt, kw):
    """2-D views for the figure: the middle z slice of a volume, the channel mean of
    a colour image."""
    import numpy as np

    if "channel_axis" in kw:
        image = np.moveaxis(np.asarray(image, np.float32), kw["channel_axis"], -1).mean(-1)
        den = np.moveaxis(res.denoised, kw["channel_axis"], -1).mean(-1)
        res = dataclasses.replace(res, denoised=den)
    if kw.get("volume"):
        z = image.shape[0] // 2
        image, gt = image[z], (gt[z] if gt is not None else None)
        res = dataclasses.replace(res, labels=res.labels[z], denoised=res.denoised[z],
                                  probabilities=res.probabilities[:, z])
    return image, res, gt


def write_outputs(args, paths: dict, name: str, image, res, report: dict, *, gt=None,
                  extra_outputs=None, kw=None, axes=None) -> None:
    """Figure, mask, denoised image, labels, extra arrays and the report, all-or-nothing.
    ``axes``: the OME-Zarr axis names of an OME-Zarr input (its outputs are OME-Zarr too)."""
    import numpy as np

    from self2seg_jax import io, viz

    t1 = time.perf_counter()
    kw = layout_options(args) if kw is None else kw
    kind = figure_kind(args)
    figure = None
    if kind != "none":
        im2, res2, gt2 = _view2d(image, res, gt, kw)
        figure = (viz.overview_figure(im2, res2, gt=gt2, title=name) if kind == "overview"
                  else viz.overlay_rgb(im2, res2.labels, gt=gt2))
    spatial_axes = None if axes is None else "".join(a for a in axes if a != "c")
    try:
        with io.AtomicGroup(overwrite=args.overwrite) as group:
            def put(key, array, labels=True):  # TIFF/PNG, or OME-Zarr for an OME-Zarr input
                if axes is None:
                    group.image(paths[key], array)
                else:
                    group.ome_zarr(paths[key], array, spatial_axes if labels else "".join(axes),
                                   labels=labels)

            put("mask", res.mask.astype(np.uint8))
            put("denoised", res.denoised.astype(np.float32), labels=False)
            if "labels" in paths:
                put("labels", res.labels.astype(np.uint8))
            for key, arr in (extra_outputs or {}).items():
                group.image(paths[key], arr)
            if kind == "overview":
                group.figure(paths["overlay"], figure)
            elif kind == "overlay":
                group.image(paths["overlay"], figure)
            report["timings"]["write_s"] = round(time.perf_counter() - t1, 4)
            group.json(paths["report"], rpt.json_safe(report))
            group.commit()
    except FileExistsError as e:
        raise CLIError(_one_line(e)) from None
    except OSError as e:
        raise CLIError(f"cannot write outputs to {paths['report'].parent} "
                       f"({e.strerror or _one_line(e)})") from None


def process(args, config, extra, image, name: str, *, init, init_desc, gt=None, clean=None,
            inputs=(), extra_outputs=None, t_read: float = 0.0, segmented=None,
            kw=None, axes=None) -> dict:
    """Segment one image and write its outputs; returns its report. ``segmented``: its
    ``(result, timings, warnings)`` when it was segmented already (a batch); ``kw``: its
    layout options (default: the flags'); ``axes``: OME-Zarr axis names (OME-Zarr input)."""
    seed = args.seed if args.seed is not None else int(extra.get("seed", 0))
    kw = layout_options(args) if kw is None else kw
    extra_outputs = dict(extra_outputs or {})
    paths = plan_outputs(args, args.outdir, name, kw, inputs, extra_outputs,
                         zarr=axes is not None)
    spatial = spatial_shape(image, kw)
    if gt is not None and gt.shape != spatial:
        raise CLIError(f"ground truth {args.gt} has shape {gt.shape}, the image has spatial "
                       f"shape {spatial}")
    if clean is not None and clean.shape != image.shape:
        raise CLIError(f"clean image {args.clean} has shape {clean.shape}, the image has shape "
                       f"{image.shape}")
    res, timings, msgs = segmented or segment_image(args, config, image, init=init, seed=seed,
                                                    kw=kw, name=name)
    timings["read_s"] = round(t_read, 4)
    report = rpt.run_report(name=name, image=image, config=config, seed=seed, init_desc=init_desc,
                            layout={k: v for k, v in kw.items() if k != "num_classes"}, res=res,
                            warnings=msgs, timings=timings)
    report.update(rpt.metrics_report(res, image, gt=gt, clean=clean))
    report["outputs"] = {k: str(v) for k, v in paths.items()}
    extra_by_key = {Path(n).stem.removeprefix(f"{name}_"): a for n, a in extra_outputs.items()}
    if axes is not None:
        report["axes"] = "".join(axes)
    write_outputs(args, paths, name, image, res, report, gt=gt, extra_outputs=extra_by_key,
                  kw=kw, axes=axes)
    return report


# ---------------------------------------------------------------------------------------------
# commands


def _join_job(args) -> tuple[int, int]:
    """``(process id, process count)``: 0 and 1, or this process's place in the
    ``--distributed`` job (joined here, before any JAX computation)."""
    given = [v is not None for v in (args.coordinator, args.num_processes, args.process_id)]
    if not args.distributed:
        if any(given):
            raise CLIError("--coordinator/--num-processes/--process-id need --distributed")
        return 0, 1
    from self2seg_jax import distributed

    try:
        distributed.check_arguments(args.coordinator, args.num_processes, args.process_id)
    except ValueError as e:
        raise CLIError(f"--distributed: {e}") from None
    # stdout carries the summary alone: the collectives' libraries (gloo) print to the C-level
    # stdout, which from here on goes to stderr
    sys.stdout.flush()
    args.summary_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    except ValueError as e:
        raise CLIError(f"--distributed: {e}") from None
    return distributed.process_index(), distributed.process_count()


def cmd_segment(args) -> int:
    config, extra = config_from_args(args)
    init_kind, init_val = resolve_init(args, extra)
    pid, nproc = _join_job(args)
    check_outdir(args.outdir)
    use_compile_cache(args)
    kw = layout_options(args)
    nd = bool(kw)
    gt = (read(args.gt, "--gt", nd) > 0) if args.gt is not None else None
    clean = read(args.clean, "--clean", nd) if args.clean is not None else None
    init_mask, init_desc = None, init_val
    if init_kind == "mask":
        init_mask = read(init_val, "--init mask", nd)
        init_mask = init_mask.astype("int32") if kw.get("num_classes", 2) > 2 else init_mask > 0
        init_desc = {"mask": str(init_val)}
    elif init_kind == "boxes":
        init_desc = {"fg_boxes": [list(b) for b in init_val.fg],
                     "bg_boxes": [list(b) for b in init_val.bg]}
    inputs = list(args.images) + [args.gt, args.clean, args.config]
    if init_kind == "mask":
        inputs.append(init_val)

    from self2seg_jax import io

    n = len(args.images)
    names, used = [], set()
    for path in args.images:
        stem = path.stem.removesuffix(".ome") if io.is_ome_zarr(path) else path.stem
        name, k = stem, 1
        while name in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name)
        names.append(name)

    def load(i):
        """``(image, init, t_read, layout, axes)`` of file ``i`` (``axes``: an OME-Zarr's,
        else None); raises CLIError/OSError on a bad file."""
        path = args.images[i]
        t0 = time.perf_counter()
        axes = None
        if io.is_ome_zarr(path):
            image, axes = io.read_ome_zarr(path)
            layout = zarr_layout(args, path, axes)
        else:
            image, layout = read(path, allow_nd=nd), kw
        t_read = time.perf_counter() - t0
        if image.ndim == 3 and not layout:
            raise CLIError(f"{path}: has 3 axes {image.shape}; pass --channel-axis -1 for a "
                           "colour image or --volume for a (z, y, x) stack")
        if init_kind == "mask" and init_mask.shape != spatial_shape(image, layout):
            raise CLIError(f"--init mask {init_val} has shape {init_mask.shape}, the "
                           f"image has shape {image.shape}")
        return image, (init_mask if init_kind == "mask" else init_val), t_read, layout, axes

    def one_file(i, segmented=None, loaded=None):
        """Process file ``i``; returns its summary row (errors are rows, not exceptions)."""
        path = args.images[i]
        prefix = f"[{i + 1}/{n}] " if n > 1 else ""
        try:
            image, init, t_read, layout, axes = loaded or load(i)
            log(args, f"{prefix}{path}: {'x'.join(map(str, image.shape))} {image.dtype}"
                + (f" (OME-Zarr axes {''.join(axes)})" if axes else ""))
            rep = process(args, config, extra, image, names[i], init=init, init_desc=init_desc,
                          gt=gt, clean=clean, inputs=inputs, t_read=t_read, segmented=segmented,
                          kw=layout, axes=axes)
            log(args, rpt.done_line(prefix, path, rep))
            return {"file": str(path), "ok": True, **rpt.short(rep)}
        except KeyboardInterrupt:
            raise
        except Exception as e:
            if args.debug:
                raise
            code, msg = classify(e)
            msg = msg if msg.startswith(str(path)) else f"{path}: {msg}"
            error(args, msg)
            return {"file": str(path), "ok": False, "error": msg, "code": code}

    if nproc == 1 and not args.distributed and not args.batch:
        rows = [one_file(i) for i in range(n)]
    else:
        rows = _batched_rows(args, config, extra, n, pid, nproc, load, one_file)
    return _finish(args, rows, pid, nproc)


def _batched_rows(args, config, extra, n, pid, nproc, load, one_file) -> list[dict]:
    """This process's share of a ``--distributed`` run (or of a one-process ``--batch`` run,
    ``nproc = 1``): every process reads every file; files
    of a shape that several share form a global batch (:func:`self2seg_jax.segment_batch`
    over all processes' devices, every image with the key of a one-process run), file ``j``
    of a batch written by process ``j mod N``; the other files go to processes in turn
    (:func:`self2seg_jax.distributed.assign`). A batch that fails falls back to files one by
    one, so a bad image gets its own error."""
    import jax
    import jax.numpy as jnp

    from self2seg_jax import distributed
    from self2seg_jax.batch import segment_batch

    loaded, groups = {}, {}
    for i in range(n):
        try:
            loaded[i] = load(i)
            layout = tuple(sorted(loaded[i][3].items()))
            groups.setdefault((loaded[i][0].shape, layout, loaded[i][4]), []).append(i)
        except Exception:  # noqa: BLE001 — reported by the file's owner below
            pass
    batches = [g for g in groups.values() if len(g) > 1]
    in_batch = {i for g in batches for i in g}
    singles = [i for i in range(n) if i not in in_batch]
    rows = []
    seed = args.seed if args.seed is not None else int(extra.get("seed", 0))
    for g in batches:
        mine = distributed.assign(len(g), nproc, pid)
        kw = loaded[g[0]][3]
        try:
            with watched() as w:
                keys = jnp.stack([jax.random.key(seed)] * len(g))
                res = segment_batch(keys, [loaded[i][0] for i in g],
                                    init=[loaded[i][1] for i in g], config=config, **kw)
        except Exception as e:  # noqa: BLE001 — the same in every process: go file by file
            if args.debug:
                raise
            log(args, f"batch of {len(g)} files failed ({_one_line(e)}); one by one")
            singles += g
            continue
        timings = {**w["timings"], "batch_size": len(g), "batch_processes": nproc}
        for j in mine:
            rows.append(one_file(g[j], segmented=(res.item(j), dict(timings), w["warnings"]),
                                 loaded=loaded[g[j]]))
    singles.sort()
    for j in distributed.assign(len(singles), nproc, pid):
        rows.append(one_file(singles[j], loaded=loaded.get(singles[j])))
    for r in rows:
        r["process"] = pid
    if nproc > 1:
        rows = sum(distributed.gather(rows), [])
    order = {str(p): k for k, p in enumerate(args.images)}
    return sorted(rows, key=lambda r: order[r["file"]])


def _finish(args, rows: list[dict], pid: int, nproc: int) -> int:
    """The run's end: one count line and (``--json``) one summary, from process 0 only; the
    exit code of every process follows the whole job's rows."""
    n = len(rows)
    codes = [r.pop("code") for r in rows if not r["ok"]]
    failed = len(codes)
    if pid == 0:
        if n > 1:
            log(args, f"{n - failed} of {n} files done" + (f", {failed} failed" if failed else "")
                + (f" ({nproc} processes)" if nproc > 1 else ""))
        if args.json:
            print(json.dumps(rpt.json_safe({"results": rows, "ok": n - failed,
                                            "failed": failed}), indent=2), flush=True,
                  file=getattr(args, "summary_out", None) or sys.stdout)
    if not failed:
        return EXIT_OK
    return EXIT_USAGE if EXIT_USAGE in codes else EXIT_FAIL


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def cmd_demo(args) -> int:
    size, noise = args.size, args.noise
    if not 16 <= size <= 512:
        raise CLIError(f"--size must be between 16 and 512, got {size}")
    if not (math.isfinite(noise) and noise >= 0):
        raise CLIError(f"--noise must be a finite number >= 0, got {noise}")
    config, extra = config_from_args(args)
    check_outdir(args.outdir)
    use_compile_cache(args)

    from self2seg_jax import data

    y0 = x0 = (512 - size) // 2
    clean, gt = data.load_sample(crop=(y0, x0, y0 + size, x0 + size))
    seed = args.seed if args.seed is not None else int(extra.get("seed", 0))
    noisy = data.add_gaussian_noise(seed, clean, noise)
    log(args, f"demo: DSB2018 nuclei crop {size}x{size} at ({y0}, {x0}), Gaussian noise std "
              f"{noise:g} (0-255 scale)")
    rep = process(args, config, extra, noisy, "demo", init="otsu", init_desc="otsu", gt=gt,
                  clean=clean, extra_outputs={"demo_noisy.tif": noisy})
    out = {"dice": rep["dice"], "iou": rep["iou"], "psnr_noisy": rep["psnr_input"],
           "psnr_denoised": rep["psnr_denoised"], "ssim_denoised": rep["ssim_denoised"],
           "status": rep["status"], "num_outer": rep["num_outer"], "seconds": rep["seconds"],
           "outputs": rep["outputs"]}
    if args.json:
        print(json.dumps(rpt.json_safe(out), indent=2), flush=True)
    else:
        comp = " incl. compilation" if rep["timings"]["includes_compilation"] else ""
        print(f"Dice {_fmt(rep['dice'], '.4f')}  IoU {_fmt(rep['iou'], '.4f')}  PSNR noisy "
              f"{_fmt(rep['psnr_input'], '.2f')} dB -> denoised "
              f"{_fmt(rep['psnr_denoised'], '.2f')} dB  ({rep['num_outer']} outer iterations, "
              f"{rep['seconds']:.1f} s{comp})")
        names = ", ".join(Path(p).name for p in rep["outputs"].values())
        print(f"outputs in {args.outdir}: {names}")
    return EXIT_OK
