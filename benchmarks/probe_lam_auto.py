"""Probe of a label-free lambda (issue 15, item 6): checkerboard cross-validation of the mask step.

For each candidate ``lam`` the first W-step's experts are trained once (as ``segment`` would,
same key); the mask step is solved with data terms on the checkerboard colour A only (zero on
B, where TV fills the mask in) at ``lam / 2``, thresholded, and scored on B by the squared
blind-spot residual of the expert each B pixel was assigned to (lower = better). Neither the
B mask nor the blind-spot predictions see a B pixel's own noise. Compared with the Dice of the
full runs over the same grid (``run_sweep``), on the protocol's *tuning* patches only
(dsb2018_v2: 0, 5, 10, 15) at noise 30, noise seed 7 (not one of the protocol's seeds):

    python benchmarks/probe_lam_auto.py        # -> results/lam_auto_probe.json

A development probe, not an evaluation: it decides whether the criterion is worth building.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import dsb2018 as E  # noqa: E402

from self2seg_jax import alternating as A  # noqa: E402
from self2seg_jax import api, baselines, energy, metrics, ops, pdhg, provenance  # noqa: E402
from self2seg_jax.config import Self2SegConfig  # noqa: E402

GRID = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


@functools.partial(jax.jit, static_argnames=("spec",))
def lam_scores(key, f, w0, labels0, hyper, lams, spec):
    """``(L,)`` cross-validation scores (see the module docstring)."""
    s0 = A.init_state(key, f, w0, labels0, spec)
    ws = A.w_step(s0, f, hyper, spec)
    prob, nd = spec.problem, spec.ndim
    pred = A.predictions(ws.params, ws.den, f, spec)
    blind = A.predictions(ws.params, ws.den, f, dataclasses.replace(spec, blind_spot=True))
    a = (jnp.indices(f.shape).sum(axis=0) % 2 == 0).astype(f.dtype)
    res = f[None] - pred
    if spec.data_filter > 1:  # mean over the window's A pixels only
        res = ops.mean_filter(res * a, spec.data_filter, nd) / ops.mean_filter(
            a, spec.data_filter, nd)
    lin = prob.relaxation.linear_term(res ** 2 * a)
    r_b = energy.data_terms(f, blind, filter_size=1, ndim=nd)
    b = 1.0 - a

    def score(lam):
        sol = pdhg.solve(lin, 0.5 * lam, prob, mu=hyper.mu, u_ref=s0.u, u0=s0.u, p0=s0.p,
                         tol=hyper.pd_tol, max_iter=spec.pd_max_iter,
                         check_every=spec.pd_check_every)
        onehot = energy.one_hot(prob.relaxation.labels(sol.u, hyper.threshold),
                                spec.num_classes, f.dtype)
        return jnp.sum(onehot * r_b * b) / jnp.sum(b)

    return lax.map(score, lams)


def main() -> int:
    base = Self2SegConfig(crop_batch=2)
    configs = {"chan_vese": baselines.chan_vese_config(0.03, max_outer=30, mask_tol=1e-3,
                                                       config=base),
               "s2s_default": base}
    lams = jnp.asarray(GRID, jnp.float32)
    rows = []
    for name, cfg in configs.items():
        for p in E.noisy_patches(30, indices=[0, 5, 10, 15], seed=7):
            pr = api.prepare(jax.random.key(p.index), p.noisy, config=cfg)
            args = (pr.k_run, jnp.asarray(pr.f), jnp.asarray(pr.start.weights),
                    jnp.asarray(pr.start.labels))
            t = time.perf_counter()
            sc = np.asarray(lam_scores(*args, cfg.hyper(), lams, pr.spec))
            dt = time.perf_counter() - t
            st = A.run_sweep(*args, E.stacked_hyper(cfg, lams), pr.spec, batch="map")
            labels = np.asarray(st.labels) > 0
            dice = [metrics.dice(m, p.gt) for m in labels]
            i = int(np.argmin(sc))
            row = {"method": name, "patch": p.index, "lams": list(GRID),
                   "scores": sc.round(6).tolist(), "dice": np.round(dice, 4).tolist(),
                   "coverage": [round(float(m.mean()), 4) for m in labels],
                   "auto_lam": GRID[i], "auto_dice": round(dice[i], 4),
                   "oracle_dice": round(max(dice), 4), "fixed_dice": round(dice[GRID.index(0.03)], 4),
                   "score_seconds": round(dt, 2)}
            print(json.dumps({k: row[k] for k in ("method", "patch", "auto_lam", "auto_dice",
                                                  "oracle_dice", "fixed_dice")}), flush=True)
            rows.append(row)
    out = Path(__file__).resolve().parent / "results" / "lam_auto_probe.json"
    out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows,
                               "machine": provenance.provenance(out.parent)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
