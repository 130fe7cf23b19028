"""Learn lam and mu by gradient descent through the mask step (issue: differentiable Self2Seg).

Protocol (DSB2018 sample, 16 patches of 128x128, Gaussian noise std 30 on the 0-255 scale):

1. Run Self2Seg (default config) on every patch once; keep its trained experts' outputs, i.e.
   the data terms ``d_F = (f - D_F f)^2`` and ``d_B = (f - D_B f)^2``, and its initial mask.
2. On 2 training patches, fit ``log lam`` and ``log mu`` with Adam on a soft-Dice loss of
   ``relaxed_mask(d_F, d_B, lam, mu=mu, u_ref=initial mask)`` against the ground truth
   (implicit differentiation through the primal-dual solver).
3. On the other 14 patches compare the Dice of the thresholded final mask step with
   (a) the default lam/mu, (b) the learned lam/mu, (c) the oracle per-image best lam of a
   10-value grid (the paper's protocol; mu = default). The grid evaluation is one
   ``vmap`` over patches and lam values.

The experts are fixed here (trained once by the default run); only the final mask step is
re-solved. Prints a JSON summary.

    python benchmarks/learn_lambda.py --steps 40
    python benchmarks/learn_lambda.py --quick --patches 5 10 0 --steps 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import self2seg_jax as s2s
from self2seg_jax import api
from self2seg_jax.provenance import run_record

HERE = Path(__file__).resolve().parent
QUICK = dict(net_width=8, net_depth=2, train_max_steps=40, train_min_steps=20, train_patience=20,
             n_average=2)


def soft_dice(u, gt):
    return 1.0 - 2.0 * jnp.sum(u * gt) / (jnp.sum(u) + jnp.sum(gt) + 1e-6)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--noise", type=float, default=30.0)
    ap.add_argument("--train", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--patches", type=int, nargs="+", default=None,
                    help="patches used (default: all 16); the test set is these minus --train")
    ap.add_argument("--quick", action="store_true", help="tiny expert networks (smoke test)")
    args = ap.parse_args()
    info = run_record(HERE)
    cfg = s2s.Self2SegConfig(**(QUICK if args.quick else {}))
    patches = s2s.data.sample_patches(128)
    used = list(range(len(patches))) if args.patches is None else list(args.patches)
    if not set(args.train) <= set(used) or not set(used) - set(args.train):
        ap.error("--train must be among --patches and leave at least one test patch")
    d_fg, d_bg, u0, gts = [], [], [], []
    t0 = time.perf_counter()
    for i in used:
        _, clean, gt = patches[i]
        noisy = s2s.data.add_gaussian_noise(1000 + i, clean, args.noise)
        r = s2s.segment(jax.random.key(i), noisy, config=cfg)
        f, lo, hi = api.normalise(api.validate_image(noisy)[0], cfg.normalise)
        fg = (r.denoised_fg - lo) / (hi - lo)
        bg = (r.denoised_bg - lo) / (hi - lo)
        d_fg.append((f - fg) ** 2)
        d_bg.append((f - bg) ** 2)
        u0.append(r.init_mask.astype(np.float32))
        gts.append(gt.astype(np.float32))
    t_runs = time.perf_counter() - t0
    d_fg, d_bg, u0, gts = map(lambda a: jnp.asarray(np.stack(a)), (d_fg, d_bg, u0, gts))
    # positions in the stacked arrays (patch used[k] is row k)
    train = np.array([used.index(i) for i in args.train])
    test = np.array([k for k, i in enumerate(used) if i not in set(args.train)])

    def mask(lam, mu, a, b, ur):
        return s2s.relaxed_mask(a, b, lam, mu=mu, u_ref=ur, smoothing=1e-2, tol=1e-4,
                                max_iter=3000)

    batched = jax.vmap(mask, in_axes=(None, None, 0, 0, 0))

    @jax.jit
    def loss(theta):
        lam, mu = jnp.exp(theta[0]), jnp.exp(theta[1])
        u = batched(lam, mu, d_fg[train], d_bg[train], u0[train])
        return jnp.mean(jax.vmap(soft_dice)(u, gts[train]))

    theta = jnp.log(jnp.array([cfg.lam, max(cfg.mu, 1e-3)], jnp.float32))
    opt = optax.adam(args.lr)
    state = opt.init(theta)
    vg = jax.jit(jax.value_and_grad(loss))
    history = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
        val, g = vg(theta)
        upd, state = opt.update(g, state)
        theta = optax.apply_updates(theta, upd)
        history.append(float(val))
    t_learn = time.perf_counter() - t0
    lam_l, mu_l = (float(v) for v in jnp.exp(theta))

    def dice_at(lam, mu, idx):
        u = batched(jnp.float32(lam), jnp.float32(mu), d_fg[idx], d_bg[idx], u0[idx])
        return [s2s.metrics.dice(np.asarray(u[k]) >= 0.5, np.asarray(gts[j]) > 0.5)
                for k, j in enumerate(idx)]

    grid = np.geomspace(0.003, 0.3, 10).astype(np.float32)
    grid_masks = jax.jit(jax.vmap(lambda lam: batched(lam, jnp.float32(cfg.mu), d_fg[test],
                                                      d_bg[test], u0[test])))(jnp.asarray(grid))
    oracle = [max(s2s.metrics.dice(np.asarray(grid_masks[g, k]) >= 0.5, np.asarray(gts[j]) > 0.5)
                  for g in range(len(grid))) for k, j in enumerate(test)]
    default = dice_at(cfg.lam, cfg.mu, test)
    learned = dice_at(lam_l, mu_l, test)
    print(json.dumps({
        **info,
        "config_overrides": QUICK if args.quick else {},
        "noise": args.noise,
        "train_patches": list(args.train),
        "test_patches": [used[k] for k in test],
        "learned_lam": lam_l, "learned_mu": mu_l,
        "default_lam": cfg.lam, "default_mu": cfg.mu,
        "soft_dice_loss_first_last": [history[0], history[-1]],
        "test_dice_default": round(float(np.mean(default)), 4),
        "test_dice_learned": round(float(np.mean(learned)), 4),
        "test_dice_oracle_grid": round(float(np.mean(oracle)), 4),
        "lam_grid": grid.tolist(),
        "seconds_self2seg_runs": round(t_runs, 1),
        "seconds_learning": round(t_learn, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
