"""Time per outer iteration of the multi-class scheme (C = 2, 3, 4) and of a 3-D volume.

Every class gets a CNN expert (fixed number of Adam steps per W-step: min = max steps, so the
classes do equal work) and the scheme runs a fixed number of outer iterations (no early stop).
Each configuration is called twice; the second (compiled) call is timed. ``--stack`` compares
training the stacked experts with ``vmap`` (one batched program) against ``lax.map`` (one
after the other); on a GPU ``vmap`` should make the cost grow sub-linearly in C.

    python benchmarks/bench_multiclass.py --classes 2 3 4 --size 128 --stack vmap map
    python benchmarks/bench_multiclass.py --classes --volume 64 256 256 --steps 20

Prints one JSON line per measurement; ``--out FILE`` also writes them as a JSON list.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

import self2seg_jax as s2s
from self2seg_jax.provenance import run_record

HERE = Path(__file__).resolve().parent


def _timed(fn, reps: int = 2):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t)
    return res, times


def bench_classes(c: int, size: int, steps: int, outer: int, stack: str, width: int, depth: int) -> dict:
    rng = np.random.default_rng(0)
    xx = np.mgrid[:size, :size][1]
    labels = np.minimum(xx * c // size, c - 1).astype(np.int32)
    img = (labels / (c - 1) + 0.2 * rng.standard_normal((size, size))).astype(np.float32)
    cfg = s2s.Self2SegConfig(
        fg_expert="n2f", bg_expert="n2f", net_width=width, net_depth=depth, train_max_steps=steps,
        train_min_steps=steps, max_outer=outer, mask_tol=0.0, energy_p=0.0, init_denoise=False,
        stack_experts={"vmap": "always", "map": "never"}[stack],
    )
    res, times = _timed(lambda: s2s.segment(jax.random.key(0), img, num_classes=c, init=labels, config=cfg))
    return {"what": "classes", "C": c, "size": size, "stack": stack, "adam_steps_per_expert": steps,
            "net": f"{width}x{depth}", "num_outer": res.num_outer, "first_call_s": round(times[0], 2),
            "second_call_s": round(times[1], 2), "s_per_outer": round(times[1] / res.num_outer, 3),
            "pd_iterations": res.pd_iterations.tolist()}


def bench_volume(shape, steps: int, outer: int, width: int, depth: int, experts: str,
                 pd_max_iter: int = 3000) -> dict:
    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2
    gt = ((z - c[0]) / (shape[0] / 4)) ** 2 + ((y - c[1]) / (shape[1] / 4)) ** 2 + ((x - c[2]) / (shape[2] / 4)) ** 2 < 1
    vol = (0.3 + 0.4 * gt + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    cfg = s2s.Self2SegConfig(
        fg_expert=experts, bg_expert="constant", net_width=width, net_depth=depth,
        train_max_steps=steps, train_min_steps=steps, max_outer=outer, mask_tol=0.0, energy_p=0.0,
        init_denoise=False, pd_max_iter=pd_max_iter, pd_tol=1e-12 if pd_max_iter < 3000 else 1e-4,
    )
    res, times = _timed(lambda: s2s.segment(jax.random.key(0), vol, volume=True, spacing=(2.0, 1.0, 1.0), config=cfg))
    return {"what": "volume", "shape": list(shape), "fg_expert": experts, "net": f"{width}x{depth}",
            "adam_steps_per_expert": steps, "num_outer": res.num_outer,
            "first_call_s": round(times[0], 2), "second_call_s": round(times[1], 2),
            "s_per_outer": round(times[1] / res.num_outer, 3), "dice": round(s2s.metrics.dice(res.mask, gt), 4),
            "pd_iterations": res.pd_iterations.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="*", default=[2, 3, 4])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--stack", nargs="+", default=["vmap", "map"], choices=["vmap", "map"])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--outer", type=int, default=2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--volume", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    ap.add_argument("--volume-experts", nargs="+", default=["constant", "n2f"])
    ap.add_argument("--pd-max-iter", type=int, default=3000,
                    help="volume runs: fixed primal-dual iterations per u-step when < 3000")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    info = run_record(HERE)
    print(json.dumps(info), flush=True)
    for c in args.classes:
        for stack in args.stack:
            rows.append(bench_classes(c, args.size, args.steps, args.outer, stack, args.width, args.depth))
            print(json.dumps(rows[-1]), flush=True)
    if args.volume:
        for ex in args.volume_experts:
            rows.append(bench_volume(tuple(args.volume), args.steps, args.outer, min(args.width, 8),
                                     min(args.depth, 2), ex, args.pd_max_iter))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        info["load_average_at_end"] = list(os.getloadavg())
        args.out.write_text(json.dumps({**info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
