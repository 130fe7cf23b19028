"""Time vs Dice trade-off of Self2Seg settings on DSB2018 128x128 patches.

Runs each named variant of the default configuration on a few patches of the bundled sample
(Gaussian noise, std on the 0-255 scale, fixed seeds) and prints one JSON line per variant:
mean/std Dice, mean seconds per patch (compiled call, excluding the first compilation), outer
iterations and Adam steps (after a first line with the run's provenance). Example:

    python benchmarks/tradeoff_dsb.py --noise 30 --patches 0 5 10 15 --lam 0.03
    python benchmarks/tradeoff_dsb.py --variants default cold_start wide
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

import self2seg_jax as s2s
from self2seg_jax.provenance import run_record

HERE = Path(__file__).resolve().parent

VARIANTS = {
    "default": {},
    "cold_start": {"warm_start": False},  # re-initialise experts every W-step (authors' code)
    "fewer_steps": {"train_max_steps": 200, "train_min_steps": 50, "train_patience": 50},
    "more_steps": {"train_max_steps": 800, "train_min_steps": 200, "train_patience": 200},
    "wide": {"net_width": 64, "net_depth": 4},
    "paper_net": {"net_width": 64, "net_depth": 8},
    "small": {"net_width": 16, "net_depth": 3},
    "bg_n2f_filter3": {"bg_expert": "n2f", "data_filter": 3},
    "bg_constant": {"bg_expert": "constant"},
    "no_init_denoise": {"init_denoise": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", type=float, default=30.0)
    ap.add_argument("--patches", type=int, nargs="+", default=[0, 5, 10, 15])
    ap.add_argument("--lam", type=float, default=None, help="override lam (default: config's)")
    ap.add_argument("--variants", nargs="+", default=["default", "cold_start", "fewer_steps"])
    args = ap.parse_args()
    print(json.dumps(run_record(HERE)), flush=True)
    patches = s2s.data.sample_patches(128)
    sel = [patches[i] for i in args.patches]
    noisy = [s2s.data.add_gaussian_noise(1000 + i, img, args.noise) for i, (_, img, _) in zip(args.patches, sel)]
    for name in args.variants:
        cfg = s2s.Self2SegConfig(**VARIANTS[name])
        if args.lam is not None:
            cfg = cfg.replace(lam=args.lam)
        s2s.segment(jax.random.key(0), noisy[0], config=cfg)  # compile
        dice, secs, outer, steps, psnr = [], [], [], [], []
        for (_, clean, gt), f in zip(sel, noisy):
            t = time.perf_counter()
            r = s2s.segment(jax.random.key(0), f, config=cfg)
            secs.append(time.perf_counter() - t)
            dice.append(s2s.metrics.dice(r.mask, gt))
            psnr.append(s2s.metrics.psnr(r.denoised, clean, data_range=255.0))
            outer.append(r.num_outer)
            steps.append(int(r.train_steps.sum()))
        print(json.dumps({
            "variant": name, "overrides": VARIANTS[name], "noise": args.noise, "lam": cfg.lam,
            "patches": args.patches, "dice_mean": round(float(np.mean(dice)), 4),
            "dice_std": round(float(np.std(dice)), 4), "dice": [round(d, 4) for d in dice],
            "psnr_mean": round(float(np.mean(psnr)), 2),
            "seconds_per_patch": round(float(np.mean(secs)), 2), "outer": outer,
            "adam_steps": steps,
        }), flush=True)


if __name__ == "__main__":
    main()
