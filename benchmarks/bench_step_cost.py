"""Where a W-step's time goes: milliseconds per Adam step of the default CNN expert's crop
training (``experts.fit_n2f_crops``, compiled, a fixed number of steps, best of ``--repeat``), in
2-D (the 128^2 comparison patch) and 3-D (a 32x64x64 synthetic volume), with the default 16
validation crops and with 1 (the validation's share of the step), and in 3-D with XLA's own
convolution instead of the loop-safe one (the CPU trap of ``PERF_NOTES``). Writes
``results/step_cost_<backend>.json``.

    python benchmarks/bench_step_cost.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import experts, provenance

ROOT = Path(__file__).resolve().parents[1]


def _image(ndim: int) -> jax.Array:
    if ndim == 2:
        img = s2s.data.add_gaussian_noise(0, s2s.data.sample_patches(128)[9][1], 30.0)
    else:
        img = s2s.data.synthetic_nuclei(2000, (32, 64, 64), noise=20)[0]
    img = np.asarray(img, np.float32)
    return jnp.asarray((img - img.min()) / (img.max() - img.min()))


def step_ms(ndim: int, steps: int, repeat: int, **overrides) -> float:
    """Milliseconds per Adam step (validation and the final whole-image pass included)."""
    f = _image(ndim)
    w = (f > f.mean()).astype(jnp.float32)
    cfg = s2s.Self2SegConfig(train_max_steps=steps, train_min_steps=steps,
                             **overrides).spec(ndim=ndim).train
    p = experts.init_params(jax.random.key(0), "n2f", cfg)
    fn = jax.jit(lambda k, p, f, w: experts.fit_n2f_crops(k, p, f, w, 1e-3, cfg)[1])
    jax.block_until_ready(fn(jax.random.key(1), p, f, w))  # compile
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(1), p, f, w))
        best = min(best, time.perf_counter() - t)
    return 1e3 * best / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="Adam steps per timed call (2-D)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                    help="only these cases (default: the first five; 3d_factorised: "
                         "net_conv3d='factorised', session 21)")
    args = ap.parse_args(argv)
    cases = [("2d", 2, args.steps, {}), ("2d_val1", 2, args.steps, {"val_crops": 1}),
             ("3d", 3, args.steps // 3, {}), ("3d_val1", 3, args.steps // 3, {"val_crops": 1}),
             ("3d_val1_lax_conv", 3, max(args.steps // 10, 10),
              {"val_crops": 1, "conv_impl": "lax"}),
             ("3d_factorised", 3, args.steps // 3, {"net_conv3d": "factorised"})]
    if args.cases is None:
        cases = cases[:5]
    else:
        unknown = set(args.cases) - {c[0] for c in cases}
        if unknown:
            ap.error(f"unknown cases {sorted(unknown)}")
        cases = [c for c in cases if c[0] in args.cases]
    rows = []
    for name, nd, steps, over in cases:
        rows.append({"case": name, "ndim": nd, "steps": steps, "overrides": over,
                     "ms_per_step": round(step_ms(nd, steps, args.repeat, **over), 2)})
        print(json.dumps(rows[-1]), flush=True)
    ms = {r["case"]: r["ms_per_step"] for r in rows}
    derived = {}
    if args.cases is None:
        derived = {"validation_share_2d": round(1 - ms["2d_val1"] / ms["2d"], 3),
                   "validation_share_3d": round(1 - ms["3d_val1"] / ms["3d"], 3),
                   "step_3d_over_2d": round(ms["3d"] / ms["2d"], 2),
                   "lax_over_loopsafe_3d": round(ms["3d_val1_lax_conv"] / ms["3d_val1"], 2)}
        print(json.dumps(derived), flush=True)
    out = {"rows": rows, "derived": derived, "machine": provenance.provenance(ROOT),
           "library": str(Path(s2s.__file__).parent),  # PYTHONPATH may name another tree's
           "command": "python benchmarks/bench_step_cost.py " + " ".join(argv or sys.argv[1:])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"step_cost_{jax.default_backend()}.json").write_text(json.dumps(out, indent=1)
                                                                      + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
