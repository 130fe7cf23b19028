"""Which expert takes the bundled 3-D stack: the default (CNN foreground, constant background),
two constant experts (convex Chan–Vese), and two CNN experts with the output or the blind-spot
data term — Dice and foreground fraction of each (issue 13's failure case; a diagnosis on the
stack only, which is never used to choose a default).

    python benchmarks/probe_stack_experts.py     # -> results/stack_experts.json
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import jax

import self2seg_jax as s2s
from self2seg_jax import provenance

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "stack_experts.json"
VARIANTS = {
    "default": {},
    "constant_both": dict(fg_expert="constant", bg_expert="constant"),
    "two_cnn": dict(bg_expert="n2f"),
    "two_cnn_blind_spot": dict(bg_expert="n2f", data_term="blind_spot"),
}


def main(argv=None) -> int:
    warnings.simplefilter("ignore", RuntimeWarning)
    stack, gt = s2s.data.load_sample_3d()
    rows = []
    for name, changes in VARIANTS.items():
        t = time.perf_counter()
        r = s2s.segment(jax.random.key(8), stack, volume=True,
                        config=s2s.Self2SegConfig(**changes))
        rows.append({"variant": name, "changes": changes,
                     "dice": round(s2s.metrics.dice(r.mask, gt), 4),
                     "foreground_fraction": round(float(r.mask.mean()), 3),
                     "num_outer": int(r.num_outer), "status": r.status,
                     "seconds_incl_compile": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    OUT.write_text(json.dumps({"gt_fraction": round(float(gt.mean()), 4), "rows": rows,
                               "machine": provenance.provenance(ROOT),
                               "command": "python benchmarks/probe_stack_experts.py"},
                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
