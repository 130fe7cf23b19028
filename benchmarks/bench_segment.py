"""Timing of Self2Seg's compiled pieces; prints one JSON object.

For each image size: compile time and run time of ``segment`` (first call = compile + run,
second call with a new key and lam = run only, no recompilation), time per outer iteration,
time per Adam step of the CNN expert inside the compiled W-step (with the CPU "loopsafe"
convolution and with plain ``lax`` convolution), and primal–dual iterations per second.

    python benchmarks/bench_segment.py                       # 128, 256, 512
    python benchmarks/bench_segment.py --sizes 128 256 --max-outer 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import alternating, experts, pdhg
from self2seg_jax.provenance import run_record

HERE = Path(__file__).resolve().parent


def _image(size: int, seed: int = 0) -> np.ndarray:
    img, _ = s2s.data.load_sample()
    reps = -(-size // 512)
    img = np.tile(img, (reps, reps))[:size, :size]
    return s2s.data.add_gaussian_noise(seed, img, 30.0)


def _time(fn, *args, repeat: int = 1):
    out = fn(*args)
    jax.block_until_ready(out)
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn(*args)
        jax.block_until_ready(out)
    return (time.perf_counter() - t) / repeat, out


def bench_train_step(size: int, cfg: s2s.Self2SegConfig, impl: str, steps: int) -> float:
    tc = cfg.replace(conv_impl=impl).spec().train
    tc = dataclasses.replace(tc, max_steps=steps, min_steps=steps)
    f = jnp.asarray(s2s.api.normalise(_image(size).astype(np.float64), cfg.normalise)[0])
    w = jnp.ones_like(f)
    params = experts.init_params(jax.random.key(0), "n2f", tc)
    fit = jax.jit(lambda p, f, w: experts.fit_n2f(p, f, w, 1e-3, tc)[1:])
    dt, (_, taken) = _time(fit, params, f, w)
    return dt / int(taken)  # steps run in blocks of val_every: may exceed ``steps``


def bench_pdhg(size: int, iters: int = 1000) -> float:
    rng = np.random.default_rng(0)
    r = jnp.asarray(rng.standard_normal((size, size)).astype(np.float32) * 0.1)
    solve = jax.jit(lambda r: pdhg.solve(r, 0.05, pdhg.Problem(), tol=0.0, max_iter=iters).u)
    dt, _ = _time(solve, r, repeat=2)
    return iters / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--max-outer", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=40, help="steps timed per W-step bench")
    ap.add_argument("--skip-lax", action="store_true", help="skip the plain-lax conv timing")
    args = ap.parse_args()
    cfg = s2s.Self2SegConfig(max_outer=args.max_outer)
    out = {
        **run_record(HERE),
        "config": dataclasses.asdict(cfg),
        "sizes": {},
    }
    for size in args.sizes:
        img = _image(size)
        res = {}
        n0 = alternating.run._cache_size()
        t = time.perf_counter()
        r1 = s2s.segment(jax.random.key(0), img, config=cfg)
        first = time.perf_counter() - t
        n1 = alternating.run._cache_size()
        t = time.perf_counter()
        r2 = s2s.segment(jax.random.key(1), img, config=cfg.replace(lam=cfg.lam * 1.5))
        second = time.perf_counter() - t
        res["segment_first_call_s"] = round(first, 3)
        res["segment_second_call_s"] = round(second, 3)
        res["compile_overhead_s_est"] = round(first - second, 3)
        res["compilations_on_first_call"] = n1 - n0
        res["retraces_on_second_call"] = alternating.run._cache_size() - n1
        res["num_outer"] = [r1.num_outer, r2.num_outer]
        res["train_steps_per_outer"] = r2.train_steps.tolist()
        res["pd_iterations_per_outer"] = r2.pd_iterations.tolist()
        step_loopsafe = bench_train_step(size, cfg, "loopsafe", args.train_steps)
        res["adam_step_ms_loopsafe_conv"] = round(1e3 * step_loopsafe, 2)
        if not args.skip_lax:
            res["adam_step_ms_lax_conv"] = round(
                1e3 * bench_train_step(size, cfg, "lax", max(4, args.train_steps // 4)), 2
            )
        ips = bench_pdhg(size)
        res["pd_iterations_per_s"] = round(ips, 1)
        res["pd_mpixel_iterations_per_s"] = round(ips * size * size / 1e6, 1)
        steps = r2.train_steps.sum(axis=1)
        # Split of the second call's outer iterations (first call's init denoise excluded).
        train_s = steps * step_loopsafe
        u_s = r2.pd_iterations / ips
        res["per_outer_train_s_est"] = np.round(train_s, 3).tolist()
        res["per_outer_ustep_s_est"] = np.round(u_s, 4).tolist()
        out["sizes"][str(size)] = res
        print(json.dumps({str(size): res}), flush=True, file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
