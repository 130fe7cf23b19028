"""Two methods of a protocol run compared at one fixed λ, paired on the (noise seed, patch)
images both have, evaluation patches only: mean Dice of each, the mean difference, W/T/L (tie
below the protocol's ``tie``) and the Wilcoxon signed-rank p on the paired values; whole-image
rows listed beside. Writes ``<results>/compare_<a>_vs_<b>.json``.

    python benchmarks/compare_protocol_rows.py benchmarks/results/dsb2018_v2 s2s_library_s9 s2s_library
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiments import protocol as P  # noqa: E402
from report_protocol import wilcoxon_p, wtl  # noqa: E402
from run_protocol import load_rows  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--lam", type=float, default=None, help="default: the protocol's fixed λ")
    ap.add_argument("--protocol", type=Path,
                    default=ROOT / "benchmarks" / "protocols" / "dsb2018_v2.toml")
    args = ap.parse_args(argv)
    proto = P.load(args.protocol)
    lam = proto.raw["lambda"]["fixed"] if args.lam is None else args.lam
    tie = proto.raw["report"]["tie"]
    ev = set(proto.data["evaluation_patches"])
    rows = load_rows(args.results / "rows.jsonl")

    def at_lam(r):
        lams = [round(x, 12) for x in r["lams"]]
        return r["dice"][lams.index(round(lam, 12))] if round(lam, 12) in lams else None

    out = {"a": args.a, "b": args.b, "lam": lam, "tie": tie, "levels": {}, "whole": []}
    for level in sorted({r["level"] for r in rows}):
        val = {m: {(r["seed"], r["patch"]): at_lam(r) for r in rows
                   if r["method"] == m and r["level"] == level and r["scale"] == "patch"
                   and r["patch"] in ev} for m in (args.a, args.b)}
        common = sorted(k for k in val[args.a] if k in val[args.b]
                        and val[args.a][k] is not None and val[args.b][k] is not None)
        if not common:
            continue
        x = np.array([val[args.a][k] for k in common])
        y = np.array([val[args.b][k] for k in common])
        d = x - y
        out["levels"][f"{level:g}"] = {
            "pairs": len(common), "seeds": sorted({k[0] for k in common}),
            "mean_a": round(float(x.mean()), 4), "mean_b": round(float(y.mean()), 4),
            "mean_diff": round(float(d.mean()), 4),
            "wtl": wtl(d, tie), "wilcoxon_p": round(wilcoxon_p(d), 3)}
    for r in rows:
        if r["method"] in (args.a, args.b) and r["scale"] == "whole":
            out["whole"].append({"method": r["method"], "level": r["level"], "seed": r["seed"],
                                 "dice": at_lam(r)})
    out["command"] = "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:]))
    path = args.results / f"compare_{args.a}_vs_{args.b}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["levels"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
