"""`self2seg segment` as a user runs it: whole-process wall time on the 128^2 comparison patch
(σ = 30, noise seed 0) with a cold persistent compilation cache, then a warm one, then with
``--no-compile-cache`` — three fresh processes, side by side. Writes
``results/cli_cache.json``.

    python benchmarks/bench_cli_cache.py
"""

from __future__ import annotations

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


def main() -> int:
    img, gt = s2s.data.load_sample(crop=(256, 128, 384, 256))
    noisy = s2s.data.add_gaussian_noise(0, img, 30.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tifffile.imwrite(tmp / "patch.tif", noisy.astype(np.float32))
        tifffile.imwrite(tmp / "gt.tif", gt.astype(np.uint8))
        env = dict(os.environ, SELF2SEG_CACHE_DIR=str(tmp / "cache"), MPLBACKEND="Agg")
        for name, extra in (("cold_cache", []), ("warm_cache", []),
                            ("no_cache", ["--no-compile-cache"])):
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "self2seg_jax.cli", "segment",
                                str(tmp / "patch.tif"), "--gt", str(tmp / "gt.tif"), "-o",
                                str(tmp / name), "--quiet", *extra], env=env,
                               capture_output=True, text=True)
            wall = time.perf_counter() - t
            if p.returncode != 0:
                rows.append({"run": name, "error": p.stderr[-800:]})
                continue
            rep = json.loads((tmp / name / "patch_report.json").read_text())
            rows.append({"run": name, "process_wall_s": round(wall, 2),
                         "segment_s": rep["timings"]["segment_s"],
                         "compile_s": rep["timings"]["compile_s"],
                         "cache_hits": rep["timings"].get("cache_hits"),
                         "dice": rep.get("dice", rep.get("metrics", {}).get("dice"))})
            print(json.dumps(rows[-1]), flush=True)
    out = {"rows": rows, "machine": provenance.provenance(ROOT),
           "command": "python benchmarks/bench_cli_cache.py"}
    (ROOT / "benchmarks" / "results" / "cli_cache.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
