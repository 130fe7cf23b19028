"""Per-patch wins of the DSB2018 table (`results/dsb2018/rows.jsonl`): for each noise level,
how many of the 16 patches Self2Seg (paper config) wins, ties and loses against Chan–Vese, each
with its per-patch best λ (the table's oracle column), and on how many patches the sequential
baseline's best λ is the smallest of its grid (its optimum may lie outside). Writes
`results/dsb2018/wins.json`.

    python benchmarks/dsb2018_wins.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RES = Path(__file__).resolve().parent / "results" / "dsb2018"


def main() -> int:
    rows = [json.loads(line) for line in (RES / "rows.jsonl").read_text().splitlines() if line]
    best = {(r["method"], r["level"], r["patch"]): max(r["dice"]) for r in rows}
    first = {(r["level"], r["patch"]): r["dice"].index(max(r["dice"])) == 0
             for r in rows if r["method"] == "sequential"}
    out = {}
    for level in sorted({r["level"] for r in rows}):
        patches = sorted({p for (m, lv, p) in best if m == "self2seg" and lv == level})
        a = [best[("self2seg", level, p)] for p in patches]
        b = [best[("chan_vese", level, p)] for p in patches]
        out[f"{level:g}"] = {
            "patches": len(patches),
            "self2seg_vs_chan_vese_win_tie_loss": [sum(x > y for x, y in zip(a, b)),
                                                  sum(x == y for x, y in zip(a, b)),
                                                  sum(x < y for x, y in zip(a, b))],
            "sequential_best_at_smallest_lambda": sum(first[(level, p)] for p in patches),
        }
        print(level, out[f"{level:g}"])
    (RES / "wins.json").write_text(json.dumps(
        {"rows": out, "command": "python benchmarks/dsb2018_wins.py"}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
