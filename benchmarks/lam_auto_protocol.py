"""``lam="auto"`` under the DSB2018 protocol: fit ``kappa`` on the tuning split, evaluate on
the evaluation split (issue 15, item 6).

    python benchmarks/lam_auto_protocol.py benchmarks/results/dsb2018_v2   # -> results/lam_auto/

1. **Noise scales** (``sigmas.jsonl``, resumable): for every recorded protocol row at patch
   scale (method, level, seed, patch), ``sigma`` = :func:`self2seg_jax.lam_auto.first_step_scale`
   with exactly that row's key, data and start (the protocol's shared Noise2Fast start where the
   method uses it) — what ``segment(lam="auto")`` computes before its run.
2. **Fit** (tuning patches only): the mean Dice over every tuning row of every method and level
   when each row takes the grid value nearest ``kappa * sigma``, for 25 log-spaced ``kappa``;
   the best ``kappa`` is reported (the library's :data:`~self2seg_jax.lam_auto.KAPPA` is that
   value, rounded, fixed before the evaluation was looked at).
3. **Evaluation** (evaluation patches only), with the library's ``KAPPA``: per method and
   level, Dice of auto / fixed (0.03) / tuned / leave-one-out (the best mean lambda over the
   other evaluation patches) / oracle lambda looked up in the rows (the run
   with ``lam="auto"`` equals the fixed-lambda run at the chosen value: tested in
   ``tests/test_lam_auto.py``), mean and 95 % interval over patches (seeds averaged), auto
   minus fixed, tuned and leave-one-out with Wilcoxon p and W/T/L over (patch, seed) pairs.

Writes ``sigmas.jsonl``, ``summary.json`` and ``table.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import protocol as P  # noqa: E402
from report_protocol import ci95, per_patch, tuned_index, wilcoxon_p, wtl  # noqa: E402

from self2seg_jax import lam_auto, provenance  # noqa: E402

KAPPAS = np.exp(np.linspace(np.log(0.1), np.log(3.0), 25))


def _key(r) -> tuple:
    return (r["method"], float(r["level"]), int(r["seed"]), int(r["patch"]))


def compute_sigmas(proto, rows, out: Path, methods=None) -> dict:
    """``{(method, level, seed, patch): sigma}``, computing the missing ones (appended to
    ``out``)."""
    have = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            have[_key(r)] = r["sigma"]
    todo = defaultdict(set)
    for r in rows:
        if r["scale"] == "patch" and _key(r) not in have and (methods is None
                                                              or r["method"] in methods):
            todo[(float(r["level"]), int(r["seed"]))].add(r["method"])
    for (level, seed), ms in sorted(todo.items()):
        t0 = time.perf_counter()
        ims = P.images(proto, level, seed, "patch")
        st = P.starts(proto, ims, seed, denoise=any(P.needs_denoiser(proto, m) for m in ms))
        for method in sorted(ms):
            cfg = P.method_config(proto, method, level)
            hyper, spec = cfg.hyper(), cfg.spec()
            f, m0 = P.method_inputs(proto, method, st)
            with out.open("a") as fh:
                for j, i in enumerate(ims.index):
                    key = P.run_key(proto, seed, i)
                    mj = jnp.asarray(m0[j], jnp.float32)
                    s = float(lam_auto.first_step_scale(key, jnp.asarray(f[j]),
                                                        jnp.stack([1.0 - mj, mj]),
                                                        mj.astype(jnp.int32), hyper, spec))
                    have[(method, level, seed, int(i))] = s
                    fh.write(json.dumps({"method": method, "level": level, "seed": seed,
                                         "patch": int(i), "sigma": s}) + "\n")
        print(f"sigmas noise {level:g} seed {seed}: {sorted(ms)} in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return have


def dice_at(row: dict, lam: float) -> float:
    lams = [round(x, 10) for x in row["lams"]]
    return row["dice"][lams.index(round(lam, 10))]


def fit(rows, sig) -> dict:
    tune = [r for r in rows if r["split"] == "tuning" and _key(r) in sig]
    scores = [float(np.mean([dice_at(r, lam_auto.choose(sig[_key(r)], k)) for r in tune]))
              for k in KAPPAS]
    i = int(np.argmax(scores))
    return {"rows": len(tune), "cells": sorted({f"{r['method']}@{r['level']:g}/s{r['seed']}"
                                                for r in tune}),
            "kappas": KAPPAS.round(4).tolist(), "mean_dice": np.round(scores, 4).tolist(),
            "best_kappa": float(KAPPAS[i]), "best_mean_dice": scores[i]}


def evaluate(proto, rows, sig, kappa: float) -> dict:
    tie = float(proto.report.get("tie", 0.005))
    fixed = proto.raw["lambda"]["fixed"]
    by = defaultdict(list)
    for r in rows:
        if r["scale"] == "patch":
            by[(float(r["level"]), r["method"])].append(r)
    out = {}
    for (level, method), rs in sorted(by.items()):
        ev = [r for r in rs if r["split"] == "evaluation" and _key(r) in sig]
        tune = [r for r in rs if r["split"] == "tuning"]
        if not ev or not tune:
            continue
        jt = tuned_index([r["dice"] for r in tune])
        images = {}
        for r in ev:
            lam = lam_auto.choose(sig[_key(r)], kappa)
            # leave-one-out: the best mean lambda over every other evaluation patch (all seeds)
            jl = tuned_index([o["dice"] for o in ev if o["patch"] != r["patch"]])
            images[(r["patch"], r["seed"])] = {
                "auto": dice_at(r, lam), "auto_lam": lam, "fixed": dice_at(r, fixed),
                "tuned": r["dice"][jt], "loo": r["dice"][jl], "oracle": max(r["dice"])}
        cell = {"seeds": sorted({r["seed"] for r in ev}), "n_images": len(ev),
                "tuned_lam": rs[0]["lams"][jt],
                "auto_lams": dict(sorted(
                    {str(v["auto_lam"]): sum(1 for w in images.values()
                                             if w["auto_lam"] == v["auto_lam"])
                     for v in images.values()}.items(), key=lambda kv: float(kv[0])))}
        for k in ("auto", "fixed", "tuned", "loo", "oracle"):
            m, h = ci95(list(per_patch(images, k).values()))
            cell[k] = {"mean": m, "ci95": h}
        pa = per_patch(images, "auto")
        for other in ("fixed", "tuned", "loo"):
            po = per_patch(images, other)
            dp = np.array([pa[p] - po[p] for p in pa])
            di = np.array([v["auto"] - v[other] for v in images.values()])
            cell[f"auto_minus_{other}"] = {"delta": float(dp.mean()), "wilcoxon_p": wilcoxon_p(dp),
                                           "wtl": wtl(di, tie)}
        out[f"{method}@{level:g}"] = cell
    return out


def table(summary: dict) -> str:
    f = summary["fit"]
    lines = [f"# lam='auto' on {summary['protocol']} (kappa {summary['kappa']:g})", "",
             f"Fit (tuning split, {f['rows']} rows): best kappa {f['best_kappa']:.3f}, mean Dice "
             f"{f['best_mean_dice']:.3f}. Evaluation split below (mean over patches, seeds "
             "averaged, +- 95 % interval; Wilcoxon p over patches; W/T/L over (patch, seed)).",
             "",
             "| method | noise | images | auto | fixed 0.03 | tuned | leave-one-out | oracle | auto - "
             "fixed (p; W/T/L) | auto - tuned (p; W/T/L) | auto - leave-one-out (p; W/T/L) | "
             "lambdas chosen |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in summary["evaluation"].items():
        method, level = name.split("@")
        cells = [f"{c[k]['mean']:.3f} ± {c[k]['ci95']:.3f}" for k in ("auto", "fixed", "tuned",
                                                                       "loo", "oracle")]
        comp = [f"{c[k]['delta']:+.3f} (p {c[k]['wilcoxon_p']:.2g}; "
                f"{'/'.join(map(str, c[k]['wtl']))})" for k in ("auto_minus_fixed",
                                                                "auto_minus_tuned",
                                                                "auto_minus_loo")]
        lams = ", ".join(f"{k}×{v}" for k, v in c["auto_lams"].items())
        lines.append(f"| {method} | {level} | {c['n_images']} | " + " | ".join(cells) + " | "
                     + " | ".join(comp) + f" | {lams} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="protocol results folder (rows.jsonl, meta.json)")
    ap.add_argument("--protocol", type=Path,
                    default=Path(__file__).resolve().parent / "protocols" / "dsb2018_v2.toml")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parent / "results" / "lam_auto")
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--no-compute", action="store_true", help="use the recorded sigmas only")
    args = ap.parse_args(argv)
    proto = P.load(args.protocol)
    rows = [json.loads(x) for x in (args.results / "rows.jsonl").read_text().splitlines()]
    args.out.mkdir(parents=True, exist_ok=True)
    sig_path = args.out / "sigmas.jsonl"
    if args.no_compute:
        sig = compute_sigmas(proto, [], sig_path)
    else:
        sig = compute_sigmas(proto, rows, sig_path, args.methods)
    summary = {"protocol": proto.name, "command": "python " + " ".join(sys.argv),
               "kappa": lam_auto.KAPPA, "grid": list(lam_auto.LAM_GRID),
               "fit": fit(rows, sig), "evaluation": evaluate(proto, rows, sig, lam_auto.KAPPA),
               "machine": provenance.provenance(args.out)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / "table.md").write_text(table(summary))
    print(table(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
