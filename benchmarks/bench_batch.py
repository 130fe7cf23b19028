"""Throughput of ``segment_batch`` against a loop of ``segment`` calls, side by side.

``--n`` 128^2 patches of the bundled DSB2018 sample (the 16 non-overlapping patches, cycled),
Gaussian noise std 30 (seed = patch index), default configuration, key 0. Both paths are
compiled first (a call on the same shapes) and then timed: images per second, the mean
number of outer iterations against the batch's maximum (the vmapped loop runs until the
slowest member stops), and the fraction of mask pixels that differ between the two paths.
Writes ``results/batch/batch_<backend>[_d<devices>]_<n>.json``. On forced CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``) the devices share the same cores:
the figure shows the overhead of sharding, not a speed-up.

    python benchmarks/bench_batch.py --n 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import provenance

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch")
    args = ap.parse_args(argv)
    patches = s2s.data.sample_patches(128)
    imgs = np.stack([s2s.data.add_gaussian_noise(i, patches[i % len(patches)][1], 30.0)
                     for i in range(args.n)])
    gts = [patches[i % len(patches)][2] for i in range(args.n)]
    cfg = s2s.Self2SegConfig()
    key = jax.random.key(0)
    keys = jax.random.split(key, args.n)
    s2s.segment(keys[0], imgs[0], config=cfg)  # compile both paths
    s2s.segment_batch(key, imgs, config=cfg)
    t = time.perf_counter()
    singles = [s2s.segment(keys[i], imgs[i], config=cfg) for i in range(args.n)]
    t_loop = time.perf_counter() - t
    t = time.perf_counter()
    res = s2s.segment_batch(key, imgs, config=cfg)
    t_batch = time.perf_counter() - t
    row = {
        "n": args.n, "size": 128, "devices": jax.device_count(), "loop_s": round(t_loop, 2), "batch_s": round(t_batch, 2),
        "loop_images_per_s": round(args.n / t_loop, 3),
        "batch_images_per_s": round(args.n / t_batch, 3),
        "speedup": round(t_loop / t_batch, 3),
        "outer_mean": float(np.mean(res.num_outer)), "outer_max": int(np.max(res.num_outer)),
        "mask_pixels_differing": float(np.mean([np.mean(res.mask[i] != singles[i].mask)
                                                for i in range(args.n)])),
        "dice_batch": round(float(np.mean([s2s.metrics.dice(res.mask[i], gts[i])
                                           for i in range(args.n)])), 4),
        "dice_loop": round(float(np.mean([s2s.metrics.dice(singles[i].mask, gts[i])
                                          for i in range(args.n)])), 4),
        "machine": provenance.provenance(ROOT),
        "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "machine"}))
    args.out.mkdir(parents=True, exist_ok=True)
    d = jax.device_count()
    (args.out / f"batch_{jax.default_backend()}{f'_d{d}' if d > 1 else ''}_{args.n}.json"
     ).write_text(
        json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
