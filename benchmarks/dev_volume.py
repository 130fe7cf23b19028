"""Expert pairs for volumes: a fixed list of variants on synthetic 3-D nuclei (the choice is
made there) with the bundled 3-D stack reported beside them (never used to choose).

Synthetic: ``data.synthetic_nuclei(2000 + s, (32, 64, 64), noise=n)`` for s in 0, 1 and n in
20, 40 (0..255 scale; a gentle background gradient), and the same with
out-of-focus light (``glow=0.3``, ``glow_sigma=3``: the background brighter next to nuclei, as
in widefield stacks; parameters set before any run, not fitted to the bundled stack). The
bundled stack: ``load_sample_3d()`` with its own noise, Otsu 0.769. Each variant is the default
configuration with the listed changes, ``volume=True``, key ``jax.random.key(i)`` (i = the
volume's position in the list). Writes ``results/dev_volume/`` (or ``--out``).

``--set confirm`` (session 18): 18 *fresh* synthetic volumes that no earlier run has used —
seeds 3000..3002 x noise 20 / 30 / 40 x glow 0 / 0.3, same shape and generator — to confirm or
reject a candidate chosen on the development volumes above. Declared before any run on them:
**µ = 0.05 becomes the volume default (2-D keeps 0.01) only if, on these 18 volumes, its mean
Dice is >= the default's, and in each group (flat, glow) its mean is >= the default's - 0.005.**
(µ 0.05 was seen on the development volumes and the bundled stack in session 17:
``dev_volume_s17_mu``.) The bundled stack is reported beside, never used to decide.
``confirm`` was used a second time in session 21 (``factorised_3d``, below). ``--set confirm2``
(session 21, never run): seeds 4000..4002, otherwise as ``confirm`` — the set for the next
candidate, to be named with its rule in this file before its first run (with ``--keys 2`` or
more: one key moved a volume's Dice by up to 0.12, ``results/dev_volume_s21_k3``).

    python benchmarks/dev_volume.py          # a GPU: ~3 min; the 2-core CPU: ~2 min a variant
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import provenance
from self2seg_jax.initialisation import otsu_threshold

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "default": {},
    "constant_both": dict(fg_expert="constant", bg_expert="constant"),
    "n2f_both_blind_spot_mu0": dict(bg_expert="n2f", data_term="blind_spot", mu=0.0),
    "n2f_both_blind_spot": dict(bg_expert="n2f", data_term="blind_spot"),
    "n2f_fg_linear_bg": dict(bg_expert="linear"),
    "linear_both": dict(fg_expert="linear", bg_expert="linear"),
    "n2f_fg_blind_spot": dict(data_term="blind_spot"),
    # session 15: the smooth (local-mean) background expert; on the bundled stack (reported,
    # not used to choose) seen before these runs: 0.573 / 0.756 with key 8.
    "smooth_bg": dict(bg_expert="smooth"),
    "smooth_bg_blind_spot": dict(bg_expert="smooth", data_term="blind_spot"),
    # session 17: experts re-initialised before every W-step (the authors' code); seen before on
    # the bundled stack only (key 0: 0.776). Decided with dev_defaults.py's rule (its comment).
    "cold_start": dict(warm_start=False),
    # later in session 17 (see dev_defaults.py): five times the reference-mask weight
    "mu_0.05": dict(mu=0.05),
    # session 19: re-initialised experts with the energy rule off (stop on the mask only), as
    # the authors' code; declared with its rule in dev_defaults.py before any run of it
    "cold_start_mask_stop": dict(warm_start=False, energy_p=0.0),
    # session 20 (issue 13, volumes' cost): factorised "(2+1)-D" CNN layers (3x3 in-plane, then
    # 3 taps along z; 0.44x the multiply-adds of a 3x3x3 layer). A speed change, so its rule
    # tolerates the same -0.005 as cold_start's. Declared before any run of it (seen before:
    # scratch timings of a 3-D crop-training step only, 55-62 vs 83 ms; no Dice of it anywhere).
    # Rule: it becomes the default (it changes volumes only; 2-D is unaffected by construction,
    # tests/test_nets.py) only if (1) on the 8 development volumes its flat and glow means are
    # each >= the default's - 0.005, then (2) on the confirmation set (its SECOND use, after
    # session 18's mu 0.05) its mean over the 18 volumes and each group's mean are >= the
    # default's - 0.005 (``rule_met`` below applies TOLERANCE), and (3) side by side
    # (bench_scaling.py) the bundled stack and a larger tiled volume run faster warm. The
    # bundled stack's Dice is reported beside, never used to decide.
    "factorised_3d": dict(net_conv3d="factorised"),
    # Session 22: the local Chan-Vese step after the scheme (refine_size), declared with its
    # 2-D rule in dev_defaults.py before any run of it on these volumes (seen before: 2-D
    # scratch runs only; never a volume). Volume part of the rule: with --keys 2, (1) on the
    # development volumes the all, flat and glow means each >= the default's - 0.005, then (2)
    # on the fresh confirm2 set (its first use) the same. The bundled stack is reported beside.
    # Outcome (results/dev_volume_s22_k2/): (1) met by W 15 (+0.0117, glow +0.021, flat
    # +0.002), missed by W 31 (flat -0.0155); moot, as both failed the 2-D part: confirm2 unused.
    "refine_15": dict(refine_size=15, refine_min_cnr=0.0),  # the step always (session 22)
    "refine_31": dict(refine_size=31, refine_min_cnr=0.0),
    # Session 21: a SECOND LOOK at factorised_3d, which failed (1) above in session 20 on flat
    # (-0.0075, one key per volume) — in a session where one initialisation draw alone had
    # moved the default's group means by up to 0.0035. Declared before any run of it: the same
    # rule with three keys per volume (``--keys 3``, keys i, i + 1000, i + 2000; a volume's Dice
    # is its mean over them): (1) on the development volumes all, flat and glow means each
    # >= the default's - 0.005; then (2) on the confirmation set with ``--keys 2`` (its second
    # use) the same; (3) speed was shown in session 20 (results/volume_s20/). (Edited after
    # the declaration, before any Dice run: the z-taps as one matrix product were measured no
    # faster and reverted, results/step_cost_s21/; the rule is unchanged.) All three met:
    # net_conv3d defaults to "factorised". Any one missed: it stays an option and is not
    # looked at again under this protocol. Outcome: (1) met, (2) failed (-0.0112, W/T/L
    # 1/5/12, results/dev_volume_s21_confirm_k2/); net_conv3d stays "full".
}
#: Tolerated loss of mean Dice (vs the default) of ``rule_met`` over all synthetic volumes, per
#: variant: 0 (must not lose) unless listed — speed changes tolerate -0.005.
TOLERANCE = {"factorised_3d": -0.005, "refine_15": -0.005, "refine_31": -0.005}


def volumes(which: str = "dev") -> dict:
    """``{name: (noisy, gt)}``: the synthetic volumes of the development (8) or a confirmation
    (18) set, then ``"bundled_stack"``."""
    seed0, noises, seeds = {"dev": (2000, (20, 40), (0, 1)),
                            "confirm": (3000, (20, 30, 40), (0, 1, 2)),
                            "confirm2": (4000, (20, 30, 40), (0, 1, 2))}[which]
    vols = {}
    for glow in (0.0, 0.3):
        for n in noises:
            for s in seeds:
                noisy, _, gt = s2s.data.synthetic_nuclei(seed0 + s, (32, 64, 64), noise=n,
                                                         glow=glow)
                vols[f"syn{'_glow' if glow else ''}_n{n}_s{s}"] = (noisy, gt)
    stack, gt = s2s.data.load_sample_3d()
    vols["bundled_stack"] = (stack, gt)
    return vols


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--set", dest="which", choices=("dev", "confirm", "confirm2"), default="dev",
                    help="the development volumes (choose) or a confirmation set (confirm: used "
                         "twice by session 21; confirm2: not yet used)")
    ap.add_argument("--keys", type=int, default=1,
                    help="runs per volume and variant, keys i + 1000 k for k < KEYS (k = 0: the "
                         "single key of earlier sessions); rules compare per-volume means")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dev_volume")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    machine = provenance.provenance(ROOT)  # the commit and tree state the runs start from
    vols = volumes(args.which)
    rows = []
    for name, (noisy, gt) in vols.items():
        f = s2s.api.normalise(noisy, "minmax")[0]
        rows.append({"variant": "otsu", "volume": name,
                     "dice": round(s2s.metrics.dice(f > otsu_threshold(f), gt), 4)})
    for v in args.variants:
        cfg = s2s.Self2SegConfig(**VARIANTS[v])
        runs = [(i + 1000 * k, name, noisy, gt) for i, (name, (noisy, gt))
                in enumerate(vols.items()) for k in range(args.keys)]
        for key, name, noisy, gt in runs:
            try:
                t = time.perf_counter()
                r = s2s.segment(jax.random.key(key), noisy, config=cfg, volume=True)
                dt = time.perf_counter() - t
                rows.append({"variant": v, "volume": name, "key": key,
                             "dice": round(s2s.metrics.dice(r.mask, gt), 4),
                             "fraction": round(float(r.mask.mean()), 3),
                             "seconds_incl_compile": round(dt, 2), "status": r.status,
                             "num_outer": int(r.num_outer)})
            except Exception as e:  # noqa: BLE001 — record and go on
                rows.append({"variant": v, "volume": name, "key": key,
                             "error": repr(e)[:300]})
            print(json.dumps(rows[-1]), flush=True)
    syn = {}
    for group, pre in (("flat", "syn_n"), ("glow", "syn_glow")):
        for v in ["otsu"] + args.variants:
            d = [r["dice"] for r in rows if r["variant"] == v and r["volume"].startswith(pre)
                 and "dice" in r]
            syn[f"{group}/{v}"] = round(float(np.mean(d)), 4) if d else None
    paired = {v: _paired(rows, v) for v in args.variants if v != "default"
              and "default" in args.variants}
    print(json.dumps({"synthetic_mean_dice": syn, "paired_vs_default": paired}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (args.out / "summary.json").write_text(json.dumps(
        {"set": args.which, "keys": args.keys, "synthetic_mean_dice": syn,
         "paired_vs_default": paired, "variants": VARIANTS, "machine": machine,
         "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:]))},
        indent=1) + "\n")
    return 0


def _paired(rows, v) -> dict:
    """Variant ``v`` against the default on the synthetic volumes: mean difference of Dice,
    wins / ties (|d| < 0.001) / losses, Wilcoxon signed-rank p, per group and overall; and the
    decision rule of the confirmation set (docstring) applied to these rows."""
    from report_protocol import wilcoxon_p, wtl

    runs = {}  # a volume's Dice: the mean over its keys (``--keys``)
    for r in rows:
        if "dice" in r:
            runs.setdefault((r["variant"], r["volume"]), []).append(r["dice"])
    by = {vn: float(np.mean(d)) for vn, d in runs.items()}
    out = {}
    for group, pre in (("all", "syn"), ("flat", "syn_n"), ("glow", "syn_glow")):
        names = sorted({n for (_, n) in by if n.startswith(pre)})
        pairs = [(by[(v, n)], by[("default", n)]) for n in names
                 if (v, n) in by and ("default", n) in by]
        if not pairs:
            continue
        a, b = np.array(pairs).T
        d = a - b
        out[group] = {"n": len(d), "mean": round(float(a.mean()), 4),
                      "default_mean": round(float(b.mean()), 4),
                      "mean_diff": round(float(d.mean()), 4), "w_t_l": wtl(d, 0.001),
                      "wilcoxon_p": round(wilcoxon_p(d), 4)}
    if all(g in out for g in ("all", "flat", "glow")):
        out["rule_met"] = bool(out["all"]["mean_diff"] >= TOLERANCE.get(v, 0.0)
                               and out["flat"]["mean_diff"] >= -0.005
                               and out["glow"]["mean_diff"] >= -0.005)
    return out


if __name__ == "__main__":
    sys.exit(main())
