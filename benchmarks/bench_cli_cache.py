"""`self2seg segment` as a user runs it: whole-process wall time on the 128^2 comparison patch
(σ = 30, noise seed 0) with a cold persistent compilation cache, then a warm one, with and
without the export cache (``SELF2SEG_EXPORT_CACHE=0``: the programs are traced and lowered
again, only their compilation is cached), then with ``--no-compile-cache`` — fresh processes,
side by side; the warm runs alternate ``--repeat`` times. Writes ``results/cli_cache.json``.

    python benchmarks/bench_cli_cache.py --repeat 3
    python benchmarks/bench_cli_cache.py --repeat 3 --lam auto   # -> results/cli_cache_lam_auto.json
    python benchmarks/bench_cli_cache.py --repeat 3 --out benchmarks/results/cpu_ynn  # elsewhere

``--figures overview overlay none``: instead, one cold run, then warm processes that alternate
between those ``--figure`` kinds (``--repeat`` rounds), medians per kind ->
``cli_cache_figures.json``.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="alternating warm runs of each kind")
    ap.add_argument("--lam", default=None, help="--lam for every run (default: the CLI's)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="folder of the JSON file")
    ap.add_argument("--figures", nargs="+", default=None, choices=("overlay", "overview", "none"),
                    help="compare these --figure kinds in warm processes instead")
    args = ap.parse_args(argv)
    img, gt = s2s.data.load_sample(crop=(256, 128, 384, 256))
    noisy = s2s.data.add_gaussian_noise(0, img, 30.0)
    rows, lam = [], ([] if args.lam is None else ["--lam", args.lam])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tifffile.imwrite(tmp / "patch.tif", noisy.astype(np.float32))
        tifffile.imwrite(tmp / "gt.tif", gt.astype(np.uint8))
        env = dict(os.environ, SELF2SEG_CACHE_DIR=str(tmp / "cache"), MPLBACKEND="Agg")
        no_export = {"SELF2SEG_EXPORT_CACHE": "0"}
        if args.figures:
            runs = [("cold_cache", [], {})]
            kinds = [f"figure_{k}" for k in args.figures]
            for i in range(args.repeat):
                runs += [(f"figure_{k}_{i}", ["--figure", k], {}) for k in args.figures]
        else:
            runs = [("cold_cache", [], {}), ("cold_cache_no_export", [], no_export)]
            kinds = ["warm_cache", "warm_cache_no_export"]
            for i in range(args.repeat):
                runs += [(f"warm_cache_{i}", [], {}), (f"warm_cache_no_export_{i}", [], no_export)]
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
                         "cache_hits": rep["timings"].get("cache_hits"),
                         "write_s": rep["timings"].get("write_s"),
                         "dice": rep.get("dice", rep.get("metrics", {}).get("dice"))})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for kind in kinds:
        vals = [r for r in rows if r["run"].rsplit("_", 1)[0] == kind and "error" not in r]
        if vals:
            summary[kind] = {k: round(float(np.median([r[k] for r in vals])), 2)
                             for k in ("process_wall_s", "segment_s", "write_s")}
    print(json.dumps(summary), flush=True)
    out = {"rows": rows, "median": summary,
           **provenance.run_record(ROOT, [sys.argv[0]] + (argv or sys.argv[1:]))}
    name = "cli_cache.json" if args.lam is None else f"cli_cache_lam_{args.lam}.json"
    if args.figures:
        name = name.replace("cli_cache", "cli_cache_figures")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / name).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
