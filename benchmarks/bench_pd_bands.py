"""The mask step's primal–dual iterations on whole arrays and in bands, side by side (issue 13).

``pdhg.Problem(block_pixels=B)`` runs the iterations between two gap checks band by band along
the first spatial axis (bands of about ``B`` pixels with halos; the same iterates). The CPU
policy uses ``B = 2**18``. For each size (a 2-D image, the two-class box problem with the
reference term, lambda 0.03, mu 0.01, a fixed number of iterations, no early stop; or a volume,
``--shapes`` / ``--volumes``) this script
compiles both variants in one process and alternates timed calls (``--repeat`` rounds, best
call), reporting Mpixel-iterations per second, their ratio and the largest difference of the
final ``u``. Writes ``results/pd_bands/pd_bands.json`` with the machine.

    python benchmarks/bench_pd_bands.py          # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from self2seg_jax import backend, io, pdhg, provenance
from self2seg_jax.config import backend_policy

ROOT = Path(__file__).resolve().parents[1]
#: ``--volumes``: slices of 4k-65k voxels, 100-300 of them (session 20).
VOLUMES = ("100x256x256", "128x128x128", "120x80x80", "200x96x96", "256x64x64", "256x72x72",
           "300x56x56")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--shapes", nargs="+", default=[], metavar="AxB[xC]",
                    help="further (e.g. volume) shapes, such as 128x128x128")
    ap.add_argument("--volumes", action="store_true",
                    help="the volume shapes of session 20 instead of --sizes: "
                         + " ".join(VOLUMES))
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--block-pixels", type=int, default=2**18)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pd_bands")
    args = ap.parse_args(argv)
    start = provenance.run_record(ROOT)
    shapes = [] if args.volumes else [(n, n) for n in args.sizes]
    shapes += [tuple(int(a) for a in s.split("x")) for s in args.shapes
               + (list(VOLUMES) if args.volumes else [])]
    rows = []
    for shape in shapes:
        npix = math.prod(shape)
        r = jax.random.normal(jax.random.key(0), shape, jnp.float32) * 0.3
        u_ref = (r < 0).astype(jnp.float32)
        fns, best = {}, {}
        for name, bp in (("whole", 0), ("bands", args.block_pixels)):
            prob = pdhg.Problem(ndim=len(shape), block_pixels=bp)
            fns[name] = backend.jit(lambda r, u_ref, prob=prob: pdhg.solve(
                r, 0.03, prob, mu=0.01, u_ref=u_ref, tol=0.0, max_iter=args.iters).u)
            jax.block_until_ready(fns[name](r, u_ref))  # compile
            best[name] = float("inf")
        for _ in range(args.repeat):
            for name, fn in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(fn(r, u_ref))
                best[name] = min(best[name], time.perf_counter() - t)
        diff = float(jnp.max(jnp.abs(fns["whole"](r, u_ref) - fns["bands"](r, u_ref))))
        layout = pdhg._band_layout(dataclasses.replace(pdhg.Problem(ndim=len(shape)),
                                                       block_pixels=args.block_pixels),
                                   shape, 10)
        rate = {k: npix * args.iters / v / 1e6 for k, v in best.items()}
        rows.append({"size": shape[-1], "shape": list(shape), "iters": args.iters,
                     "mpix_it_per_s": {k: round(v, 1) for k, v in rate.items()},
                     "bands_over_whole": round(rate["bands"] / rate["whole"], 3),
                     "bands": None if layout is None else len(layout[4]),
                     "core_rows": None if layout is None else layout[2],
                     "max_abs_u_difference": diff})
        print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    io.write_json(args.out / "pd_bands.json",
                  {"rows": rows, "cpu_policy_block_pixels": backend_policy("cpu")[
                      "pd_block_pixels"], **start, "load_average_end": list(os.getloadavg())},
                  overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
