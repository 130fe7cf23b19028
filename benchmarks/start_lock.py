"""How far each Self2Seg row of a protocol moves from its start (a diagnosis from recorded rows).

Reading B (two CNN experts) is the weakest Self2Seg row of ``dsb2018_v2`` and its intervals are
wide. This script asks the committed rows one question, without running anything: does the
scheme move away from its start, and does it recover from a poor one? For every Self2Seg method
and noise level (patch scale, both splits: a diagnosis, not a headline figure) at the
protocol's fixed lambda it reports

* ``near_start``: the share of runs whose final Dice is within ``--near`` of the start's Dice;
* ``mean_abs_move``: the mean ``|Dice - start Dice|``;
* ``mean_outer``: the mean number of outer iterations;
* ``poor_start``: runs whose start has Dice below ``--poor``, their mean start and final Dice;
* for methods with the same start (``start`` in the protocol), the paired comparison on the
  poor-start runs (same patch, noise and start).

Usage::

    python benchmarks/start_lock.py benchmarks/results/dsb2018_v2

writes ``start_lock.json`` and ``start_lock.md`` into that folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from experiments import protocol as P  # noqa: E402

from self2seg_jax import io, provenance  # noqa: E402


def analyse(rows: list[dict], proto, lam: float, near: float, poor: float) -> dict:
    """The figures described in the module docstring, per ``method -> level``."""
    methods = [m for m in proto.raw["report"]["self2seg"]
               if any(r["method"] == m for r in rows)]
    out: dict = {}
    by_key = {}
    for r in rows:
        if r["scale"] == "patch" and r["method"] in methods and lam in r["lams"]:
            j = r["lams"].index(lam)
            by_key[(r["method"], r["level"], r["seed"], r["patch"])] = (
                r["init_dice"], r["dice"][j], r["num_outer"][j])
    for m in methods:
        start = proto.methods[m]["start"]
        out[m] = {"start": start, "levels": {}}
        for level in sorted({k[1] for k in by_key if k[0] == m}):
            runs = {k[2:]: v for k, v in by_key.items() if k[0] == m and k[1] == level}
            moves = [abs(d - s) for s, d, _ in runs.values()]
            low = {k: v for k, v in runs.items() if v[0] < poor}
            entry = {
                "runs": len(runs),
                "near_start": round(sum(x < near for x in moves) / len(runs), 3),
                "mean_abs_move": round(sum(moves) / len(runs), 4),
                "mean_outer": round(sum(v[2] for v in runs.values()) / len(runs), 2),
                "poor_start": {
                    "runs": len(low),
                    "mean_start_dice": round(sum(v[0] for v in low.values()) / len(low), 4)
                    if low else None,
                    "mean_dice": round(sum(v[1] for v in low.values()) / len(low), 4)
                    if low else None,
                },
                "paired_poor_start": {},
            }
            for other in methods:
                if other == m or proto.methods[other]["start"] != start:
                    continue
                pairs = [(v[1], by_key[(other, level) + k][1]) for k, v in low.items()
                         if (other, level) + k in by_key]
                if pairs:
                    entry["paired_poor_start"][other] = {
                        "runs": len(pairs),
                        "mean_dice": round(sum(a for a, _ in pairs) / len(pairs), 4),
                        "other_mean_dice": round(sum(b for _, b in pairs) / len(pairs), 4),
                        "other_higher": sum(b > a for a, b in pairs),
                    }
            out[m]["levels"][str(level)] = entry
    return out


def table(res: dict, lam: float, near: float, poor: float) -> str:
    lines = [f"# How far the Self2Seg rows move from their start (lambda = {lam}, patch scale, "
             "both splits)", "",
             f"near start: final Dice within {near} of the start's; poor start: start Dice < "
             f"{poor} (final Dice mean; paired: the same runs of the other rows with the same "
             "start).", "",
             "| method | level | runs | near start | mean abs move | mean outer | poor-start runs "
             "| their start → final Dice | same runs, other rows |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, e in res.items():
        for level, x in e["levels"].items():
            p = x["poor_start"]
            moved = (f"{p['mean_start_dice']:.3f} → {p['mean_dice']:.3f}" if p["runs"] else "—")
            other = "; ".join(f"{o} {q['other_mean_dice']:.3f} (higher in {q['other_higher']}/"
                              f"{q['runs']})" for o, q in x["paired_poor_start"].items()) or "—"
            lines.append(f"| {m} | {float(level):g} | {x['runs']} | {x['near_start']:.0%} | "
                         f"{x['mean_abs_move']:.3f} | {x['mean_outer']:.2f} | {p['runs']} | "
                         f"{moved} | {other} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a protocol's results folder (rows.jsonl, "
                    "meta.json)")
    ap.add_argument("--near", type=float, default=0.05)
    ap.add_argument("--poor", type=float, default=0.5)
    args = ap.parse_args(argv)
    meta = json.loads((args.results / "meta.json").read_text())
    proto = P.load(ROOT / meta["protocol"])
    rows = [json.loads(s) for s in (args.results / "rows.jsonl").read_text().splitlines() if s]
    lam = float(proto.raw["lambda"]["fixed"])
    res = analyse(rows, proto, lam, args.near, args.poor)
    record = {**provenance.run_record(ROOT), "lambda": lam, "near": args.near,
              "poor": args.poor, "rows": len(rows), "methods": res}
    io.write_json(args.results / "start_lock.json", record, overwrite=True)
    md = table(res, lam, args.near, args.poor)
    (args.results / "start_lock.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
