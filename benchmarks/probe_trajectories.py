"""Per-outer-iteration trajectories of the scheme (Dice, foreground fraction, label change,
energy) on DEVELOPMENT images only, so that a stop rule can be studied offline: a rule that
only stops earlier changes a run's result to one of the iterates recorded here.

Images (fixed here, before any run): the synthetic 2-D development set of ``dev_defaults.py``
(noise 10/30/50 x 128^2 seeds 0-3 and 512^2 seeds 0-1), the DSB2018 protocol's four *tuning*
patches (0, 5, 10, 15) at noise 10/30/50, noise seed 0 (never the evaluation patches), and
(``--volumes``) the synthetic volumes of ``dev_volume.py`` with the bundled 3-D stack.
Configurations: the default and, with ``--configs``, named variants.

    python benchmarks/probe_trajectories.py --out benchmarks/results/trajectories

A diagnosis, not a benchmark: no timings are recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import self2seg_jax as s2s  # noqa: E402
from self2seg_jax import alternating, api, metrics, provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "default": {},
    # session 9's faster candidate (reverted: drifting patches at noise 10)
    "width_16_lr_2e-3": dict(net_width=16, learning_rate=2e-3),
    # session 17, volumes (the stack's runaway foreground): experts re-initialised every W-step
    # (the authors' code) and a larger weight of the paper's reference-mask term (eq. (10), the
    # paper's own remedy for a foreground that takes the image; the default is 0.01). Seen
    # before on the bundled stack only (scratch, key 0).
    "cold_start": dict(warm_start=False),
    "mu_0.05": dict(mu=0.05),
    "mu_0.2": dict(mu=0.2),
}


def images_2d():
    from dev_defaults import CELLS
    from experiments import dsb2018

    out = {}
    for n in sorted({c[0] for c in CELLS}):
        for size, seeds in [(size, seeds) for m, size, seeds in CELLS if m == n]:
            for sd in seeds:
                noisy, _, gt = s2s.data.synthetic_nuclei(1000 + sd, (size, size), noise=n)
                out[f"syn_n{n:g}_{size}_s{sd}"] = (noisy, gt, sd, False)
        for p in dsb2018.noisy_patches(n, seed=0, indices=[0, 5, 10, 15]):
            out[f"dsb_tuning_n{n:g}_p{p.index}"] = (p.noisy, p.gt, p.index, False)
    return out


def images_3d():
    """``dev_volume.py``'s volumes (names ``vol[_glow]_n{noise}_s{seed}``, key = the seed),
    the bundled stack last (key 8)."""
    from dev_volume import volumes

    out = {}
    for name, (noisy, gt) in volumes().items():
        if name == "bundled_stack":
            out[name] = (noisy, gt, 8, True)
        else:
            out["vol" + name[3:]] = (noisy, gt, int(name[-1]), True)
    return out


def trajectory(noisy, gt, seed, volume, cfg):
    p = api.prepare(jax.random.key(seed), noisy, config=cfg, volume=volume)
    gen = alternating.states(p.k_run, jnp.asarray(p.f), jnp.asarray(p.start.weights),
                             jnp.asarray(p.start.labels), cfg.hyper(), p.spec)
    start = np.asarray(p.start.labels) > 0
    its = []
    for s in gen:
        k = int(s.it)
        lab = np.asarray(s.labels) > 0
        its.append({"outer": k, "status": int(s.status), "dice": round(metrics.dice(lab, gt), 4),
                    "fg": round(float(lab.mean()), 4), "change": float(s.changes[k - 1]),
                    "energy": float(s.energies[k - 1]),
                    "steps": np.asarray(s.train_steps[k - 1]).tolist()})
    return {"start_dice": round(metrics.dice(start, gt), 4), "start_fg": round(float(start.mean()), 4),
            "iterations": its}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["default"], choices=list(CONFIGS))
    ap.add_argument("--volumes", action="store_true", help="also the 3-D development volumes")
    ap.add_argument("--only-volumes", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    ims = {} if args.only_volumes else images_2d()
    if args.volumes or args.only_volumes:
        ims.update(images_3d())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "rows.jsonl"
    done = set()
    if path.exists():
        done = {(r["config"], r["image"]) for r in map(json.loads, path.read_text().splitlines())}
    for c in args.configs:
        cfg = s2s.Self2SegConfig(**CONFIGS[c])
        for name, (noisy, gt, seed, volume) in ims.items():
            if (c, name) in done:
                continue
            row = {"config": c, "image": name, **trajectory(noisy, gt, seed, volume, cfg)}
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            last = row["iterations"][-1]
            print(f"{c} {name}: start {row['start_dice']:.3f} -> {last['dice']:.3f} in "
                  f"{last['outer']} ({alternating.STATUS_NAMES[last['status']]})", flush=True)
    (args.out / "meta.json").write_text(json.dumps(
        {"configs": {c: CONFIGS[c] for c in args.configs}, "machine": provenance.provenance(ROOT),
         "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:]))}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
