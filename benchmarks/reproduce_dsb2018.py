"""Reproduce the paper's DSB2018 experiment (Table 1, Fig. 5-7) on the bundled nuclei image.

16 non-overlapping 128x128 patches x noise levels 10/30/50 x ten lambdas; Chan-Vese, sequential
(Noise2Fast -> Chan-Vese), Self2Seg in the paper's configuration and with the library defaults.
Reports the paper's per-image oracle lambda and the honest leave-one-patch-out lambda (see
``experiments.dsb2018``). Resumable: rows already in ``rows.jsonl`` are skipped.

    python benchmarks/reproduce_dsb2018.py                      # everything (hours on a CPU)
    python benchmarks/reproduce_dsb2018.py --levels 30 --patches 0 1 2 3
    python benchmarks/reproduce_dsb2018.py --report-only        # tables + figures from rows

Outputs in ``--out`` (default benchmarks/results/dsb2018): rows.jsonl (one row per method,
level, patch: Dice/PSNR per lambda, timings), table.md, per_patch.csv, meta.json,
fig_n{level}.png; masks/ (packed masks for the figures; not committed).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "dsb2018"
FIG_PATCHES = (2, 7, 13)  # fixed in advance (not chosen by result)


def run_info() -> dict:
    """One ``meta.json`` entry: this run's command line, start time and load average, and the
    library's provenance record (versions, device, CPU, cores, git commit, clean-tree flag)."""
    from self2seg_jax.provenance import provenance

    return {
        "command": "python " + shlex.join(sys.argv),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()),
        **provenance(Path(__file__).resolve().parent),
    }


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def mask_path(out: Path, row: dict) -> Path:
    """Packed masks of one row. Rows of the first grid (:data:`LAMBDAS`) used untagged names."""
    from experiments.dsb2018 import LAMBDAS

    stem = f"{row['convention']}_n{row['level']:g}_{row['method']}_p{row['patch']}"
    if [float(x) for x in row["lams"]] != list(LAMBDAS):
        stem += "_" + hashlib.sha1(json.dumps(row["lams"]).encode()).hexdigest()[:8]
    return out / "masks" / f"{stem}.npz"


def alias_of(method, level):
    """``"self2seg"`` where ``method`` is the library default and that equals the paper's
    configuration at ``level`` (noise 10): it is not run again there and the report borrows
    ``self2seg``'s rows; else ``None``. Derived from the configs, not from the noise level."""
    from experiments import dsb2018 as E

    if method == "self2seg_default" and E.method_config(method, level) == E.paper_config(level):
        return "self2seg"
    return None


def _rows_by(rows, level, method):
    """Rows of a (level, method); aliases of Self2Seg's paper config at noise 10 borrow its rows."""
    sel = [r for r in rows if r["level"] == level and r["method"] == method]
    src = alias_of(method, level)
    if not sel and src:
        sel = [dict(r, method=method, alias_of=src) for r in rows
               if r["level"] == level and r["method"] == src]
    return sorted(sel, key=lambda r: r["patch"])


def merged(rows, level, method, grid):
    """Per patch, the Dice (and PSNR) of every lambda of ``grid``, from all rows of the
    (level, method) — one grid may be covered by several runs. Returns ``{patch: [(lam, dice,
    psnr, row, j), ...]}`` for patches that have the whole grid."""
    by_patch: dict[int, dict[float, tuple]] = {}
    for r in _rows_by(rows, level, method):
        for j, lam in enumerate(r["lams"]):
            psnr = r["psnr"][j] if "psnr" in r else float("nan")
            by_patch.setdefault(r["patch"], {})[float(lam)] = (float(lam), r["dice"][j], psnr, r, j)
    out = {}
    for patch, d in sorted(by_patch.items()):
        if all(float(x) in d for x in grid):
            out[patch] = [d[float(x)] for x in grid]
    return out


def missing(rows, level, method, patch, grid):
    have = {float(x) for r in _rows_by(rows, level, method) if r["patch"] == patch for x in r["lams"]}
    return tuple(float(x) for x in grid if float(x) not in have)


def grid_of(args, method, level):
    from experiments import dsb2018 as E

    return tuple(args.lams) if args.lams else E.method_lambdas(method, level)


def run(args) -> None:
    import jax
    from experiments import dsb2018 as E

    out = args.out
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
    meta["runs"].append(run_info())
    _atomic_write(meta_path, json.dumps(meta, indent=1).encode())
    key = jax.random.key(args.key)
    indices = args.patches if args.patches is not None else range(16)
    for level in args.levels:
        def on_row(row, masks):
            buf = io.BytesIO()
            np.savez_compressed(buf, packed=np.packbits(masks), shape=np.array(masks.shape))
            _atomic_write(mask_path(out, row), buf.getvalue())
            with rows_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"n{level:g} {row['method']:>16} patch {row['patch']:2d}: best Dice "
                  f"{max(row['dice']):.3f} over {len(row['lams'])} lambdas  {row['seconds']:.1f} s",
                  flush=True)

        for method in args.methods:
            if alias_of(method, level):
                continue  # same configuration as self2seg there; the report borrows its rows
            rows = [r for r in load_rows(rows_path) if r["convention"] == args.convention]
            grid = grid_of(args, method, level)
            # group the patches by the lambdas they still miss: one batched sweep per group
            groups: dict[tuple, list[int]] = {}
            for i in indices:
                m = missing(rows, level, method, i, grid)
                if m:
                    groups.setdefault(m, []).append(i)
            for lams, idx in groups.items():
                E.run_level(level, key=key, methods=[method], lams=lams, indices=idx,
                            convention=args.convention, batch=args.batch, on_row=on_row)
    report(args)


NAMES = {"chan_vese": "Chan–Vese", "sequential": "sequential (N2F → CV)",
         "self2seg": "Self2Seg (paper config)",
         "self2seg_n2fbg": "Self2Seg (paper, two-N2F-experts reading)",
         "self2seg_bs": "Self2Seg (two N2F experts + blind-spot data term)",
         "self2seg_cvstart": "Self2Seg (paper config, Chan–Vese's Otsu start)",
         "self2seg_default": "Self2Seg (library default)"}


PAPER_COLUMN = {"chan_vese": "chan_vese", "sequential": "sequential", "self2seg": "self2seg",
                "self2seg_n2fbg": "self2seg"}
"""The paper's Table 1 column of each method (the readings of the paper's configuration);
variants that are not the paper's get none."""


def report(args) -> None:
    from experiments import dsb2018 as E

    out = args.out
    rows = [r for r in load_rows(out / "rows.jsonl") if r["convention"] == args.convention]
    if not rows:
        print("no rows yet", file=sys.stderr)
        return
    levels = sorted({r["level"] for r in rows})
    md = [
        f"# DSB2018 reproduction — noise convention `{args.convention}`", "",
        "Dice mean ± std over the patches that every listed method has at that noise level "
        "(`patches`; the full set is 16). *oracle*: per-image best λ of the method's grid (the "
        "paper's protocol); *LOO*: λ with the best mean Dice on the other patches (honest); "
        "*λ=0.03*: the library default fixed in advance (in both grids). Paper: Table 1 (50 "
        "images, oracle). *init mask*: Dice of the shared start (Otsu of the Noise2Fast-denoised "
        "patch) that sequential and Self2Seg begin from.",
        "",
        f"λ grids: unfiltered energies {list(E.LAMBDAS)}; mean-filtered Self2Seg (n30/n50) "
        f"{list(E.FILTERED_LAMBDAS)}" + (f"; overridden by --lams {args.lams}" if args.lams else "") + ". "
        "At noise 10 the library default is the paper configuration itself (not listed twice). "
        "The paper's configuration (`self2seg`) has a constant background at every level; "
        "`self2seg_n2fbg` is the other reading of its noise-30/50 setting (a second Noise2Fast "
        "expert for the background; see `dsb2018.paper_config`).",
        "",
        "| noise | method | patches | oracle | LOO (honest) | λ=0.03 | paper (oracle) | init mask | s / patch (10 λ) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for level in levels:
        grids = {m: grid_of(args, m, level) for m in E.METHODS}
        tables = {m: merged(rows, level, m, grids[m]) for m in E.METHODS}
        # compare the paper's methods on the patches they all have (a partial run has fewer
        # Self2Seg patches than baseline patches); a variant run on fewer patches gets a row
        # on its own patches (see `patches`) and is compared pairwise in the paired table
        present = [m for m in E.METHODS if len(tables[m]) >= 2 and not alias_of(m, level)]
        core = [m for m in ("chan_vese", "sequential", "self2seg") if m in present] or present
        common = set.intersection(*(set(tables[m]) for m in core)) if core else set()
        for method in present:
            sel = [v for k, v in tables[method].items() if k in common]
            if len(sel) < 2:
                continue
            grid = list(grids[method])
            d = np.array([[e[1] for e in v] for v in sel])
            s = E.select_lambda(d)
            i_fixed = grid.index(0.03) if 0.03 in grid else None
            fixed = d[:, i_fixed] if i_fixed is not None else np.full(len(sel), np.nan)
            paper = E.PAPER_TABLE1.get(int(level), {}).get(PAPER_COLUMN.get(method))
            rs = [list({id(e[3]): e[3] for e in v}.values()) for v in sel]  # the rows of each patch
            init = [x[0]["init_dice"] for x in rs if "init_dice" in x[0]]
            # seconds for a whole 10-lambda sweep of one patch: each row's share scaled by its lambda count
            secs = np.mean([
                sum((r["seconds"] + r.get("start_seconds", 0.0)) * len(grid) / len(r["lams"]) / len(x)
                    for r in x) for x in rs])
            summary[f"n{level:g}/{method}"] = {
                "patches": sorted(k for k in tables[method] if k in common), "lams": grid,
                "oracle_mean": float(s["oracle"].mean()), "oracle_std": float(s["oracle"].std()),
                "loo_mean": float(s["loo"].mean()), "loo_std": float(s["loo"].std()),
                "fixed_mean": float(np.mean(fixed)),
                "oracle_lams": [grid[i] for i in s["oracle_idx"]],
                "loo_lams": [grid[i] for i in s["loo_idx"]], "seconds_per_patch": float(secs),
                "mean_dice_per_lam": d.mean(axis=0).round(4).tolist(),
                "init_dice_mean": float(np.mean(init)) if init else None,
                "oracle": s["oracle"].round(4).tolist(), "loo": s["loo"].round(4).tolist(),
                "dice": d.round(4).tolist(),
                "init_dice": [round(float(x), 4) for x in init] if len(init) == len(sel) else None,
            }
            init_s = f"{np.mean(init):.3f}" if init else "—"
            paper_s = f"{paper:.3f}" if paper is not None else "—"
            md.append(
                f"| {level:g} | {NAMES[method]} | {len(sel)} | {s['oracle'].mean():.3f} ± "
                f"{s['oracle'].std():.3f} | {s['loo'].mean():.3f} ± {s['loo'].std():.3f} | "
                f"{np.mean(fixed):.3f} | {paper_s} | {init_s} | {secs:.1f} |"
            )
        figure(args, level, tables)
    md += paired_table(summary)
    md += ["", "Mean Dice per λ (same patches as above; one table per grid):"]
    for grid in sorted({tuple(v["lams"]) for v in summary.values()}):
        md += ["", "| noise / method | " + " | ".join(f"{x:g}" for x in grid) + " |",
               "|---|" + "---|" * len(grid)]
        for k, v in summary.items():
            if tuple(v["lams"]) == grid:
                md.append(f"| {k} | " + " | ".join(f"{x:.3f}" for x in v["mean_dice_per_lam"]) + " |")
    _atomic_write(out / "table.md", ("\n".join(md) + "\n").encode())
    _atomic_write(out / "summary.json", json.dumps(summary, indent=1).encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["convention", "level", "method", "patch", "lam", "dice", "psnr", "num_outer", "seconds_sweep", "init_dice"])
    for r in sorted(rows, key=lambda r: (r["level"], r["method"], r["patch"], r["lams"][0])):
        for j, lam in enumerate(r["lams"]):
            w.writerow([r["convention"], r["level"], r["method"], r["patch"], lam, f"{r['dice'][j]:.4f}",
                        f"{r['psnr'][j]:.2f}" if "psnr" in r else "",
                        r["num_outer"][j] if "num_outer" in r else "", f"{r['seconds']:.2f}",
                        f"{r['init_dice']:.4f}" if "init_dice" in r else ""])
    _atomic_write(out / "per_patch.csv", buf.getvalue().encode())
    print("\n".join(md))


def paired_table(summary: dict, tie: float = 0.005) -> list[str]:
    """Per-patch (paired) comparison of each Self2Seg variant with the baselines: mean Dice
    difference and wins / ties / losses (|difference| < ``tie`` is a tie), oracle and LOO; plus
    the mean gain over the method's own start."""
    from experiments import dsb2018 as E

    md = ["", f"Paired, per patch (same patches as above; tie = |ΔDice| < {tie}):", "",
          "| noise | method | vs (patches) | Δ oracle (mean) | W/T/L oracle | Δ LOO (mean) | W/T/L LOO | gain over start |",
          "|---|---|---|---|---|---|---|---|"]
    for k, v in summary.items():
        level, method = k.split("/")
        if not method.startswith("self2seg"):
            continue
        for base in ("sequential", "chan_vese", "self2seg"):
            b = summary.get(f"{level}/{base}")
            if b is None or base == method:
                continue
            both = sorted(set(v["patches"]) & set(b["patches"]))
            iv = [v["patches"].index(x) for x in both]
            ib = [b["patches"].index(x) for x in both]
            if len(both) < 2:
                continue
            cells = []
            # both protocols on the shared patches only (LOO picks lambda from those)
            sv = E.select_lambda(np.array(v["dice"])[iv])
            sb = E.select_lambda(np.array(b["dice"])[ib])
            for prot in ("oracle", "loo"):
                d = sv[prot] - sb[prot]
                w, t, l = int(np.sum(d >= tie)), int(np.sum(np.abs(d) < tie)), int(np.sum(d <= -tie))
                cells += [f"{d.mean():+.3f}", f"{w}/{t}/{l}"]
            gain = (f"{np.mean(np.array(v['oracle'])[iv] - np.array(v['init_dice'])[iv]):+.3f}"
                    if v.get("init_dice") else "—")
            md.append(f"| {level[1:]} | {method} | {base} ({len(both)}) | " + " | ".join(cells) + f" | {gain} |")
    return md


def figure(args, level, tables) -> None:
    """Paper Fig. 5-7 style: noisy | Self2Seg | sequential | Chan-Vese | GT (oracle lambda)."""
    from experiments import dsb2018 as E
    from matplotlib.figure import Figure

    cols = [m for m in ("self2seg", "self2seg_n2fbg", "self2seg_bs", "self2seg_cvstart", "sequential",
                        "chan_vese") if tables.get(m)]
    have = [p for p in FIG_PATCHES if all(p in tables.get(m, {}) for m in ("self2seg", "sequential", "chan_vese"))]
    if not have:
        return
    patches = {p.index: p for p in E.noisy_patches(level, convention=args.convention, indices=have)}
    fig = Figure(figsize=(2.6 * (len(cols) + 2), 2.7 * len(have)))
    axes = fig.subplots(len(have), len(cols) + 2, squeeze=False)
    for i, pi in enumerate(have):
        p = patches[pi]
        panels = [("noisy", p.noisy)]
        for m in cols:
            if pi not in tables[m]:
                panels.append((f"{m}\n(not run on this patch)", np.zeros_like(p.gt)))
                continue
            lam, dice, _, r, j = max(tables[m][pi], key=lambda e: e[1])
            src = dict(r, method=r.get("alias_of", r["method"]))
            path = mask_path(args.out, src)
            if not path.exists():
                print(f"figure: {path.name} missing (masks/ is not committed); skipped", file=sys.stderr)
                return
            z = np.load(path)
            masks = np.unpackbits(z["packed"])[: int(np.prod(z["shape"]))].reshape(z["shape"]).astype(bool)
            panels.append((f"{m}\nλ={lam:g}, Dice {dice:.3f}", masks[j]))
        panels.append(("ground truth", p.gt))
        for ax, (title, im) in zip(axes[i], panels):
            ax.imshow(im, cmap="gray", interpolation="nearest")
            ax.set_title(title if i == 0 or "\n" in title else "", fontsize=8)
            ax.set_axis_off()
        axes[i][0].set_title(f"noisy (n{level:g}), patch {pi}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    _atomic_write(args.out / f"fig_n{level:g}.png", buf.getvalue())


def main() -> None:
    from experiments.dsb2018 import METHODS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", type=float, nargs="+", default=[30.0, 50.0, 10.0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--patches", type=int, nargs="+", default=None, help="patch indices (default: all 16)")
    ap.add_argument("--lams", type=float, nargs="+", default=None,
                    help="one grid for every method (default: per method, see dsb2018.method_lambdas)")
    ap.add_argument("--convention", choices=["std255", "max"], default="std255")
    ap.add_argument("--batch", choices=["vmap", "map"], default=None,
                    help="Self2Seg lambda batching (default: map on CPU, vmap on GPU/TPU)")
    ap.add_argument("--key", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if args.report_only:
        report(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
