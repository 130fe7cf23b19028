"""One image across devices: ``segment(..., mesh=space_mesh(devices[:d]))`` against the
unsharded run, side by side in one process (a correctness-and-overhead figure on forced CPU
devices, which share the same cores — not a speed-up measurement).

The DSB2018 sample at ``--size`` (mirror-tiled beyond 512, as ``bench_scaling.py``), Gaussian
noise std 30 (seed 0), default configuration, key 0. Each variant is compiled first (a call on
the same input) and then timed ``--repeats`` times (median). Reports the warm time, its ratio
to the unsharded run, Dice, and the fraction of mask pixels that differ from the unsharded
mask. Re-executes itself with ``XLA_FLAGS=--xla_force_host_platform_device_count=D`` when
fewer devices than ``max(--devices)`` exist. Writes ``results/space/space_<backend>_<size>.json``.

    python benchmarks/bench_space.py --size 1024 --devices 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "space")
    args = ap.parse_args(argv)
    want = max(args.devices)
    flag = f"--xla_force_host_platform_device_count={want}"
    import jax

    if jax.device_count() < want and jax.default_backend() == "cpu" \
            and flag not in os.environ.get("XLA_FLAGS", ""):
        env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flag).strip())
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    import numpy as np
    from bench_scaling import image

    import self2seg_jax as s2s
    from self2seg_jax import provenance

    noisy, gt = image(args.size)
    cfg = s2s.Self2SegConfig()
    key = jax.random.key(0)

    def timed(mesh):
        r = s2s.segment(key, noisy, config=cfg, mesh=mesh)  # compile
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            r = s2s.segment(key, noisy, config=cfg, mesh=mesh)
            ts.append(time.perf_counter() - t)
        return r, statistics.median(ts)

    base, t_base = timed(None)
    rows = [{"devices": 1, "sharded": False, "warm_s": round(t_base, 2), "ratio": 1.0,
             "dice": round(s2s.metrics.dice(base.mask, gt), 4), "num_outer": int(base.num_outer),
             "mask_pixels_differing": 0.0}]
    print(json.dumps(rows[-1]), flush=True)
    for d in args.devices:
        r, t = timed(s2s.space_mesh(jax.devices()[:d]))
        rows.append({"devices": d, "sharded": True, "warm_s": round(t, 2),
                     "ratio": round(t / t_base, 3), "dice": round(s2s.metrics.dice(r.mask, gt), 4),
                     "num_outer": int(r.num_outer),
                     "mask_pixels_differing": float(np.mean(r.mask != base.mask))})
        print(json.dumps(rows[-1]), flush=True)
    out = {"size": args.size, "rows": rows, "device_count": jax.device_count(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "note": "forced CPU devices share the machine's cores: overhead, not speed-up",
           "machine": provenance.provenance(ROOT),
           "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:]))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"space_{jax.default_backend()}_{args.size}.json").write_text(
        json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
