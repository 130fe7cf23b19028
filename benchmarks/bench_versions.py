"""Speed of two versions of the package side by side, in one run (ratios, same machine).

Checks out ``--old`` (a commit) into a temporary git worktree and times the same workload with
that tree and with the current working tree, each in fresh subprocesses (``PYTHONPATH`` points
at the tree), alternating old/new ``--repeats`` times so that machine drift hits both alike.
Workload: ``segment`` with the default config on the 128x128 DSB2018 patch (rows 256–384,
cols 128–256, Gaussian noise std 30, seed 0): the first call of a process (compilation
included) and a second call with a new key (no compilation). Only the public API is used, so
any two versions compare.

    python benchmarks/bench_versions.py --old 03caa6b --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKLOAD = r"""
import json, time, jax, numpy as np
import self2seg_jax as s2s
img, gt = s2s.data.load_sample(crop=(256, 128, 384, 256))
noisy = s2s.data.add_gaussian_noise(0, img, 30.0)
t0 = time.perf_counter(); r1 = s2s.segment(jax.random.key(0), noisy); t1 = time.perf_counter()
r2 = s2s.segment(jax.random.key(1), noisy); t2 = time.perf_counter()
print(json.dumps({"cold_s": t1 - t0, "warm_s": t2 - t1, "dice_cold": s2s.metrics.dice(r1.mask, gt),
                  "dice_warm": s2s.metrics.dice(r2.mask, gt), "num_outer": int(r1.num_outer),
                  "file": s2s.__file__}))
"""


def run_tree(tree: Path) -> dict:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", WORKLOAD], env=env, capture_output=True, text=True,
                         check=True, cwd=tempfile.gettempdir())
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["file"].startswith(str(tree)), (res["file"], tree)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="03caa6b", help="commit to compare with (default: 03caa6b)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_versions.json")
    args = ap.parse_args(argv)
    from self2seg_jax import provenance

    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), args.old], cwd=ROOT,
                       check=True, capture_output=True)
        try:
            runs = {"old": [], "new": []}
            for i in range(args.repeats):
                for name, tree in (("old", old_tree), ("new", ROOT)):
                    r = run_tree(tree)
                    runs[name].append(r)
                    print(f"[{i + 1}/{args.repeats}] {name}: cold {r['cold_s']:.2f} s, warm "
                          f"{r['warm_s']:.2f} s, Dice {r['dice_cold']:.4f}", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT,
                           capture_output=True)
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("cold_s", "warm_s")}
           for n, rs in runs.items()}
    summary = {
        "workload": "segment, default config, 128x128 DSB2018 patch rows 256-384 cols 128-256, "
                    "noise std 30, seed 0; cold = first call in a process, warm = second call",
        "old_commit": args.old, "repeats": args.repeats, "runs": runs, "median": med,
        "ratio_old_over_new": {k: med["old"][k] / med["new"][k] for k in ("cold_s", "warm_s")},
        "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
        "machine": provenance.provenance(ROOT),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({"median": med, "ratio_old_over_new": summary["ratio_old_over_new"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
