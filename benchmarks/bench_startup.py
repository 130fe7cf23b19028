"""What a fresh process pays before and around the work: import times and a whole
``self2seg segment`` process with a warm compilation cache, for one or more Python
interpreters side by side (e.g. two virtual environments that differ in one package).

For each interpreter, in fresh processes, alternating between interpreters ``--repeat`` times:
``import ml_dtypes``, ``import jax``, ``import self2seg_jax.api`` (wall seconds of a process
that only imports), and ``self2seg segment`` on the 128^2 comparison patch (σ = 30, noise seed 0)
with a compilation cache of its own, warmed by one untimed process first. Prints one JSON line
per run and writes ``startup.json`` (rows, medians per interpreter, package versions of each).

    python benchmarks/bench_startup.py --pythons /tmp/v07/bin/python /tmp/v06/bin/python \\
        --repeat 5 --out benchmarks/results/startup

``--trees A B ...``: instead of interpreters, source trees of this package (e.g. clean git
worktrees of two commits), each put first on ``PYTHONPATH`` of this interpreter's processes.
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
IMPORTS = {"import_ml_dtypes_s": "import ml_dtypes", "import_jax_s": "import jax",
           "import_api_s": "import self2seg_jax.api"}
VERSIONS = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('jax', 'jaxlib', 'ml_dtypes', 'numpy', 'flax', 'optax', 'matplotlib')}))")


def _wall(cmd, env) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - t, p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pythons", nargs="+", default=[sys.executable],
                    help="interpreters to compare (each must have self2seg_jax installed)")
    ap.add_argument("--trees", nargs="+", type=Path, default=None,
                    help="compare these source trees of the package instead (same interpreter)")
    ap.add_argument("--repeat", type=int, default=5, help="alternating rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup")
    args = ap.parse_args(argv)
    img, gt = s2s.data.load_sample(crop=(256, 128, 384, 256))
    noisy = s2s.data.add_gaussian_noise(0, img, 30.0)
    rows, pkgs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tifffile.imwrite(tmp / "patch.tif", noisy.astype(np.float32))
        tifffile.imwrite(tmp / "gt.tif", gt.astype(np.uint8))
        base = dict(os.environ, MPLBACKEND="Agg")
        if args.trees:
            variants = [(sys.executable, t.resolve()) for t in args.trees]
        else:
            variants = [(py, ROOT) for py in args.pythons]
        names = [str(t) if args.trees else py for py, t in variants]

        def env_of(i):
            return {**base, "PYTHONPATH": str(variants[i][1]),
                    "SELF2SEG_CACHE_DIR": str(tmp / f"cache{i}")}

        def cli(i, py, name):
            return _wall([py, "-m", "self2seg_jax.cli", "segment", str(tmp / "patch.tif"),
                          "--gt", str(tmp / "gt.tif"), "-o", str(tmp / name), "--quiet"],
                         env_of(i))

        for i, (py, _) in enumerate(variants):
            pkgs[names[i]] = json.loads(subprocess.run(
                [py, "-c", VERSIONS], capture_output=True, text=True, check=True).stdout)
            _, p = cli(i, py, f"warmup{i}")  # fills this interpreter's compilation cache
            if p.returncode != 0:
                raise SystemExit(f"{py}: warm-up failed\n{p.stderr[-2000:]}")
        for r in range(args.repeat):
            for i, (py, _) in enumerate(variants):
                row = {"python": names[i], "round": r}
                for key, stmt in IMPORTS.items():
                    row[key] = round(_wall([py, "-c", stmt], env_of(i))[0], 3)
                name = f"run{i}_{r}"
                wall, p = cli(i, py, name)
                if p.returncode != 0:
                    row["error"] = p.stderr[-800:]
                else:
                    rep = json.loads((tmp / name / "patch_report.json").read_text())
                    t = rep["timings"]
                    row.update(process_wall_s=round(wall, 3), segment_s=t["segment_s"],
                               write_s=t["write_s"], cache_hits=t.get("cache_hits"),
                               compile_s=t["compile_s"],
                               dice=rep.get("dice", rep.get("metrics", {}).get("dice")))
                rows.append(row)
                print(json.dumps(row), flush=True)
    keys = (*IMPORTS, "process_wall_s", "segment_s", "write_s")
    median = {py: {k: round(float(np.median([r[k] for r in rows
                                             if r["python"] == py and k in r])), 3)
                   for k in keys} for py in names}
    print(json.dumps(median, indent=1), flush=True)
    out = {"rows": rows, "median": median, "packages": pkgs,
           **provenance.run_record(ROOT, [sys.argv[0]] + (argv or sys.argv[1:]))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
