"""Bytes that cross between host and devices (or between processes) per image of a
``segment_batch`` run, from the array shapes of the program (no timing): the inputs a device
receives (key, normalised image, first-W-step weights, initial labels) and the final state it
returns (relaxed mask, dual field, labels, weights, expert outputs and parameters,
bookkeeping). While the scheme runs, devices exchange nothing (``shard_map`` over the batch).

For one image split over ``D`` devices along its first axis (``segment(..., mesh=...)``) the
mask step's stencils need one boundary row of the relaxed mask and of each dual component from
each neighbour per primal-dual iteration: reported as bytes per iteration and boundary.

    python benchmarks/comm_volume.py --size 128
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import alternating, api, provenance

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--out", type=Path,
                    default=ROOT / "benchmarks" / "results" / "batch" / "comm_volume.json")
    args = ap.parse_args(argv)
    cfg = s2s.Self2SegConfig()
    rows = []
    for n in args.size:
        img = np.random.default_rng(0).random((n, n)).astype(np.float32)
        p = api.prepare(jax.random.key(0), img, config=cfg)
        ins = (np.asarray(jax.random.key_data(p.k_run)), p.f, p.start.weights, p.start.labels)
        out = jax.eval_shape(alternating.run, p.k_run, p.f, p.start.weights, p.start.labels,
                             cfg.hyper(), p.spec)
        out_bytes = sum(int(np.prod(a.shape)) * (8 if jax.dtypes.issubdtype(
            a.dtype, jax.dtypes.prng_key) else a.dtype.itemsize) for a in jax.tree.leaves(out))
        row_bytes = n * 4 * (1 + 2)  # one row of u and of the 2 dual components, float32
        rows.append({"size": n, "input_bytes_per_image": int(sum(a.nbytes for a in ins)),
                     "output_bytes_per_image": int(out_bytes),
                     "space_halo_bytes_per_pd_iteration_per_boundary": 2 * row_bytes})
        print(json.dumps(rows[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "machine": provenance.provenance(ROOT),
                                    "command": "python " + " ".join(
                                        [sys.argv[0]] + (argv or sys.argv[1:]))},
                                   indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
