"""The per-file JSON report and the batch summary of the command line (plain dicts)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SHORT_KEYS = ("status", "num_outer", "lam", "seconds", "foreground_fraction", "dice", "iou",
              "psnr_denoised", "psnr_input", "ssim_denoised", "warnings", "outputs")


def json_safe(obj):
    """JSON-safe copy: NaN/Inf floats become None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def run_report(*, name, image, config, seed, init_desc, layout, res, warnings, timings) -> dict:
    """What a run did: input, options, versions and device, the scheme's trace, timings."""
    from self2seg_jax import provenance

    c = res.probabilities.shape[0]
    return {
        "input": name,
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "options": {k: v for k, v in dataclasses.asdict(config).items() if k != "progress"},
        "seed": seed,
        "init": init_desc,
        "versions": provenance.versions(),
        "status": res.status,
        "num_outer": res.num_outer,
        "lam": float(res.lam),  # the value used (options.lam may say "auto")
        "energies": [float(e) for e in res.energies],
        "mask_changes": [float(v) for v in res.mask_changes],
        "pd_iterations": [int(i) for i in res.pd_iterations],
        "train_steps": np.asarray(res.train_steps).tolist(),
        "foreground_fraction": float(res.mask.mean()),
        "num_classes": int(c),
        "class_fractions": (np.bincount(res.labels.ravel(), minlength=c)
                            / res.labels.size).tolist(),
        "layout": layout,
        "warnings": warnings,
        "timings": timings,
        "seconds": round(timings["segment_s"], 3),
    }


def metrics_report(res, image, *, gt=None, clean=None) -> dict:
    """Dice/IoU against a ground-truth mask, PSNR/SSIM against a clean image (if given)."""
    from self2seg_jax import metrics

    out = {}
    if gt is not None:
        out["dice"] = metrics.dice(res.mask, gt)
        out["iou"] = metrics.iou(res.mask, gt)
    if clean is not None:
        rng = float(np.max(clean) - np.min(clean)) or 1.0
        out["psnr_denoised"] = metrics.psnr(res.denoised, clean, data_range=rng)
        out["psnr_input"] = metrics.psnr(image, clean, data_range=rng)
        out["ssim_denoised"] = metrics.ssim(res.denoised, clean, data_range=rng)
    return out


def short(rep: dict) -> dict:
    """The summary line of one file in ``--json`` output."""
    return {k: rep[k] for k in SHORT_KEYS if k in rep}


def done_line(prefix: str, path, rep: dict) -> str:
    comp = " (incl. compilation)" if rep["timings"]["includes_compilation"] else ""
    return (f"{prefix}{path}: done in {rep['seconds']:.1f} s{comp}, {rep['num_outer']} outer "
            f"iterations ({rep['status']}), "
            + (f"lam {rep['lam']:g} (auto), " if rep["options"].get("lam") == "auto" else "")
            + f"foreground {rep['foreground_fraction']:.1%}"
            + (f", Dice {rep['dice']:.4f}" if rep.get("dice") is not None else "")
            + (f", PSNR {rep['psnr_denoised']:.2f} dB"
               if rep.get("psnr_denoised") is not None else ""))
