"""Record golden outputs of a fixed set of small Self2Seg runs (public API only).

The redesign of issue 12 must preserve behaviour: this script was run on the code *before* the
redesign (commit 03caa6b) and wrote ``tests/golden/golden.npz``; ``tests/test_golden.py`` reruns
the same cases with the current code and compares masks, energies and outer-iteration counts.
Only public names are used (``segment``, ``Self2SegConfig``, ``Boxes``, ``ClassBoxes``,
``chan_vese``, ``relaxed_mask``, ``data``), so the script runs on both layouts.

    python tests/golden/make_golden.py            # rewrites tests/golden/golden.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import self2seg_jax as s2s

HERE = Path(__file__).resolve().parent

# Small CNN settings shared by the cases (compile once per layout where possible), with the
# defaults of the pre-redesign code pinned (issue 13 changed the defaults of train_mode,
# normalise and init_denoise; the goldens check behaviour under the settings they were made with).
# learning_rate: the default when the goldens were recorded (1e-3; the default is 2e-3 since
# session 9)
NET = dict(net_width=8, net_depth=2, train_max_steps=40, train_min_steps=20, train_patience=20,
           val_every=10, n_average=2, train_mode="full", normalise="minmax", init_denoise=True,
           learning_rate=1e-3, refine_size=0)
LEGACY = dict(train_mode="full", normalise="minmax", init_denoise=True, learning_rate=1e-3,
              refine_size=0)


def blob(seed=0, size=32, noise=0.1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = size / 2
    gt = (yy - c) ** 2 + (xx - c + 1) ** 2 < (size / 4) ** 2
    return (0.3 + 0.4 * gt + noise * rng.standard_normal((size, size))).astype(np.float32)


def three_class(seed=0, n=48, noise=0.08):
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    lab = np.zeros((n, n), np.int32)
    lab[(yy - n * 0.3) ** 2 + (xx - n * 0.3) ** 2 < (n * 0.22) ** 2] = 1
    lab[(yy - n * 0.68) ** 2 + (xx - n * 0.68) ** 2 < (n * 0.24) ** 2] = 2
    stripes = 0.35 + 0.25 * np.sign(np.sin(2 * np.pi * xx / 4 + 0.5))
    clean = np.where(lab == 0, 0.35, np.where(lab == 1, stripes, 0.75)).astype(np.float32)
    rng = np.random.default_rng(seed)
    return (clean + noise * rng.standard_normal(clean.shape)).astype(np.float32)


def colour(seed=0, n=32):
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    left = xx < n / 2
    a = 0.5 + 0.3 * np.sin(2 * np.pi * xx / 5)
    b = 0.5 + 0.3 * np.sin(2 * np.pi * yy / 5)
    clean = np.stack([np.where(left, a, b), np.where(left, 1 - a, 0.5), np.where(left, 0.5, 1 - b)], -1)
    rng = np.random.default_rng(seed)
    return (clean + 0.15 * rng.standard_normal(clean.shape)).astype(np.float32)


def volume():
    vol, _ = s2s.data.load_sample_3d()
    return s2s.data.add_gaussian_noise(0, vol[8:24, 8:40, 8:40], 20.0)


def cases():
    """``name -> (callable returning a Self2SegResult)``."""
    cfg2 = s2s.Self2SegConfig(**{**NET, "init_denoise": False}, lam=0.02, mu=0.0, bg_expert="n2f",
                              max_outer=3)
    dflt = s2s.Self2SegConfig(max_outer=3, **NET)  # n2f fg + constant bg, mu 0.01, N2F start
    const = s2s.Self2SegConfig(**{**LEGACY, "init_denoise": False}, lam=0.03, mu=0.0,
                               fg_expert="constant", bg_expert="constant", max_outer=30,
                               mask_tol=0.0, energy_p=0.0)
    lin = s2s.Self2SegConfig(**{**LEGACY, "init_denoise": False}, lam=0.02, mu=0.0,
                             fg_expert="linear", bg_expert="linear", linear_size=7)
    stripes, _, _ = s2s.data.stripes(0, size=64, noise=0.1)
    boxes_stripes = s2s.Boxes(fg=[(24, 24, 40, 40)], bg=[(0, 0, 16, 16)])
    boxes_blob = s2s.Boxes(fg=[(12, 12, 20, 20)], bg=[(0, 0, 6, 6)])
    box3 = s2s.ClassBoxes([[(0, 30, 12, 48)], [(9, 9, 20, 20)], [(28, 28, 39, 39)]])
    k = jax.random.key
    out = {
        "cnn2": lambda ov={}: s2s.segment(k(0), blob(0), config=cfg2.replace(**ov)),
        "cnn2_key1": lambda ov={}: s2s.segment(k(1), blob(0), config=cfg2.replace(**ov)),
        "default_n2f_start": lambda ov={}: s2s.segment(k(0), blob(1, 32, 0.15), config=dflt.replace(**ov)),
        "filtered": lambda ov={}: s2s.segment(k(0), blob(2, 32, 0.2), config=dflt.replace(data_filter=3, lam=0.005).replace(**ov)),
        "reinit": lambda ov={}: s2s.segment(k(2), blob(0), config=cfg2.replace(warm_start=False).replace(**ov)),
        "constant": lambda ov={}: s2s.segment(k(0), blob(3, 24, 0.25), config=const.replace(**ov)),
        "chan_vese": lambda ov={}: s2s.chan_vese(blob(4, 24, 0.25), lam=0.05, return_result=True,
                                                 config=s2s.Self2SegConfig(**LEGACY)),
        "linear_boxes": lambda ov={}: s2s.segment(k(0), stripes, init=boxes_stripes, config=lin.replace(**ov)),
        "cnn_boxes": lambda ov={}: s2s.segment(k(0), blob(5), init=boxes_blob, config=cfg2.replace(**ov)),
        "blind_spot": lambda ov={}: s2s.segment(k(0), blob(6), config=cfg2.replace(data_term="blind_spot").replace(**ov)),
        "three_class_boxes": lambda ov={}: s2s.segment(
            k(0), three_class(), num_classes=3, init=box3, config=dflt.replace(lam=0.03, init_denoise=False),
            class_experts=("constant", "n2f", "constant")),
        "three_class_otsu_const": lambda ov={}: s2s.segment(
            k(1), three_class(1), num_classes=3,
            config=const.replace(max_outer=5, mu=0.01).replace(**ov)),
        "colour": lambda ov={}: s2s.segment(k(0), colour(), channel_axis=-1, config=cfg2.replace(**ov)),
        "volume": lambda ov={}: s2s.segment(k(0), volume(), volume=True, spacing=(2.0, 1.0, 1.0),
                                      config=dflt.replace(init_denoise=False).replace(**ov)),
    }
    for lam in (0.01, 0.03, 0.1):
        out[f"sweep_lam{lam}"] = (lambda ov={}, lam=lam: s2s.segment(k(4), blob(7), config=cfg2.replace(lam=lam, **ov)))
    return out


def relaxed_mask_grads():
    """Gradients of a loss of ``relaxed_mask`` in both modes (float32, small problem)."""
    n = 12
    yy, xx = np.mgrid[:n, :n]
    g = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2 < (n / 3) ** 2).astype(np.float32)
    f = g + 0.3 * np.random.default_rng(0).normal(size=g.shape).astype(np.float32)
    wt = jnp.asarray(np.random.default_rng(1).normal(size=g.shape), jnp.float32)
    d_fg, d_bg = jnp.asarray((f - 1) ** 2), jnp.asarray(f**2)
    out = {}
    for mode in ("implicit", "unrolled"):
        def loss(d_fg, lam, mu, mode=mode):
            u = s2s.relaxed_mask(d_fg, d_bg, lam, mu=mu, u_ref=jnp.full_like(d_fg, 0.5), mode=mode,
                                 smoothing=0.1, tol=1e-6, unroll_iters=500)
            return jnp.sum(u * wt)
        gd, gl, gm = jax.grad(loss, argnums=(0, 1, 2))(d_fg, 0.3, 0.3)
        out[f"grad_{mode}_d"] = np.asarray(gd)
        out[f"grad_{mode}_lam_mu"] = np.asarray([gl, gm])
    return out


def record(names=None, overrides=None) -> dict:
    """Run the cases (all, or ``names``), with optional config ``overrides[name]``."""
    out = {}
    for name, fn in cases().items():
        if names and name not in names:
            continue
        r = fn((overrides or {}).get(name, {}))
        out[f"{name}/labels"] = np.asarray(r.labels if r.labels is not None else r.mask, np.uint8)
        out[f"{name}/energies"] = np.asarray(r.energies, np.float64)
        out[f"{name}/num_outer"] = np.asarray(r.num_outer)
        print(f"{name}: {r.num_outer} outer, status {r.status}, energies {np.round(r.energies, 4)}",
              file=sys.stderr)
    if not names or "relaxed_mask" in names:
        out.update({f"relaxed_mask/{k}": v for k, v in relaxed_mask_grads().items()})
    return out


if __name__ == "__main__":
    data = record()
    np.savez_compressed(HERE / "golden.npz", **data)
    print(f"wrote {HERE / 'golden.npz'} ({len(data)} arrays)")
