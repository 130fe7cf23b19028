"""The library default before and after issue 13, side by side on the 16 DSB2018 patches.

Both configurations run with their own fixed ``lam`` (no selection on these patches), the
protocol's noise (``experiments.dsb2018.noisy_patches``: seed per level and patch) and key
``jax.random.key(patch index)``, at noise 10, 30 and 50 (0..255 scale):

* ``before`` — the pre-issue-13 default: whole-image training (<= 400 Adam steps, patience
  100), min–max normalisation, Otsu start of the Noise2Fast-denoised patch;
* ``after`` — today's default (``Self2SegConfig()``).

Per level: mean ± std Dice, paired difference with a Wilcoxon signed-rank p-value, wins /
ties / losses (tie: |ΔDice| < 0.005) and warm seconds per patch (the first patch of each
configuration is run twice; its first, compiling, call is not counted). Writes
``results/dsb2018_defaults/{rows.jsonl, summary.json, table.md}``.

    python benchmarks/dsb_defaults.py                 # ~12 min on 2 cores
    python benchmarks/dsb_defaults.py --levels 30 --patches 0 1
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
from experiments import dsb2018 as E

import self2seg_jax as s2s
from self2seg_jax import provenance

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "dsb2018_defaults"
BEFORE = dict(train_mode="full", normalise="minmax", init_denoise=True, train_max_steps=400,
              train_min_steps=100, train_patience=100, refine_size=0)
CONFIGS = {"before": s2s.Self2SegConfig(**BEFORE), "after": s2s.Self2SegConfig()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=float, nargs="+", default=[10.0, 30.0, 50.0])
    ap.add_argument("--patches", type=int, nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    rows = []
    for level in args.levels:
        patches = E.noisy_patches(level, indices=args.patches)
        for name, cfg in CONFIGS.items():
            s2s.segment(jax.random.key(99), patches[0].noisy, config=cfg)  # compile
            for p in patches:
                t = time.perf_counter()
                r = s2s.segment(jax.random.key(p.index), p.noisy, config=cfg)
                dt = time.perf_counter() - t
                rows.append({"level": level, "config": name, "patch": p.index,
                             "dice": round(s2s.metrics.dice(r.mask, p.gt), 4),
                             "init_dice": round(s2s.metrics.dice(r.init_mask, p.gt), 4),
                             "seconds": round(dt, 2), "num_outer": int(r.num_outer)})
                print(json.dumps(rows[-1]), flush=True)
    summary = summarise(rows)
    summary.update(configs={k: {f: getattr(c, f) for f in ("train_mode", "normalise",
                                                           "init_denoise", "train_max_steps",
                                                           "lam", "mu")}
                            for k, c in CONFIGS.items()},
                   machine=provenance.provenance(ROOT),
                   command="python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "table.md").write_text(table(summary))
    print(table(summary))
    return 0


def summarise(rows) -> dict:
    from scipy.stats import wilcoxon

    out = {"levels": []}
    for level in sorted({r["level"] for r in rows}):
        get = {c: {r["patch"]: r for r in rows if r["level"] == level and r["config"] == c}
               for c in CONFIGS}
        common = sorted(set(get["before"]) & set(get["after"]))
        b = np.array([get["before"][i]["dice"] for i in common])
        a = np.array([get["after"][i]["dice"] for i in common])
        d = a - b
        p = float(wilcoxon(a, b).pvalue) if len(common) >= 2 and np.any(d != 0) else float("nan")
        out["levels"].append({
            "level": level, "patches": len(common),
            **{f"{c}_{k}": round(float(f(x)), 4) for c, x in (("before", b), ("after", a))
               for k, f in (("mean", np.mean), ("std", np.std))},
            **{f"{c}_seconds": round(float(np.mean([get[c][i]["seconds"] for i in common])), 2)
               for c in CONFIGS},
            "delta_mean": round(float(d.mean()), 4), "wilcoxon_p": round(p, 4),
            "wins": int(np.sum(d >= 0.005)), "ties": int(np.sum(np.abs(d) < 0.005)),
            "losses": int(np.sum(d <= -0.005)),
            "worst_patch": int(common[int(np.argmin(d))]), "worst_delta": round(float(d.min()), 4),
        })
    return out


def table(summary) -> str:
    lines = ["| noise | patches | before: Dice | after: Dice | Δ (after − before) | W/T/L | "
             "Wilcoxon p | worst patch (Δ) | s/patch before | s/patch after |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["levels"]:
        lines.append(
            f"| {r['level']:g} | {r['patches']} | {r['before_mean']:.3f} ± {r['before_std']:.3f} "
            f"| {r['after_mean']:.3f} ± {r['after_std']:.3f} | {r['delta_mean']:+.3f} | "
            f"{r['wins']}/{r['ties']}/{r['losses']} | {r['wilcoxon_p']:.3g} | "
            f"{r['worst_patch']} ({r['worst_delta']:+.3f}) | {r['before_seconds']:.1f} | "
            f"{r['after_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
