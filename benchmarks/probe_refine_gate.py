"""Where does the local Chan-Vese step (``refine_size``) help? A probe, not a decision.

Session 22 found ``refine_size=15`` winning every 2-D development image at noise 10 (+0.03)
and losing at noise 50 (results/dev_defaults_s22_k2). This script runs the default scheme
once per image and, from the same final state, the refinement step, and records beside the
two Dice values the gate statistic :func:`self2seg_jax.api.contrast_to_noise` of the
scheme's mask (the classes' median gap over a robust noise std), so that a gate
"refine only when the statistic is at least T" can be chosen on development images and then
declared, with its rule, before a run on fresh ones.

Inputs: ``--set dev``: the 2-D development images of ``dev_defaults.py`` (synthetic nuclei,
image seed 1000 + s, noise 10 / 30 / 50, 128^2 seeds 0-3, 512^2 seeds 0-1, key s; already seen
with refine_15 in session 22) and the bundled 512^2 sample at noise 10 / 30 / 50 (noise seed 0,
key 0; seen in session 22's mask_bias). ``--set dev3d``: dev_volume.py's development volumes
(seen with refine_15 in session 22). Writes ``rows.jsonl`` to ``--out``.

``--set fresh``: 18 FRESH 2-D images no earlier run has used — ``synthetic_nuclei(6000 + s)``,
otherwise the cells of the development set; ``--set confirm2``: dev_volume.py's fresh
confirmation volumes (seeds 4000-4002, first use) and the bundled stack (reported only).
``--set dsb``: the 16 DSB2018 patches at noise 10 / 30 / 50 (the protocol's noise,
``experiments.dsb2018.noisy_patches``; key = patch index, as ``dsb_defaults.py``), reported.

Declared in session 23 after the development rows above (results/refine_gate_s23/rows_dev,
rows_dev3d) and before any run on ``fresh`` or ``confirm2``: the candidate is
``refine_size=15, refine_min_cnr=2.2`` (``GATE``; on the development images the scheme's
statistic was 2.65-4.39 at noise 10 and 1.22-1.76 at noise 30/50, 2.2 lies between; volumes
2.78-4.16 at noise 20, 1.55-1.87 at noise 40 — the last development volume, glow noise 40
seed 1, finished after the declaration: 2.13, gain +0.015; the gate was not changed). Rule, with ``--keys 2`` (an image's Dice: the
mean over its keys): it becomes the default only if (1) on ``fresh`` its mean over the six
cells is >= the default's + 0.005 and no cell is below the default's - 0.01, and (2) on
``confirm2`` its mean over the 18 synthetic volumes and over each group (flat, glow) is >= the
default's - 0.005. If either fails, both fields stay 0 (off) and this gate is not looked at
again under this protocol. The DSB2018 patches and the bundled sample and stack are reported
beside, never deciding. The scheme's run is shared: the candidate's mask is the refined one
where the statistic reaches the gate and the scheme's elsewhere, exactly what
``segment(..., config=Self2SegConfig(refine_size=15, refine_min_cnr=2.2))`` returns
(``api.refine`` applies the same statistic to the same labels).
Outcome (session 23, results/refine_gate_s23/): (1) met — fresh, mean over the six cells
0.8270 vs 0.8169 (noise 10: +0.0245 / +0.0362 at 128^2 / 512^2, every image; noise 30 / 50:
never refined, unchanged); (2) met — confirm2, all +0.0031 (W/T/L 4/13/1), flat +0.0016,
glow +0.0047. ``refine_size=15, refine_min_cnr=2.2`` are the defaults since. Reported beside:
DSB2018 noise 10 +0.0375 (14/2/0, p 0.001), noise 30 / 50 never refined; bundled stack (keys
18 / 1018) 0.556 / 0.621 -> 0.589 / 0.666.
(These runs computed the statistic in float64; since, float32 and a regular subsample above
2^21 pixels — no image here is that large, and no run's value lay within 0.005 of the gate.)

    python benchmarks/probe_refine_gate.py --set dev --out benchmarks/results/refine_gate_s23
    python benchmarks/probe_refine_gate.py --set fresh --keys 2 --out ...
    python benchmarks/probe_refine_gate.py --set confirm2 --keys 2 --out ...
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import api, provenance

ROOT = Path(__file__).resolve().parents[1]
GATE = 2.2  # the candidate's refine_min_cnr (module docstring)
sys.path.insert(0, str(ROOT / "benchmarks"))


def _cells(seed0):
    """The six 2-D cells of ``dev_defaults.py`` with image seeds ``seed0 + s``, key ``s``."""
    for n in (10.0, 30.0, 50.0):
        for size, seeds in ((128, (0, 1, 2, 3)), (512, (0, 1))):
            for sd in seeds:
                noisy, _, gt = s2s.data.synthetic_nuclei(seed0 + sd, (size, size), noise=n)
                yield f"n{n:g}_{size}", f"syn{seed0 + sd}", noisy, gt, sd, False


def inputs(which):
    """Yield ``(group, name, noisy, gt, key, volume)``."""
    if which == "dev":
        yield from _cells(1000)
        clean, gt = s2s.data.load_sample()
        for n in (10.0, 30.0, 50.0):
            yield f"sample_n{n:g}", "sample_s0", s2s.data.add_gaussian_noise(0, clean, n), gt, 0, \
                False
    elif which == "dsb":
        from experiments import dsb2018 as E

        for level in (10.0, 30.0, 50.0):
            for q in E.noisy_patches(level):
                yield f"dsb_n{level:g}", f"patch{q.index}", q.noisy, q.gt, q.index, False
    elif which == "fresh":
        yield from _cells(6000)
    else:
        import dev_volume
        for i, (name, (noisy, gt)) in enumerate(
                dev_volume.volumes("dev" if which == "dev3d" else which).items()):
            group = "stack" if name == "bundled_stack" else (
                "glow" if name.startswith("syn_glow") else "flat")
            yield group, name, noisy, gt, i, True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="which",
                    choices=("dev", "dev3d", "fresh", "confirm2", "dsb"),
                    default="dev")
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--keys", type=int, default=1,
                    help="runs per image, keys i + 1000 k for k < KEYS; an image's Dice is the "
                         "mean over its keys")
    ap.add_argument("--iters", type=int, nargs="*", default=[],
                    help="also record the refinement run for N outer iterations (refine_iters)")
    ap.add_argument("--gate", type=float, default=GATE,
                    help="refine_min_cnr of the candidate whose rule the summary applies")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    record = provenance.run_record(ROOT, [sys.argv[0]] + (argv or sys.argv[1:]))
    # the step always (refine_min_cnr 0): the gate is applied offline, by summarise()
    cfg = s2s.Self2SegConfig(crop_batch=2, refine_size=args.window, refine_min_cnr=0.0)
    rows = []
    runs = [(g, nm, x, gt, i + 1000 * k, vol) for g, nm, x, gt, i, vol in inputs(args.which)
            for k in range(args.keys)]
    for group, name, noisy, gt, key, volume in runs:
        p = api.prepare(jax.random.key(key), noisy, config=cfg, volume=volume)
        state, used = api.run_prepared(p, cfg)
        labels = np.asarray(jax.device_get(state.labels))
        ref = api.refine(state, p, used)
        rlab = labels if ref is None else np.asarray(jax.device_get(ref[0].labels))
        row = {"group": group, "name": name, "key": key,
               "dice": round(s2s.metrics.dice(labels == 1, gt), 4),
               "dice_refined": round(s2s.metrics.dice(rlab == 1, gt), 4),
               "cnr": round(api.contrast_to_noise(p.f, labels, 2), 3),
               "cnr_start": round(api.contrast_to_noise(p.f, p.start.labels, 2), 3),
               "fg_ratio": round(float((labels == 1).sum() / gt.sum()), 3)}
        row["gain"] = round(row["dice_refined"] - row["dice"], 4)
        for n in args.iters:  # the refinement iterated (refine_iters = n), same scheme state
            it = api.refine(state, p, used.replace(refine_iters=n))
            lab_n = labels if it is None else np.asarray(jax.device_get(it[0].labels))
            row[f"dice_refined_it{n}"] = round(s2s.metrics.dice(lab_n == 1, gt), 4)
            row[f"outer_it{n}"] = 0 if it is None else int(it[0].it)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = summarise(rows, args.gate, volumes=args.which in ("dev3d", "confirm2"))
    print(json.dumps(summary, indent=1))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rows_{args.which}.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                               for r in rows))
    (args.out / f"summary_{args.which}.json").write_text(json.dumps(
        {"summary": summary, "set": args.which, "keys": args.keys, "window": args.window,
         **record}, indent=1) + "\n")
    return 0


def _p(p: float):
    return None if not np.isfinite(p) else round(float(p), 4)  # None: every pair tied


def summarise(rows, gate: float, *, volumes: bool) -> dict:
    """Per group: mean Dice of the default, of the step always (``refined``) and of the gated
    candidate (refined where ``cnr >= gate``), paired differences against the default (mean,
    W/T/L with ties |d| < 0.001, Wilcoxon p) over images (an image's Dice: mean over keys), and
    the declared rule (module docstring) applied: 2-D, ``mean over cells >= default + 0.005``
    and no cell below ``default - 0.01``; volumes, the all / flat / glow means each
    ``>= default - 0.005`` (the bundled stack reported, never deciding)."""
    from report_protocol import wilcoxon_p, wtl

    per = {}
    for r in rows:
        gated = r["dice_refined"] if r["cnr"] >= gate else r["dice"]
        per.setdefault((r["group"], r["name"]), []).append(
            (r["dice"], r["dice_refined"], gated, r["cnr"] >= gate))
    groups = sorted({g for g, _ in per})
    sets = {g: [k for k in per if k[0] == g] for g in groups}
    if volumes:
        sets["all"] = [k for k in per if k[0] in ("flat", "glow")]
    out = {"gate": gate, "groups": {}}
    for g, keys in sets.items():
        if not keys:
            continue
        m = np.array([np.mean(per[k], axis=0) for k in keys])  # (images, 4)
        d = m[:, 2] - m[:, 0]
        out["groups"][g] = {"n": len(keys), "default": round(float(m[:, 0].mean()), 4),
                            "refined": round(float(m[:, 1].mean()), 4),
                            "gated": round(float(m[:, 2].mean()), 4),
                            "refined_share": round(float(m[:, 3].mean()), 3),
                            "gated_minus_default": round(float(d.mean()), 4),
                            "w_t_l": wtl(d, 0.001), "wilcoxon_p": _p(wilcoxon_p(d))}
    gs = out["groups"]
    if volumes:
        ok = all(gs[g]["gated_minus_default"] >= -0.005 for g in ("all", "flat", "glow")
                 if g in gs)
    else:
        cells = [g for g in gs if g.startswith("n")]
        diffs = [gs[g]["gated_minus_default"] for g in cells]
        ok = (float(np.mean(diffs)) >= 0.005 and min(diffs) >= -0.01) if cells else None
        out["mean_over_cells"] = {k: round(float(np.mean([gs[g][k] for g in cells])), 4)
                                  for k in ("default", "refined", "gated")} if cells else {}
    out["rule_met"] = None if ok is None else bool(ok)  # None: a set that decides nothing
    return out


if __name__ == "__main__":
    sys.exit(main())
