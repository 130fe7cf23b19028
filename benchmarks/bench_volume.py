"""Volumes side by side: the CNN expert's full 3x3x3 layers against factorised (2+1)-D ones
(``net_conv3d``; issue 13, volumes' cost).

Cases (fixed here): the bundled 3-D stack (31 x 61 x 57, its own noise), and the synthetic
development volume ``synthetic_nuclei(2000, (32, 64, 64), noise=20)`` mirror-tiled to
32 x 128 x 128 (0.5 M voxels) and 64 x 256 x 256 (4.2 M voxels); with ``--cases``, also
128 x 128 x 128 (2.1 M voxels, 128 slices: the mask step's bands, session 20). Each (case,
variant) runs in a FRESH process, the variants alternating per case and round: a first call (compilation included,
key 0) and a warm call (key 1); Dice, outer iterations, Adam steps, peak RSS. Writes
``results/volume/volume.json`` (or ``--out``) with the machine.

    python benchmarks/bench_volume.py                 # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"stack": None, "syn_32x128x128": (1, 2, 2), "syn_64x256x256": (2, 4, 4),
         "syn_128x128x128": (4, 2, 2)}
VARIANTS = {"full": {}, "factorised": {"net_conv3d": "factorised"}}


def volume(case: str):
    """``(noisy, gt)`` of a case."""
    import numpy as np

    import self2seg_jax as s2s

    if CASES[case] is None:
        return s2s.data.load_sample_3d()
    noisy, _, gt = s2s.data.synthetic_nuclei(2000, (32, 64, 64), noise=20)
    pads = [(0, n * (r - 1)) for n, r in zip(noisy.shape, CASES[case])]
    return np.pad(noisy, pads, mode="symmetric"), np.pad(gt, pads, mode="symmetric")


def one(case: str, variant: str) -> dict:
    import warnings

    import jax

    import self2seg_jax as s2s

    warnings.simplefilter("ignore", RuntimeWarning)
    noisy, gt = volume(case)
    cfg = s2s.Self2SegConfig(**VARIANTS[variant])
    row = {"case": case, "variant": variant, "shape": list(noisy.shape)}
    for label, k in (("cold", 0), ("warm", 1)):
        t = time.perf_counter()
        r = s2s.segment(jax.random.key(k), noisy, config=cfg, volume=True)
        row[f"{label}_s"] = round(time.perf_counter() - t, 2)
        row[f"{label}_dice"] = round(s2s.metrics.dice(r.mask, gt), 4)
        row[f"{label}_outer"] = int(r.num_outer)
        row[f"{label}_adam_steps"] = int(r.train_steps.sum())
        row[f"{label}_status"] = r.status
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES)[:3], choices=list(CASES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeat", type=int, default=1, help="alternating rounds per case")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "volume")
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print("ROW " + json.dumps(one(*args.one)), flush=True)
        return 0
    from self2seg_jax import provenance

    machine = provenance.provenance(ROOT)
    rows = []
    for case in args.cases:
        for rnd in range(args.repeat):
            order = args.variants if rnd % 2 == 0 else args.variants[::-1]
            for v in order:
                p = subprocess.run([sys.executable, __file__, "--one", case, v],
                                   capture_output=True, text=True)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
                row = json.loads(line[0][4:]) if line else {"case": case, "variant": v,
                                                           "error": p.stderr[-800:]}
                rows.append({"round": rnd, **row})
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for case in args.cases:
        med = {v: {k: statistics.median(r[k] for r in rows if r["case"] == case
                                        and r["variant"] == v and k in r)
                   for k in ("cold_s", "warm_s", "warm_dice", "cold_dice", "peak_rss_gib")
                   if any(k in r for r in rows if r["case"] == case and r["variant"] == v)}
               for v in args.variants}
        if all("warm_s" in med.get(v, {}) for v in VARIANTS):
            med["warm_speedup"] = round(med["full"]["warm_s"] / med["factorised"]["warm_s"], 2)
        summary[case] = med
    print(json.dumps(summary))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "volume.json").write_text(json.dumps(
        {"rows": rows, "medians": summary, "machine": machine,
         "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:]))},
        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
