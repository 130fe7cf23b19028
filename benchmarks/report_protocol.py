"""Tables of a protocol run, computed only from its recorded rows.

    python benchmarks/report_protocol.py benchmarks/results/dsb2018_v2

Reads ``rows.jsonl`` and ``meta.json`` (which names the protocol file) and writes
``summary.json`` and ``table.md`` beside them. Lambda protocols, per method and noise level:

* **tuned** (the headline): the lambda of best mean Dice over the protocol's *tuning* patches
  and seeds, applied to the *evaluation* patches;
* **oracle** (the paper's protocol): each evaluation image's best lambda of the grid;
* **fixed**: the protocol's fixed lambda (the library default), no selection.

Spread: the unit is the patch (its seeds averaged): mean over the evaluation patches with a 95 %
t-interval. Paired comparisons of each Self2Seg row with each baseline: mean difference,
Wilcoxon signed-rank p-value on the per-patch means (two-sided; ``nan`` when every difference
is zero) and wins / ties / losses over the (patch, seed) pairs (tie: ``|dDice| < tie``).
Grid-end optima: images whose best lambda is the grid's first or last value *and* better than
its neighbour by more than 0.001 (the optimum may lie outside the grid).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import protocol as P  # noqa: E402
from experiments.dsb2018 import PAPER_TABLE1  # noqa: E402

PAPER_NAME = {"chan_vese": "chan_vese", "sequential": "sequential", "s2s_cnn_const": "self2seg",
              "s2s_two_cnn": "self2seg"}


def ci95(x) -> tuple[float, float]:
    """Mean and half-width of the 95 % t-interval of ``x`` (half-width nan for n < 2)."""
    x = np.asarray(x, np.float64)
    if x.size < 2:
        return float(x.mean()), float("nan")
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))


def tuned_index(dice_by_image: np.ndarray) -> int:
    """Grid index of the best mean Dice over images ``(n, L)`` (ties: the smaller lambda)."""
    return int(np.argmax(np.asarray(dice_by_image, np.float64).mean(axis=0)))


def edge_optimum(d) -> bool:
    """Whether the best lambda of one image's Dice curve lies at a grid end and beats its
    neighbour by more than 0.001 (its optimum may lie outside the grid)."""
    d = np.asarray(d, np.float64)
    i = int(np.argmax(d))
    return (i == 0 and d[0] > d[1] + 1e-3) or (i == d.size - 1 and d[-1] > d[-2] + 1e-3)


def wilcoxon_p(diff) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (nan if all are zero)."""
    diff = np.asarray(diff, np.float64)
    if diff.size == 0 or np.all(diff == 0):
        return float("nan")
    return float(stats.wilcoxon(diff).pvalue)


def wtl(diff, tie: float) -> list[int]:
    diff = np.asarray(diff, np.float64)
    return [int((diff >= tie).sum()), int((np.abs(diff) < tie).sum()), int((diff <= -tie).sum())]


def select(rows: list[dict], proto: P.Protocol) -> dict:
    """Per-image Dice under the three lambda protocols for one (method, level) at patch scale.

    Returns ``{"tuned_idx", "tuned_lam", "fixed_lam", "images": {(patch, seed): {"tuned",
    "oracle", "fixed", "oracle_lam"}}, "edge": count, "n_images"}`` over the evaluation split
    (``edge`` over every image of both splits)."""
    lams = rows[0]["lams"]
    tune = [r for r in rows if r["split"] == "tuning"]
    ev = [r for r in rows if r["split"] == "evaluation"]
    fixed = proto.raw["lambda"]["fixed"]
    jf = lams.index(fixed) if fixed in lams else None
    jt = tuned_index([r["dice"] for r in tune]) if tune else None
    out = {}
    for r in ev:
        d = r["dice"]
        out[(r["patch"], r["seed"])] = {
            "tuned": d[jt] if jt is not None else float("nan"),
            "oracle": max(d), "oracle_lam": lams[int(np.argmax(d))],
            "fixed": d[jf] if jf is not None else float("nan"),
        }
    return {"tuned_idx": jt, "tuned_lam": lams[jt] if jt is not None else None, "fixed_lam": fixed,
            "images": out, "edge": sum(edge_optimum(r["dice"]) for r in rows),
            "n_all": len(rows), "n_images": len(ev)}


def per_patch(images: dict, key: str, keep=None) -> dict:
    """``{patch: mean over seeds}`` of one protocol's Dice (only ``keep`` (patch, seed) pairs)."""
    acc = defaultdict(list)
    for (p, s), v in images.items():
        if keep is None or (p, s) in keep:
            acc[p].append(v[key])
    return {p: float(np.mean(v)) for p, v in sorted(acc.items())}


def summarise(rows: list[dict], proto: P.Protocol) -> dict:
    by = defaultdict(list)
    for r in rows:
        by[(r["scale"], r["level"], r["method"])].append(r)
    tie = float(proto.report.get("tie", 0.005))
    levels = sorted({r["level"] for r in rows})
    summary = {"protocol": proto.name, "version": proto.version, "tie": tie, "levels": {}}
    for level in levels:
        cells = {}
        sel = {}
        for method in proto.methods:
            rs = by.get(("patch", level, method))
            if not rs:
                continue
            s = select(rs, proto)
            sel[method] = s
            seeds = sorted({r["seed"] for r in rs})
            cell = {"label": proto.methods[method]["label"], "seeds": seeds,
                    "patches": sorted({p for p, _ in s["images"]}), "n_images": s["n_images"],
                    "tuned_lam": s["tuned_lam"], "fixed_lam": s["fixed_lam"],
                    "grid_end_optima": f"{s['edge']}/{s['n_all']}",
                    "seconds_per_image": float(np.mean([r["seconds"] + r["start_seconds"]
                                                        for r in rs])),
                    "init_dice": ci95(list(per_patch(
                        {(r["patch"], r["seed"]): {"i": r["init_dice"]} for r in rs
                         if r["split"] == "evaluation"}, "i").values()))[0]}
            for key in ("tuned", "oracle", "fixed"):
                m, h = ci95(list(per_patch(s["images"], key).values()))
                cell[key] = {"mean": m, "ci95": h}
            psnr = [max(r["psnr"]) for r in rs if "psnr" in r and r["split"] == "evaluation"]
            if psnr:
                jt = s["tuned_idx"]
                cell["psnr_tuned"] = float(np.mean([r["psnr"][jt] for r in rs if "psnr" in r
                                                    and r["split"] == "evaluation"]))
            paper = PAPER_TABLE1.get(int(level), {}).get(PAPER_NAME.get(method, ""))
            cell["paper_oracle"] = paper
            whole = by.get(("whole", level, method))
            if whole:
                lams = whole[0]["lams"]
                d = np.array([r["dice"] for r in whole])
                jf = lams.index(s["fixed_lam"])
                jt = s["tuned_idx"]
                cell["whole"] = {
                    "seeds": sorted(r["seed"] for r in whole),
                    "fixed": [float(d[:, jf].mean()), float(d[:, jf].std())],
                    "tuned_on_patches": [float(d[:, jt].mean()), float(d[:, jt].std())],
                    "oracle": [float(d.max(axis=1).mean()), float(d.max(axis=1).std())],
                    "oracle_lams": [lams[int(i)] for i in d.argmax(axis=1)],
                    "seconds": float(np.mean([r["seconds"] + r["start_seconds"] for r in whole])),
                }
            cells[method] = cell
        comps = []
        for a in proto.report["self2seg"]:
            for b in proto.report["baselines"]:
                if a not in sel or b not in sel:
                    continue
                common = set(sel[a]["images"]) & set(sel[b]["images"])
                if not common:
                    continue
                c = {"self2seg": a, "baseline": b, "pairs": len(common)}
                for key in ("tuned", "oracle"):
                    pa, pb = per_patch(sel[a]["images"], key, common), per_patch(
                        sel[b]["images"], key, common)
                    dp = np.array([pa[p] - pb[p] for p in pa])
                    di = np.array([sel[a]["images"][k][key] - sel[b]["images"][k][key]
                                   for k in sorted(common)])
                    c[key] = {"delta": float(dp.mean()), "wilcoxon_p": wilcoxon_p(dp),
                              "patches": len(dp), "wtl": wtl(di, tie)}
                comps.append(c)
        summary["levels"][f"{level:g}"] = {"methods": cells, "comparisons": comps}
    return summary


def _f(x, nd=3):
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def table(summary: dict, meta: dict) -> str:
    runs = meta.get("runs", [])
    real = [r for r in runs if not r.get("smoke")]
    dev = sorted({str(r.get("device", "?")) for r in real})
    commits = sorted({str(r.get("commit"))[:7] for r in real})
    lines = [
        f"# Protocol `{summary['protocol']}` (version {summary['version']}) — generated by "
        "`benchmarks/report_protocol.py` from `rows.jsonl`",
        "",
        f"Protocol file: `{meta.get('protocol')}`. Runs: {len(real)} on {'; '.join(dev) or '?'}, "
        f"commits {', '.join(commits) or '?'} (see `meta.json`).",
        "",
        "Dice on the **evaluation** patches (mean over patches of the per-patch mean over noise "
        "seeds, ± 95 % t-interval over patches). *tuned*: λ of best mean Dice on the tuning "
        "patches (the honest headline); *oracle*: each image's best λ (the paper's protocol); "
        "*fixed*: λ = the library default. *grid-end optima*: images (both splits, all seeds) "
        "whose best λ is at a grid end and beats its neighbour by > 0.001.",
        "",
        "| noise | method | seeds × patches | tuned | tuned λ | oracle | paper (oracle, 50 images) "
        "| fixed | start Dice | grid-end optima | s / image (whole grid) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, lv in summary["levels"].items():
        for method, c in lv["methods"].items():
            lines.append(
                f"| {level} | {c['label']} (`{method}`) | {len(c['seeds'])} × {len(c['patches'])} "
                f"| {_f(c['tuned']['mean'])} ± {_f(c['tuned']['ci95'])} | {c['tuned_lam']} "
                f"| {_f(c['oracle']['mean'])} ± {_f(c['oracle']['ci95'])} | {_f(c['paper_oracle'])} "
                f"| {_f(c['fixed']['mean'])} | {_f(c['init_dice'])} | {c['grid_end_optima']} "
                f"| {c['seconds_per_image']:.2f} |")
    lines += ["", "Paired comparisons on the evaluation patches (Δ = Self2Seg row − baseline; "
              f"p: Wilcoxon signed-rank on per-patch means; W/T/L over (patch, seed) pairs, tie "
              f"|ΔDice| < {summary['tie']}):", "",
              "| noise | Self2Seg row | baseline | Δ tuned | p tuned | W/T/L tuned | Δ oracle | "
              "p oracle | W/T/L oracle |", "|---|---|---|---|---|---|---|---|---|"]
    for level, lv in summary["levels"].items():
        for c in lv["comparisons"]:
            t, o = c["tuned"], c["oracle"]
            lines.append(
                f"| {level} | `{c['self2seg']}` | `{c['baseline']}` | {t['delta']:+.3f} | "
                f"{_f(t['wilcoxon_p'], 4)} | {'/'.join(map(str, t['wtl']))} | {o['delta']:+.3f} | "
                f"{_f(o['wilcoxon_p'], 4)} | {'/'.join(map(str, o['wtl']))} |")
    whole = [(lv_name, m, c) for lv_name, lv in summary["levels"].items()
             for m, c in lv["methods"].items() if "whole" in c]
    if whole:
        lines += ["", "Whole 512² sample (mean ± std over noise seeds; *tuned on patches*: the "
                  "λ tuned on the tuning patches — the same image, so not held out):", "",
                  "| noise | method | seeds | fixed λ | tuned on patches | oracle | oracle λ | "
                  "s / image (whole grid) |", "|---|---|---|---|---|---|---|---|"]
        for level, m, c in whole:
            w = c["whole"]
            lines.append(
                f"| {level} | `{m}` | {len(w['seeds'])} | {w['fixed'][0]:.3f} ± {w['fixed'][1]:.3f} "
                f"| {w['tuned_on_patches'][0]:.3f} ± {w['tuned_on_patches'][1]:.3f} | "
                f"{w['oracle'][0]:.3f} ± {w['oracle'][1]:.3f} | {w['oracle_lams']} | "
                f"{w['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def readme_table(summary: dict) -> str:
    """The compact table for README.md: every method's tuned and oracle Dice with intervals, the
    paper's figure, and each Self2Seg row's W/T/L and p against Chan–Vese and the matched
    Chan–Vese (tuned λ) — losing rows included."""
    lines = ["| noise | method | seeds × patches | tuned λ: Dice ± 95 % CI | oracle λ: Dice ± CI | "
             "paper (oracle) | vs Chan–Vese: Δ, W/T/L, p | vs matched Chan–Vese: Δ, W/T/L, p |",
             "|---|---|---|---|---|---|---|---|"]
    for level, lv in summary["levels"].items():
        comp = {(c["self2seg"], c["baseline"]): c["tuned"] for c in lv["comparisons"]}
        for method, c in lv["methods"].items():
            cells = []
            for b in ("chan_vese", "chan_vese_matched"):
                t = comp.get((method, b))
                cells.append("—" if t is None else f"{t['delta']:+.3f}, "
                             f"{'/'.join(map(str, t['wtl']))}, p {_f(t['wilcoxon_p'], 3)}")
            lines.append(
                f"| {level} | `{method}` | {len(c['seeds'])} × {len(c['patches'])} | "
                f"{_f(c['tuned']['mean'])} ± {_f(c['tuned']['ci95'])} | "
                f"{_f(c['oracle']['mean'])} ± {_f(c['oracle']['ci95'])} | "
                f"{_f(c['paper_oracle'])} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- protocol-table:begin -->", "<!-- protocol-table:end -->"


def replace_block(path: Path, block: str) -> None:
    """Replace the text between :data:`BEGIN` and :data:`END` in ``path`` (atomically)."""
    text = path.read_text()
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise SystemExit(f"{path}: markers {BEGIN} ... {END} not found")
    new = text[: i + len(BEGIN)] + "\n" + block + text[j:]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--protocol", type=Path, default=None, help="default: the one meta.json names")
    ap.add_argument("--readme", type=Path, default=None,
                    help="also replace the block between the markers <!-- protocol-table:begin "
                         "--> and <!-- protocol-table:end --> of this file with readme_table.md")
    args = ap.parse_args(argv)
    meta = json.loads((args.results / "meta.json").read_text())
    proto = P.load(args.protocol or meta["protocol"])
    rows = [json.loads(x) for x in (args.results / "rows.jsonl").read_text().splitlines() if x]
    summary = summarise(rows, proto)
    (args.results / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.results / "table.md").write_text(table(summary, meta))
    (args.results / "readme_table.md").write_text(readme_table(summary))
    if args.readme is not None:
        replace_block(args.readme, readme_table(summary))
    print(table(summary, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
