"""VALID ("trimmed") against SAME convolutions for the CNN expert, side by side in one
process: (a) an Adam-like step of crop training (2 crops, 20 steps inside a compiled
``fori_loop``; 2-D 32² crops, 3-D 10³ crops with their halos) and (b) the tiled whole-image
pass (512² tiles with a ``depth`` halo) at 1024² and 2048². Defaults of ``TrainConfig``
otherwise (32 channels, 4 layers, loop-safe convolutions). Writes ``results/conv_trim.json``.
Why crops use VALID convolutions and tiles SAME ones (``self2seg_jax.experts``).

    python benchmarks/bench_conv_trim.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from self2seg_jax import experts, ops, provenance

ROOT = Path(__file__).resolve().parents[1]


def crop_step_ms(nd, shape, crop, trim, steps=20):
    cfg = experts.TrainConfig(conv_impl="loopsafe", mode="crops", ndim=nd, crop=crop, batch=2)
    p = experts.init_params(jax.random.key(0), "n2f", cfg)
    f = jnp.asarray(np.random.default_rng(0).random(shape), jnp.float32)
    s = experts.crop_sampler(f, jnp.ones(shape, jnp.float32), cfg)
    net, m = experts._net(cfg), cfg.depth

    def loss(p, x, wt, v):
        tot = 0.0
        for (xi, yi), (_, wi), (vi, _) in zip(*(ops.checkerboard_pairs(a, nd, 0)
                                                for a in (x, wt, v))):
            out = net.apply({"params": p}, xi, vi, trim=True) if trim else \
                experts._trim(net.apply({"params": p}, xi, vi), nd, m)
            tot = tot + jnp.sum(experts._trim(wi, nd, m) * (out - experts._trim(yi, nd, m)) ** 2)
        return tot

    def body(k, p):
        tiles = jax.random.randint(jax.random.key(k), (2,), 0, s.starts.shape[0])
        g = jax.grad(loss)(p, *experts.crop_batch(s, tiles, cfg, 0))
        return jax.tree.map(lambda a, b: a - 1e-4 * b, p, g)

    run = jax.jit(lambda p: lax.fori_loop(0, steps, body, p))
    jax.block_until_ready(run(p))
    t = time.perf_counter()
    jax.block_until_ready(run(p))
    return (time.perf_counter() - t) / steps * 1000


def tiled_pass_s(n, trim, tile=512):
    cfg = experts.TrainConfig(conv_impl="loopsafe", mode="crops", tile=tile)
    p = experts.init_params(jax.random.key(0), "n2f", cfg)
    m, net = cfg.depth, experts._net(cfg)
    f = jnp.asarray(np.random.default_rng(0).random((n, n)), jnp.float32)
    _, pads, starts = experts._tiling((n, n), tile, m)
    fp, vp = jnp.pad(f, pads), jnp.pad(jnp.ones((n, n), jnp.float32), pads)
    core = (Ellipsis,) + (slice(m, m + tile),) * 2

    def one(st):
        x = experts._windows(fp, 2, tile + 2 * m, st[None])[0]
        v = experts._windows(vp, 2, tile + 2 * m, st[None])[0]
        return net.apply({"params": p}, x, v, trim=True) if trim else \
            net.apply({"params": p}, x, v)[core]

    run = jax.jit(lambda: lax.map(one, starts))
    jax.block_until_ready(run())
    t = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - t


def main() -> int:
    rows = []
    for nd, shape, crop in ((2, (256, 256), 32), (3, (32, 64, 64), 10)):
        r = {"what": f"crop step {nd}-D", "valid_ms": round(crop_step_ms(nd, shape, crop, True), 1),
             "same_ms": round(crop_step_ms(nd, shape, crop, False), 1)}
        rows.append(r)
        print(json.dumps(r), flush=True)
    for n in (1024, 2048):
        r = {"what": f"tiled pass {n}^2", "valid_s": round(tiled_pass_s(n, True), 3),
             "same_s": round(tiled_pass_s(n, False), 3)}
        rows.append(r)
        print(json.dumps(r), flush=True)
    out = ROOT / "benchmarks" / "results" / "conv_trim.json"
    out.write_text(json.dumps({"rows": rows, "machine": provenance.provenance(ROOT),
                               "command": "python benchmarks/bench_conv_trim.py"}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
