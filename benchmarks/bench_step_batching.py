"""Is the experts' training step compute-bound? Cost of one Adam step of the default CNN expert
against the number of training crops it sees, and of B images' steps batched with ``vmap``.

Issue 14 asks ``segment_batch`` for 2x the throughput of a loop of ``segment`` calls on one CPU
device by "batching the cheap parts". Almost all of a 128^2 run is the foreground expert's
crop training (``bench_scaling``'s phase split), so batching can only pay if a step's cost is
dominated by per-step overhead rather than by arithmetic per crop. This measures it:

* ``crop_batch`` rows: one image, the default expert (``Self2SegConfig()``'s training options,
  ``crop_batch`` b crops per step), a fixed number of steps (no early stopping), compiled
  before timing: milliseconds per step and per crop;
* ``vmap_images`` rows: the same training ``vmap``-ed over B images with their own weights
  and keys (each ``crop_batch`` 2, the CPU policy), as a batched ``segment_batch`` would run
  it: milliseconds per image-step.

If the per-crop cost is flat in b, a batch of images cannot be cheaper per image than a loop.
Writes ``results/batch/step_batching_<backend>.json``.

    python benchmarks/bench_step_batching.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import experts, provenance

ROOT = Path(__file__).resolve().parents[1]


def _train_fn(cfg: experts.TrainConfig):
    return jax.jit(lambda k, p, f, w: experts.fit_n2f_crops(k, p, f, w, 1e-3, cfg)[0])


def _time(fn, *args, repeat: int) -> float:
    jax.block_until_ready(fn(*args))  # compile (and warm up)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--crop-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--images", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--repeat", type=int, default=3, help="timed repeats (the best is kept)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch")
    args = ap.parse_args(argv)
    patches = s2s.data.sample_patches(128)
    imgs = np.stack([s2s.data.add_gaussian_noise(i, patches[i % len(patches)][1], 30.0)
                     for i in range(max(args.images))]).astype(np.float32) / 255.0
    fs = jnp.asarray(imgs)
    ws = (fs > jnp.mean(fs, axis=(1, 2), keepdims=True)).astype(jnp.float32)
    base = s2s.Self2SegConfig(train_max_steps=args.steps, train_min_steps=args.steps)
    rows = []
    for b in args.crop_batches:
        cfg = base.replace(crop_batch=b).spec().train
        p = experts.init_params(jax.random.key(0), "n2f", cfg)
        dt = _time(_train_fn(cfg), jax.random.key(1), p, fs[0], ws[0], repeat=args.repeat)
        rows.append({"kind": "crop_batch", "crops_per_step": b,
                     "ms_per_step": round(1e3 * dt / args.steps, 3),
                     "ms_per_crop": round(1e3 * dt / args.steps / b, 3)})
        print(json.dumps(rows[-1]), flush=True)
    cfg = base.replace(crop_batch=2).spec().train
    train = _train_fn(cfg)
    for n in args.images:
        ps = jax.vmap(lambda k: experts.init_params(k, "n2f", cfg))(jax.random.split(
            jax.random.key(0), n))
        ks = jax.random.split(jax.random.key(1), n)
        dt = _time(jax.jit(jax.vmap(train)), ks, ps, fs[:n], ws[:n], repeat=args.repeat)
        rows.append({"kind": "vmap_images", "images": n, "crops_per_step": 2,
                     "ms_per_image_step": round(1e3 * dt / args.steps / n, 3)})
        print(json.dumps(rows[-1]), flush=True)
    ref = next((r["ms_per_crop"] for r in rows if r.get("crops_per_step") == 2
                and r["kind"] == "crop_batch"), None)
    one = next((r["ms_per_image_step"] for r in rows if r.get("images") == 1), None)
    out = {"rows": rows, "steps": args.steps,
           "per_crop_cost_vs_2_crops": {r["crops_per_step"]: round(r["ms_per_crop"] / ref, 3)
                                        for r in rows if r["kind"] == "crop_batch" and ref},
           "per_image_cost_vs_1_image": {r["images"]: round(r["ms_per_image_step"] / one, 3)
                                         for r in rows if r["kind"] == "vmap_images" and one},
           "load_average": list(os.getloadavg()), "machine": provenance.provenance(ROOT),
           "command": "python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:]))}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"step_batching_{jax.default_backend()}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
