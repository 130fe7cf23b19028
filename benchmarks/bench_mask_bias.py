"""Does the default make masks too large? A measurement, not a decision (issue 13, item 2).

Session 22 saw, in scratch runs, the default (CNN foreground expert, constant background)
turn near-perfect Otsu starts on bright synthetic nuclei into larger, worse masks, and end
with ~1.2-1.4x the true foreground on the bundled 512^2 sample. This script measures that
side by side with two controls that share everything else (start, lambda, mu, stop rules):

- ``default``: the library default;
- ``blind_spot``: the same experts, data terms from blind-spot predictions (each pixel's
  residual from a prediction that does not see that pixel);
- ``constant``: constant experts for both classes, i.e. the library's convex Chan-Vese.

Inputs (fixed here before any run of this script; none of them decides a default):
- the bundled 512^2 DSB2018 sample (``load_sample``) with Gaussian noise std 10 / 30 / 50
  (0..255), noise seeds 0-2, key = noise seed;
- "bright" synthetic nuclei (``synthetic_nuclei`` with contrast 60-150, so that Otsu finds
  every nucleus): noise 10 and 30, 128^2 (image seeds 5000-5003) and 512^2 (5000-5001), key =
  seed - 5000;
- the bundled 3-D stack (``load_sample_3d``, its own noise), ``volume=True``, keys 0-2.

Per run: Dice, precision and recall of the foreground, the mask's foreground fraction over the
truth's (``fg_ratio``), start Dice, outer iterations, warm seconds. Summary per group and
variant: means, and paired differences against ``default`` (mean, W/T/L with ties |d| < 0.005,
Wilcoxon signed-rank p). Writes ``rows.jsonl`` and ``summary.json`` to ``--out``.

    python benchmarks/bench_mask_bias.py --out benchmarks/results/mask_bias_s22
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import provenance

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"default": {}, "blind_spot": dict(data_term="blind_spot"),
            "constant": dict(fg_expert="constant", bg_expert="constant", refine_size=0)}
GROUPS = ("sample_n10", "sample_n30", "sample_n50", "bright_n10", "bright_n30", "stack")


def inputs(groups):
    """Yield ``(group, name, noisy, gt, key, volume)`` for the fixed inputs above."""
    clean, gt = s2s.data.load_sample()
    for sigma in (10, 30, 50):
        if f"sample_n{sigma}" in groups:
            for seed in range(3):
                noisy = s2s.data.add_gaussian_noise(seed, clean, float(sigma))
                yield f"sample_n{sigma}", f"sample_s{seed}", noisy, gt, seed, False
    for sigma in (10, 30):
        if f"bright_n{sigma}" not in groups:
            continue
        for size, seeds in ((128, range(4)), (512, range(2))):
            for s in seeds:
                noisy, _, g = s2s.data.synthetic_nuclei(5000 + s, (size, size),
                                                        noise=float(sigma),
                                                        contrast=(60.0, 150.0))
                yield f"bright_n{sigma}", f"bright_{size}_s{s}", noisy, g, s, False
    if "stack" in groups:
        noisy, g = s2s.data.load_sample_3d()
        for key in range(3):
            yield "stack", f"stack_k{key}", noisy, g, key, True


def paired(a, b):
    """Paired statistics of ``a - b`` (lists of equal length)."""
    from scipy import stats

    d = np.asarray(a) - np.asarray(b)
    p = float(stats.wilcoxon(d).pvalue) if np.any(np.abs(d) > 0) and len(d) > 1 else 1.0
    return {"mean_diff": round(float(d.mean()), 4), "wins": int((d >= 0.005).sum()),
            "ties": int((np.abs(d) < 0.005).sum()), "losses": int((d <= -0.005).sum()),
            "wilcoxon_p": round(p, 4), "n": int(d.size)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mask_bias")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    record = provenance.run_record(ROOT, [sys.argv[0]] + (argv or sys.argv[1:]))
    runs = list(inputs(args.groups))
    rows = []
    for name in args.variants:
        cfg = s2s.Self2SegConfig(**VARIANTS[name])
        compiled = set()
        for group, image, noisy, gt, key, volume in runs:
            if (noisy.shape, volume) not in compiled:  # compile outside the timing
                s2s.segment(jax.random.key(99), noisy, config=cfg, volume=volume)
                compiled.add((noisy.shape, volume))
            t = time.perf_counter()
            r = s2s.segment(jax.random.key(key), noisy, config=cfg, volume=volume)
            dt = time.perf_counter() - t
            m, g = np.asarray(r.mask, bool), np.asarray(gt, bool)
            tp = float((m & g).sum())
            row = {"variant": name, "group": group, "image": image, "key": key,
                   "dice": round(s2s.metrics.dice(m, g), 4),
                   "precision": round(tp / max(m.sum(), 1), 4),
                   "recall": round(tp / max(g.sum(), 1), 4),
                   "fg_ratio": round(float(m.mean() / g.mean()), 4),
                   "init_dice": round(s2s.metrics.dice(r.init_mask, g), 4),
                   "num_outer": int(r.num_outer), "status": str(r.status),
                   "seconds": round(dt, 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for group in args.groups:
        base = [r for r in rows if r["group"] == group and r["variant"] == "default"]
        for name in args.variants:
            mine = [r for r in rows if r["group"] == group and r["variant"] == name]
            if not mine:
                continue
            entry = {k: round(float(np.mean([r[k] for r in mine])), 4)
                     for k in ("dice", "precision", "recall", "fg_ratio", "init_dice",
                               "num_outer", "seconds")}
            entry["n"] = len(mine)
            if name != "default" and len(base) == len(mine):
                entry["vs_default"] = paired([r["dice"] for r in mine],
                                             [r["dice"] for r in base])
            summary.setdefault(group, {})[name] = entry
    print(json.dumps(summary, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "summary.json").write_text(json.dumps(
        {"summary": summary, "variants": VARIANTS, **record}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
