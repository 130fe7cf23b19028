"""`self2seg segment FILES` with and without ``--batch``: whole-process wall time for ``--n``
128^2 patches of the bundled DSB2018 sample (Gaussian noise std 30, seed = patch index), each
command in a fresh process with a warm persistent compilation cache (a first, untimed run of
each fills it), side by side; the masks of the two runs are compared. Writes
``results/batch/cli_batch_<n>.json``.

    python benchmarks/bench_cli_batch.py --n 8
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
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args(argv)
    patches = s2s.data.sample_patches(128)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        for i in range(args.n):
            f = tmp / f"p{i:02d}.tif"
            noisy = s2s.data.add_gaussian_noise(i, patches[i % len(patches)][1], 30.0)
            tifffile.imwrite(f, noisy.astype(np.float32))
            files.append(str(f))
        env = dict(os.environ, SELF2SEG_CACHE_DIR=str(tmp / "cache"), MPLBACKEND="Agg")
        for name, extra in (("warmup_one_by_one", []), ("warmup_batch", ["--batch"]),
                            ("one_by_one", []), ("batch", ["--batch"])):
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "self2seg_jax.cli", "segment", *files,
                                "-o", str(tmp / name), "--quiet", *extra], env=env,
                               capture_output=True, text=True)
            wall = time.perf_counter() - t
            if p.returncode != 0:
                raise SystemExit(p.stderr[-2000:])
            if not name.startswith("warmup"):
                rows.append({"run": name, "files": args.n, "process_wall_s": round(wall, 2)})
                print(json.dumps(rows[-1]), flush=True)
        differing = [float(np.mean(tifffile.imread(tmp / "one_by_one" / f"p{i:02d}_mask.tif")
                                   != tifffile.imread(tmp / "batch" / f"p{i:02d}_mask.tif")))
                     for i in range(args.n)]
    out = {"rows": rows, "speedup": round(rows[0]["process_wall_s"] / rows[1]["process_wall_s"], 3),
           "mask_pixels_differing_max": max(differing), "machine": provenance.provenance(ROOT),
           "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:]))}
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}))
    (ROOT / "benchmarks" / "results" / "batch").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "batch" / f"cli_batch_{args.n}.json").write_text(
        json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
