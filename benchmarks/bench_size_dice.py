"""Dice against image size with its spread (issue 13's "2048^2 within 0.02 of 512^2"): the
bundled 512^2 sample and its mirror-tilings (``bench_scaling.image``), Gaussian noise std 30,
noise seeds 0..n-1 with key = the seed, the default configuration; one process, sizes run
seed by seed. Prints and writes per-run rows and, per size, mean and standard deviation of the
Dice and the paired difference to 512^2 (``results/size_dice.json``). Seconds include
whatever else the machine runs and the first call's compilation (not timings).

    python benchmarks/bench_size_dice.py --sizes 512 2048 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scaling import image  # noqa: E402

import self2seg_jax as s2s  # noqa: E402
from self2seg_jax import provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "size_dice.json")
    args = ap.parse_args(argv)
    rows = []
    for seed in range(args.seeds):
        for size in args.sizes:
            noisy, gt = image(size, seed=seed)
            t = time.perf_counter()
            r = s2s.segment(jax.random.key(seed), noisy)
            rows.append({"size": size, "seed": seed, "dice": round(s2s.metrics.dice(r.mask, gt), 4),
                         "num_outer": int(r.num_outer), "status": r.status,
                         "seconds": round(time.perf_counter() - t, 2)})
            print(json.dumps(rows[-1]), flush=True)
    base = min(args.sizes)
    summary = {}
    for size in args.sizes:
        d = np.array([r["dice"] for r in rows if r["size"] == size])
        b = np.array([r["dice"] for r in rows if r["size"] == base])
        summary[str(size)] = {"mean": round(float(d.mean()), 4), "std": round(float(d.std(ddof=1)), 4)
                              if len(d) > 1 else None,
                              f"mean_diff_to_{base}": round(float((d - b).mean()), 4)}
    print(json.dumps(summary))
    args.out.write_text(json.dumps({"rows": rows, "summary": summary,
                                    **provenance.run_record(ROOT, [sys.argv[0]] + (argv or sys.argv[1:]))},
                                   indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
