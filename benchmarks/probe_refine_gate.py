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

    python benchmarks/probe_refine_gate.py --out benchmarks/results/refine_gate_s23
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
sys.path.insert(0, str(ROOT / "benchmarks"))


def inputs(which):
    """Yield ``(group, name, noisy, gt, key, volume)``."""
    if which == "dev":
        for n in (10.0, 30.0, 50.0):
            for size, seeds in ((128, (0, 1, 2, 3)), (512, (0, 1))):
                for sd in seeds:
                    noisy, _, gt = s2s.data.synthetic_nuclei(1000 + sd, (size, size), noise=n)
                    yield f"n{n:g}_{size}", f"syn{1000 + sd}", noisy, gt, sd, False
        clean, gt = s2s.data.load_sample()
        for n in (10.0, 30.0, 50.0):
            yield f"sample_n{n:g}", "sample_s0", s2s.data.add_gaussian_noise(0, clean, n), gt, 0, \
                False
    else:
        import dev_volume
        for i, (name, (noisy, gt)) in enumerate(dev_volume.volumes("dev").items()):
            yield name.rsplit("_", 1)[0], name, noisy, gt, i, True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="which", choices=("dev", "dev3d"), default="dev")
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    record = provenance.run_record(ROOT, [sys.argv[0]] + (argv or sys.argv[1:]))
    cfg = s2s.Self2SegConfig(crop_batch=2, refine_size=args.window)
    rows = []
    for group, name, noisy, gt, key, volume in inputs(args.which):
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
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rows_{args.which}.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                               for r in rows))
    (args.out / f"run_{args.which}.json").write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
