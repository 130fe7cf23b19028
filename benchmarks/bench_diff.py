"""Cost of gradients through the mask step vs a forward solve; prints JSON.

For each size: wall time of the forward ``relaxed_mask`` and of ``jax.grad`` of a scalar loss
in the implicit and unrolled modes (compiled, second call), and XLA's temporary-buffer size of
each compiled function (``memory_analysis().temp_size_in_bytes``) as the memory figure.

    python benchmarks/bench_diff.py --sizes 64 128 256 --unroll-iters 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import self2seg_jax as s2s
from self2seg_jax.provenance import run_record

HERE = Path(__file__).resolve().parent


def _problem(size):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    g = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2).astype(np.float32)
    f = g + 0.3 * rng.standard_normal(g.shape).astype(np.float32)
    return jnp.asarray((f - 1) ** 2), jnp.asarray(f**2), jnp.asarray(g)


def _measure(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    out = compiled(*args)
    jax.block_until_ready(out)
    t = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    return time.perf_counter() - t, temp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--unroll-iters", type=int, default=1000)
    ap.add_argument("--lam", type=float, default=0.3)
    ap.add_argument("--mu", type=float, default=0.1)
    args = ap.parse_args()
    out = {**run_record(HERE), "sizes": {}}
    for size in args.sizes:
        d_fg, d_bg, tgt = _problem(size)
        u_ref = jnp.full_like(d_fg, 0.5)
        row = {}
        for mode in ("implicit", "unrolled"):
            kw = dict(mu=args.mu, u_ref=u_ref, mode=mode, unroll_iters=args.unroll_iters,
                      smoothing=1e-2, tol=1e-5)
            fwd = lambda lam, kw=kw: s2s.relaxed_mask(d_fg, d_bg, lam, **kw)  # noqa: E731
            loss = lambda lam, kw=kw: jnp.mean(  # noqa: E731
                (s2s.relaxed_mask(d_fg, d_bg, lam, **kw) - tgt) ** 2
            )
            t_f, m_f = _measure(fwd, jnp.float32(args.lam))
            t_g, m_g = _measure(jax.grad(loss), jnp.float32(args.lam))
            row[mode] = {
                "forward_s": round(t_f, 4),
                "grad_s": round(t_g, 4),
                "grad_over_forward": round(t_g / t_f, 2),
                "forward_temp_bytes": m_f,
                "grad_temp_bytes": m_g,
            }
        out["sizes"][str(size)] = row
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
