"""Where the bundled 3-D stack goes wrong: Dice and foreground fraction after every outer
iteration of the default run (issue 13), from the same compiled steps as ``segment``.

    python benchmarks/probe_volume_drift.py        # -> results/volume_drift.json

A diagnosis, not a benchmark (times include compilation and whatever else the machine runs).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import alternating, api, metrics, provenance

OUT = Path(__file__).resolve().parent / "results" / "volume_drift.json"


def main() -> int:
    vol, gt = s2s.data.load_sample_3d()
    cfg = s2s.Self2SegConfig()
    p = api.prepare(jax.random.key(0), vol, config=cfg, volume=True)
    auto = api.resolve_lam(p, cfg.replace(lam="auto")).lam
    rows = []
    t = time.perf_counter()
    gen = alternating.states(p.k_run, jnp.asarray(p.f), jnp.asarray(p.start.weights),
                             jnp.asarray(p.start.labels), cfg.hyper(), p.spec)
    for s in gen:
        k = int(s.it)
        lab = np.asarray(s.labels) > 0
        rows.append({"outer": k, "status": alternating.STATUS_NAMES[int(s.status)],
                     "foreground_fraction": round(float(lab.mean()), 4),
                     "dice": round(metrics.dice(lab, gt), 4),
                     "energy": float(s.energies[k - 1]),
                     "train_steps": np.asarray(s.train_steps[k - 1]).tolist(),
                     "seconds": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    start = np.asarray(p.start.labels) > 0
    OUT.write_text(json.dumps({
        "command": "python " + " ".join(sys.argv), "shape": list(vol.shape),
        "gt_fraction": round(float(np.mean(gt)), 4),
        "start": {"dice": round(metrics.dice(start, gt), 4),
                  "foreground_fraction": round(float(start.mean()), 4)},
        "lam": cfg.lam, "lam_auto_choice": auto, "iterations": rows,
        "machine": provenance.provenance(OUT.parent)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
