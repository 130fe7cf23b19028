"""`self2seg segment` as a user runs it: whole-process wall time on the 128^2 comparison patch
(σ = 30, noise seed 0) with a cold persistent compilation cache, then a warm one, with and
without the export cache (``SELF2SEG_EXPORT_CACHE=0``: the programs are traced and lowered
again, only their compilation is cached), then with ``--no-compile-cache`` — fresh processes,
side by side; the warm runs alternate ``--repeat`` times. Writes ``results/cli_cache.json``.
``--off warm_writers``: the paired runs turn off the figure warm-up thread
(``SELF2SEG_WARM_WRITERS=0``) instead of the export cache.

    python benchmarks/bench_cli_cache.py --repeat 3
    python benchmarks/bench_cli_cache.py --repeat 3 --lam auto   # -> results/cli_cache_lam_auto.json
    python benchmarks/bench_cli_cache.py --repeat 3 --out benchmarks/results/cpu_ynn  # elsewhere
    python benchmarks/bench_cli_cache.py --repeat 5 --off warm_writers --out benchmarks/results/cli_s17
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

import self2seg_jax as s2s
from self2seg_jax import provenance

ROOT = Path(__file__).resolve().parents[1]
OFF = {"export": {"SELF2SEG_EXPORT_CACHE": "0"}, "warm_writers": {"SELF2SEG_WARM_WRITERS": "0"}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="alternating warm runs of each kind")
    ap.add_argument("--lam", default=None, help="--lam for every run (default: the CLI's)")
    ap.add_argument("--off", choices=sorted(OFF), default="export",
                    help="what the paired runs turn off")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="folder of the JSON file")
    args = ap.parse_args(argv)
    img, gt = s2s.data.load_sample(crop=(256, 128, 384, 256))
    noisy = s2s.data.add_gaussian_noise(0, img, 30.0)
    rows, lam = [], ([] if args.lam is None else ["--lam", args.lam])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tifffile.imwrite(tmp / "patch.tif", noisy.astype(np.float32))
        tifffile.imwrite(tmp / "gt.tif", gt.astype(np.uint8))
        env = dict(os.environ, SELF2SEG_CACHE_DIR=str(tmp / "cache"), MPLBACKEND="Agg")
        off, no = OFF[args.off], f"no_{args.off}"
        runs = [("cold_cache", [], {}), (f"cold_cache_{no}", [], off)]
        for i in range(args.repeat):
            runs += [(f"warm_cache_{i}", [], {}), (f"warm_cache_{no}_{i}", [], off)]
        runs.append(("no_cache", ["--no-compile-cache"], {}))
        for name, extra, more_env in runs:
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "self2seg_jax.cli", "segment",
                                str(tmp / "patch.tif"), "--gt", str(tmp / "gt.tif"), "-o",
                                str(tmp / name), "--quiet", *extra, *lam],
                               capture_output=True, text=True, env={**env, **more_env})
            wall = time.perf_counter() - t
            if p.returncode != 0:
                rows.append({"run": name, "error": p.stderr[-800:]})
                continue
            rep = json.loads((tmp / name / "patch_report.json").read_text())
            rows.append({"run": name, "process_wall_s": round(wall, 2),
                         "segment_s": rep["timings"]["segment_s"],
                         "compile_s": rep["timings"]["compile_s"],
                         "write_s": rep["timings"].get("write_s"),
                         "cache_hits": rep["timings"].get("cache_hits"),
                         "dice": rep.get("dice", rep.get("metrics", {}).get("dice"))})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for kind in ("warm_cache", f"warm_cache_no_{args.off}"):
        vals = [r for r in rows if r["run"].rsplit("_", 1)[0] == kind and "error" not in r]
        if vals:
            summary[kind] = {k: round(float(np.median([r[k] for r in vals])), 2)
                             for k in ("process_wall_s", "segment_s", "write_s")}
    print(json.dumps(summary), flush=True)
    out = {"rows": rows, "median": summary,
           **provenance.run_record(ROOT, [sys.argv[0]] + (argv or sys.argv[1:]))}
    name = "cli_cache.json" if args.lam is None else f"cli_cache_lam_{args.lam}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
