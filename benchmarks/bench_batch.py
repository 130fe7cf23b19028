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
    ap.add_argument("--modes", nargs="+", choices=("loop", "async", "threads", "map", "vmap"), default=None,
                    help="instead: time each way of running the batch on one device (a Python "
                         "loop of compiled runs, waiting for each; the same loop dispatching "
                         "every run before reading any (async); the runs from a pool of as many "
                         "threads as cores (threads); lax.map or vmap inside one "
                         "program), one JSON line per mode as soon as it is done (compile call "
                         "first)")
    args = ap.parse_args(argv)
    patches = s2s.data.sample_patches(128)
    imgs = np.stack([s2s.data.add_gaussian_noise(i, patches[i % len(patches)][1], 30.0)
                     for i in range(args.n)])
    gts = [patches[i % len(patches)][2] for i in range(args.n)]
    cfg = s2s.Self2SegConfig()
    key = jax.random.key(0)
    if args.modes:
        return time_modes(key, imgs, gts, cfg, args)
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


def time_modes(key, imgs, gts, cfg, args) -> int:
    """One device: the same prepared batch run as a loop of ``alternating.run`` calls, or one
    ``batch.run_batch`` program with ``lax.map`` or ``vmap``; warm times (after a compile call
    on the same shapes), Dice against the loop."""
    from self2seg_jax import alternating, api, batch

    keys = jax.random.split(key, len(imgs))
    prep = [api.prepare(keys[i], imgs[i], config=cfg) for i in range(len(imgs))]
    spec, hyper = prep[0].spec, cfg.hyper()
    stacked = (jax.numpy.stack([p.k_run for p in prep]), np.stack([p.f for p in prep]),
               np.stack([p.start.weights for p in prep]), np.stack([p.start.labels for p in prep]))

    def run(mode):
        if mode == "loop":
            return np.stack([np.asarray(alternating.run(p.k_run, p.f, p.start.weights,
                                                        p.start.labels, hyper, spec).labels)
                             for p in prep])
        if mode == "async":  # JAX dispatches asynchronously: every run is queued first
            states = [alternating.run(p.k_run, p.f, p.start.weights, p.start.labels, hyper, spec)
                      for p in prep]
            return np.stack([np.asarray(s.labels) for s in states])
        if mode == "threads":  # one compiled run per image from a pool of host threads
            from concurrent.futures import ThreadPoolExecutor

            def one(p):
                return np.asarray(alternating.run(p.k_run, p.f, p.start.weights, p.start.labels,
                                                  hyper, spec).labels)

            with ThreadPoolExecutor(batch.default_threads(len(prep))) as ex:
                return np.stack(list(ex.map(one, prep)))
        return np.asarray(batch.run_batch(*stacked, hyper, spec, mode).labels)

    import resource

    def cpu_s():  # user + system CPU time of this process (all its threads)
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    rows = []
    for mode in args.modes:
        run(mode)  # compile
        t, c = time.perf_counter(), cpu_s()
        labels = run(mode)
        dt, dc = time.perf_counter() - t, cpu_s() - c
        row = {"mode": mode, "n": len(imgs), "seconds": round(dt, 3),
               "cpu_s": round(dc, 2), "cores_busy": round(dc / dt, 2),
               "images_per_s": round(len(imgs) / dt, 3),
               "dice": round(float(np.mean([s2s.metrics.dice(labels[i] > 0, gts[i])
                                            for i in range(len(imgs))])), 4),
               "backend": jax.default_backend(), "device": str(jax.devices()[0])}
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"batch_modes_{jax.default_backend()}_{len(imgs)}.json").write_text(json.dumps(
        {"rows": rows, "machine": provenance.provenance(ROOT),
         "command": "python " + " ".join(sys.argv)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
