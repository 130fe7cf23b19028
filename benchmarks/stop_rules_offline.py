"""Offline study of extra stop rules on recorded trajectories (``probe_trajectories.py``).

A rule that can only stop a run *earlier* turns its result into one of the recorded iterates,
so it can be scored without rerunning. Scored here (declared with the probe, before its rows
were seen): the natural stop (what the library does), the best iterate (an upper bound for any
earlier stop — it needs the ground truth), and a divergence guard: stop after iteration
``k >= 2`` when the fraction of changed labels grew (``c_k > c_{k-1}``), returning iterate ``k``
or iterate ``k - 1``.

Added in session 11, *after* the rows had been seen (so a finding, not a test of a declared
rule): looser mask tolerances, ``tol_<t>`` — stop at the first iterate whose changed fraction
is at most ``t`` (the library stops at ``mask_tol = 1e-3`` or by the energy rule); a tolerance
above the library's can only stop earlier, so it too is scored from the recorded iterates.

    python benchmarks/stop_rules_offline.py benchmarks/results/trajectories
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def guard_stop(its: list[dict]) -> int | None:
    """0-based index of the iterate where the divergence guard stops (``None``: never)."""
    for k in range(1, len(its)):
        if its[k]["change"] > its[k - 1]["change"]:
            return k
    return None


#: Looser mask tolerances scored offline (fractions of changed labels).
MASK_TOLS = (3e-3, 5e-3, 1e-2, 2e-2)


def tol_stop(its: list[dict], tol: float) -> int:
    """0-based index of the iterate where a mask tolerance ``tol`` stops (the last iterate
    when no change is that small)."""
    return next((k for k, it in enumerate(its) if it["change"] <= tol), len(its) - 1)


def scores(row: dict) -> dict:
    its = row["iterations"]
    g = guard_stop(its)
    last = len(its) - 1
    return {"natural": its[-1]["dice"], "best_iterate": max(i["dice"] for i in its),
            "guard_k": its[last if g is None else g]["dice"],
            "guard_k_minus_1": its[last if g is None else g - 1]["dice"],
            **{f"tol_{t:g}": its[tol_stop(its, t)]["dice"] for t in MASK_TOLS}}


def group_of(image: str) -> str:
    for pre in ("syn_", "dsb_tuning_", "vol_glow", "vol_", "bundled_stack"):
        if image.startswith(pre):
            return pre.rstrip("_")
    return "other"


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    rows = []
    for p in sorted(folder.glob("*rows.jsonl")):
        rows += [json.loads(x) for x in p.read_text().splitlines()]
    out = {}
    for r in rows:
        out.setdefault((r["config"], group_of(r["image"])), []).append(scores(r))
    summary = {}
    for (cfg, grp), sc in sorted(out.items()):
        summary[f"{cfg}/{grp}"] = {"n": len(sc), **{k: round(float(np.mean([s[k] for s in sc])), 4)
                                                    for k in sc[0]},
                                   "guard_hurts": sum(s["guard_k_minus_1"] < s["natural"] - 0.005
                                                      for s in sc),
                                   "guard_helps": sum(s["guard_k_minus_1"] > s["natural"] + 0.005
                                                      for s in sc),
                                   **{f"tol_{t:g}_hurts_helps": [
                                       sum(s[f"tol_{t:g}"] < s["natural"] - 0.005 for s in sc),
                                       sum(s[f"tol_{t:g}"] > s["natural"] + 0.005 for s in sc)]
                                      for t in MASK_TOLS}}
        print(f"{cfg}/{grp}: {json.dumps(summary[f'{cfg}/{grp}'])}")
    (folder / "stop_rules.json").write_text(json.dumps(
        {"command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])),
         "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
