"""XLA:CPU's YNNPACK fusions on and off, side by side, per component of a run (issue 13).

XLA:CPU hands convolutions (and some dots) to YNNPACK kernels ("ynn fusions"). On the 2-core
AMD EPYC (AVX2) CI-class machine the experts' loop-safe training step looked faster without them
(scratch timings of session 14). This script measures each component twice *in one process*,
compiled once with XLA's default and once with the compiler option
``xla_cpu_experimental_ynn_fusion_type=""`` (no YNN fusions), the timed calls alternating
(``--repeat`` pairs, medians), so a busy or slower machine moves both columns alike:

* ``train2d`` / ``train3d`` — the default expert's crop training (``experts.fit_n2f_crops``, a
  fixed number of Adam steps, validation and the final tiled pass included), per Adam step;
* ``apply_512`` / ``apply_2048`` — the trained-size expert applied to a whole image in tiles
  (``experts.apply_tiled``: the forward passes that make the data terms);
* ``pdhg_512`` — 500 primal–dual iterations of the mask step on a 512² image (no convolutions:
  a control that should not move).

and whole runs of ``segment`` with default options (``--whole``), each in a fresh process
with ``SELF2SEG_CPU_YNN=on`` (XLA's default) or ``off`` (no YNN fusions), the two alternating:
the 128² comparison patch and the whole 512² sample (σ = 30, noise seed 0) and the bundled
3-D stack; a first call (compilation included) and a warm call with another key, Dice, Adam
steps and outer iterations (the two settings round differently, so a run may take another
path). Writes ``results/cpu_ynn/components.json`` and ``whole.json`` with the machine (CPU
model and its AVX-512 flag).

The in-process comparison can favour one side: kernels of the other setting ran in the same
process just before (thread pools, caches). ``--separate N`` times the components instead in
fresh processes that each compile only one setting, N processes per setting alternating
(medians over the processes' medians) -> ``components_separate.json``.

    python benchmarks/bench_cpu_ynn.py                 # components, ~3 min on 2 cores
    python benchmarks/bench_cpu_ynn.py --no-components --separate 2
    python benchmarks/bench_cpu_ynn.py --whole         # + whole runs, ~12 min more
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import backend, experts, io, pdhg, provenance

ROOT = Path(__file__).resolve().parents[1]
OFF = {backend.YNN_OPTION: ""}


def _image(shape) -> jax.Array:
    if len(shape) == 2:
        img = s2s.data.load_sample()[0]
        reps = -(-shape[0] // img.shape[0])
        img = np.tile(img, (reps, reps))[: shape[0], : shape[1]]
        img = s2s.data.add_gaussian_noise(0, img, 30.0)
    else:
        img = s2s.data.synthetic_nuclei(2000, shape, noise=20)[0]
    img = np.asarray(img, np.float32)
    return jnp.asarray((img - img.min()) / (img.max() - img.min()))


def _cases(args):
    """``(name, unit count, function, arguments)`` per component."""
    out = []
    for name, shape, steps in (("train2d", (128, 128), args.steps),
                               ("train3d", (32, 64, 64), max(args.steps // 5, 5))):
        f = _image(shape)
        w = (f > f.mean()).astype(jnp.float32)
        cfg = s2s.Self2SegConfig(train_max_steps=steps, train_min_steps=steps).spec(
            ndim=len(shape)).train
        p = experts.init_params(jax.random.key(0), "n2f", cfg)
        out.append((name, steps, lambda k, p, f, w, cfg=cfg: experts.fit_n2f_crops(
            k, p, f, w, 1e-3, cfg)[1], (jax.random.key(1), p, f, w)))
    cfg = s2s.Self2SegConfig().spec().train
    p = experts.init_params(jax.random.key(0), "n2f", cfg)
    for n in (512, 2048):
        out.append((f"apply_{n}", 1, lambda p, f, cfg=cfg: experts.apply_tiled(p, f, "n2f", cfg),
                    (p, _image((n, n)))))
    r = _image((512, 512)) - 0.5
    out.append(("pdhg_512", 500, lambda r: pdhg.solve(r, 0.03, tol=0.0, max_iter=500).u, (r,)))
    return out


WHOLE = ("patch128", "512", "stack3d")


def _child(args: list, env: dict | None = None) -> dict:
    """Run this script in a fresh process with ``args``; its last stdout line (JSON)."""
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                       env=env)
    if p.returncode:
        raise SystemExit(f"{' '.join(args)}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _timed_ms(f, a) -> float:
    """Milliseconds of one call ``f(*a)`` (results awaited)."""
    t = time.perf_counter()
    jax.block_until_ready(f(*a))
    return 1e3 * (time.perf_counter() - t)


def _write(path: Path, record: dict, argv) -> None:
    """``record`` with the machine (its AVX-512 flag too) and the command, as JSON (atomic)."""
    io.write_json(path, {**record, "machine": {**provenance.provenance(ROOT),
                                               "avx512": backend.cpu_has_avx512()},
                         "command": "python benchmarks/bench_cpu_ynn.py " + " ".join(argv)},
                  overwrite=True)


def whole_run(case: str) -> dict:
    """Cold and warm ``segment`` calls (default options, keys 0 and 1) on ``case`` of
    :data:`WHOLE` (the 128^2 comparison patch and the 512^2 sample at sigma 30, noise seed 0,
    or the bundled 3-D stack): seconds, Dice of the warm call, Adam steps, outer iterations."""
    if case == "stack3d":
        img, gt = s2s.data.load_sample_3d()
        noisy, kw = img, {"volume": True}
    else:
        crop = (256, 128, 384, 256) if case == "patch128" else None
        img, gt = s2s.data.load_sample(crop=crop)
        noisy, kw = s2s.data.add_gaussian_noise(0, img, 30.0), {}
    t = time.perf_counter()
    s2s.segment(jax.random.key(0), noisy, **kw)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    r = s2s.segment(jax.random.key(1), noisy, **kw)
    warm = time.perf_counter() - t
    return {"cold_s": round(cold, 2), "warm_s": round(warm, 2),
            "dice": round(s2s.metrics.dice(r.mask, gt), 4),
            "train_steps": int(np.sum(r.train_steps)), "num_outer": int(r.num_outer)}


def _one(case: str) -> dict:
    """A fresh process's :func:`whole_run` of ``case`` with this process's YNN setting."""
    return {"case": case, "ynn": os.environ.get(backend.ENV), "options": backend.compiler_options(),
            **whole_run(case)}


def _whole(out: Path, argv) -> None:
    rows = []
    for case in WHOLE:
        for ynn in ("on", "off"):
            rows.append(_child(["--one", case], env={**os.environ, backend.ENV: ynn}))
            print(json.dumps(rows[-1]), flush=True)
    by = {(r["case"], r["ynn"]): r for r in rows}
    ratio = {c: {"warm_on_over_off": round(by[c, "on"]["warm_s"] / by[c, "off"]["warm_s"], 3),
                 "per_step_on_over_off": round(
                     (by[c, "on"]["warm_s"] / by[c, "on"]["train_steps"])
                     / (by[c, "off"]["warm_s"] / by[c, "off"]["train_steps"]), 3)}
             for c in WHOLE}
    print(json.dumps(ratio), flush=True)
    _write(out / "whole.json", {"rows": rows, "ratios": ratio}, argv)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="Adam steps per 2-D training call")
    ap.add_argument("--repeat", type=int, default=5, help="alternating timed pairs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_ynn")
    ap.add_argument("--whole", action="store_true", help="also whole runs in fresh processes")
    ap.add_argument("--no-components", action="store_true")
    ap.add_argument("--separate", type=int, default=0, metavar="N",
                    help="components in fresh processes, N per setting")
    ap.add_argument("--one", choices=WHOLE, help=argparse.SUPPRESS)
    ap.add_argument("--components-in", choices=("on", "off"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one)), flush=True)
        return 0
    if args.components_in:
        print(json.dumps(_components_in(args)), flush=True)
        return 0
    if jax.default_backend() != "cpu":
        ap.error("a CPU comparison: run it on a CPU backend")
    if not backend.ynn_option_supported():
        ap.error(f"this jaxlib does not know the compiler option {backend.YNN_OPTION}")
    argv = list(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_components:
        _components(args, argv)
    if args.separate:
        _separate(args, argv)
    if args.whole:
        _whole(args.out, argv)
    return 0


def _components_in(args) -> dict:
    """Median ms per unit of every component, compiled with one setting only."""
    opts = {} if args.components_in == "on" else OFF
    med = {}
    for name, units, fn, a in _cases(args):
        f = jax.jit(fn, compiler_options=opts or None)
        jax.block_until_ready(f(*a))  # compile outside the timing
        med[name] = statistics.median(_timed_ms(f, a) for _ in range(args.repeat)) / units
    return med


def _separate(args, argv) -> None:
    runs = {"on": [], "off": []}
    for _ in range(args.separate):
        for ynn in ("on", "off"):
            runs[ynn].append(_child(["--components-in", ynn, "--steps", str(args.steps),
                                     "--repeat", str(args.repeat)]))
            print(ynn, json.dumps(runs[ynn][-1]), flush=True)
    rows = []
    for name in runs["on"][0]:
        on = statistics.median(r[name] for r in runs["on"])
        off = statistics.median(r[name] for r in runs["off"])
        rows.append({"case": name, "ynn_ms": round(on, 3), "no_ynn_ms": round(off, 3),
                     "ynn_over_no_ynn": round(on / off, 3),
                     "per_process_ms": {k: [round(r[name], 3) for r in v] for k, v in runs.items()}})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_process_ms"}), flush=True)
    _write(args.out / "components_separate.json", {"rows": rows}, argv)


def _components(args, argv) -> None:
    rows = []
    for name, units, fn, a in _cases(args):
        fns = {"ynn": jax.jit(fn), "no_ynn": jax.jit(fn, compiler_options=OFF)}
        for f in fns.values():
            jax.block_until_ready(f(*a))  # compile outside the timing
        times = {k: [] for k in fns}
        for _ in range(args.repeat):
            for k, f in fns.items():
                times[k].append(_timed_ms(f, a))
        med = {k: statistics.median(v) / units for k, v in times.items()}
        rows.append({"case": name, "unit": "ms per step" if units > 1 else "ms per call",
                     "units": units, "ynn_ms": round(med["ynn"], 3),
                     "no_ynn_ms": round(med["no_ynn"], 3),
                     "ynn_over_no_ynn": round(med["ynn"] / med["no_ynn"], 3),
                     "all_s": {k: [round(x / 1e3, 4) for x in v] for k, v in times.items()}})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "all_s"}), flush=True)
    _write(args.out / "components.json", {"rows": rows}, argv)


if __name__ == "__main__":
    raise SystemExit(main())
