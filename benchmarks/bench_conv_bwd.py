"""The experts' training step in the formulations of session 15 and now, side by side (issue 13).

Three changes of session 16, each the same arithmetic up to float rounding:

* **filter gradient operand order** (below);
* **bias gradient**: the loop-safe path adds the bias with :func:`ops.convolution.add_bias`,
  whose gradient is a matrix-vector product instead of XLA:CPU's reduction over the leading
  axes (``bias="dot"``; before: ``"reduce"``);
* **one expert pass per step**: both checkerboard pairs of the crops concatenated into one batch
  (``passes="one"``; before: one pass per pair, ``"two"``), which mainly shortens compilation.

Variants: ``s15`` (all three as before), ``filter_grad_first`` (only the first change) and
``library`` (all three: the library as it is).

``ops.conv_loopsafe`` computes the weight gradient of a convolution as one matrix product per
kernel offset, contracting the batch and spatial axes of the output gradient ``g`` and of an
input window shifted by that offset. Written as ``window^T g`` (the library until session 16),
XLA:CPU transposes every window before its product; written as ``g^T window`` (now), it
transposes ``g`` once for all offsets and only slices the windows. Same numbers up to float
rounding. This script times the variants in the same code paths:

* ``train2d`` / ``train3d`` — the default expert's crop training (``experts.fit_n2f_crops``,
  a fixed number of Adam steps, validation and the final tiled pass included), per Adam step,
  the variants compiled in one process and the timed calls alternating (``--repeat`` rounds,
  medians), with their first calls (compilation included);
* ``--profile``: XLA's own per-op times (``jax.profiler``) of one ``train2d`` call per variant,
  summed by fused-op kind — where the time goes;
* ``--whole``: ``segment`` with default options on the 128^2 comparison patch (sigma 30, noise
  seed 0) and on the bundled 3-D stack, each in a fresh process for ``s15`` and ``library``: a
  first call (compilation included) and a warm call with another key, Dice, Adam steps and
  outer iterations (the variants round differently, so a run may take another path).

Writes ``results/train_step/components.json`` (and ``whole.json``) with the machine. At commit
1b5ded1 the script compared the two filter-gradient orders only (``windows_first`` /
``grad_first``); its files are in ``results/conv_bwd/``.

    python benchmarks/bench_conv_bwd.py --profile --whole   # ~15 min on 2 cores
"""

from __future__ import annotations

import argparse
import collections
import gzip
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from bench_cpu_ynn import whole_run  # the same whole runs
from bench_step_cost import _image  # the same 2-D patch and 3-D volume

import self2seg_jax as s2s
from self2seg_jax import backend, experts, io, ops, provenance
from self2seg_jax.ops import convolution

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"s15": dict(filter="windows_first", bias="reduce", passes="two"),
            "filter_grad_first": dict(filter="grad_first", bias="reduce", passes="two"),
            "library": dict(filter="grad_first", bias="dot", passes="one")}
ORDERS = tuple(VARIANTS)
_LIBRARY = (convolution._filter_grad, ops.conv_bias, experts.crop_loss)


def _filter_grad_windows_first(xp: jax.Array, g: jax.Array, ks: tuple) -> jax.Array:
    """The previous operand order: ``window_k^T g`` per offset (same result as the library's
    ``_filter_grad`` up to rounding)."""
    nsp = len(ks)
    lead = tuple(range(nsp + 1))
    rows = []
    for off in itertools.product(*(range(k) for k in ks)):
        win = xp[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(off, g.shape[1:-1]))]
        rows.append(jnp.tensordot(win, g, axes=(lead, lead)))
    return jnp.stack(rows, 0).reshape(ks + (xp.shape[-1], g.shape[-1]))


def _conv_bias_reduce(x, w, b, *, impl="lax", padding="SAME"):
    """Session 15's bias: a broadcast add (its gradient a reduction)."""
    return ops.conv(x, w, impl=impl, padding=padding) + b


def _crop_loss_two_passes(params, x, wt, v, axis, cfg):
    """Session 15's ``experts.crop_loss`` without a crop mesh: one expert pass per pair."""
    pairs, wpairs, vpairs = (ops.checkerboard_pairs(a, cfg.ndim, axis) for a in (x, wt, v))
    tot = 0.0
    for (xi, yi), (_, wi), (vi, _) in zip(pairs, wpairs, vpairs):
        tot = tot + experts._crop_error(params, xi, wi, vi, yi, cfg)
    return tot / max(cfg.channels, 1)


def use(variant: str) -> None:
    """Make the experts' training use ``variant``'s formulation from the next trace on."""
    v = VARIANTS[variant]
    convolution._filter_grad = (_LIBRARY[0] if v["filter"] == "grad_first"
                                else _filter_grad_windows_first)
    ops.conv_bias = _LIBRARY[1] if v["bias"] == "dot" else _conv_bias_reduce
    experts.crop_loss = _LIBRARY[2] if v["passes"] == "one" else _crop_loss_two_passes


def _case(ndim: int, steps: int):
    """``(function, arguments)``: ``steps`` Adam steps of the default expert's crop training."""
    f = _image(ndim)
    w = (f > f.mean()).astype(jnp.float32)
    cfg = s2s.Self2SegConfig(train_max_steps=steps, train_min_steps=steps).spec(ndim=ndim).train
    p = experts.init_params(jax.random.key(0), "n2f", cfg)
    return (lambda k, p, f, w: experts.fit_n2f_crops(k, p, f, w, 1e-3, cfg)[1],
            (jax.random.key(1), p, f, w))


def _timed(f, a) -> float:
    t = time.perf_counter()
    jax.block_until_ready(f(*a))
    return time.perf_counter() - t


def _components(args) -> list:
    rows = []
    for name, nd, steps in (("train2d", 2, args.steps), ("train3d", 3, max(args.steps // 8, 5))):
        fn, a = _case(nd, steps)
        fns, first = {}, {}
        for order in ORDERS:
            use(order)
            fns[order] = backend.jit(lambda *x, fn=fn: fn(*x))
            first[order] = _timed(fns[order], a)  # compilation + one call
        outs = {o: np.asarray(fns[o](*a)) for o in ORDERS}
        times = {o: [] for o in ORDERS}
        for _ in range(args.repeat):
            for o in ORDERS:
                times[o].append(1e3 * _timed(fns[o], a) / steps)
        med = {o: statistics.median(v) for o, v in times.items()}
        rows.append({"case": name, "steps": steps, "unit": "ms per Adam step",
                     "median_ms": {o: round(m, 2) for o, m in med.items()},
                     "over_library": {o: round(m / med["library"], 3) for o, m in med.items()},
                     "first_call_s": {o: round(v, 1) for o, v in first.items()},
                     "max_abs_output_difference_to_library": {o: float(np.max(np.abs(
                         outs[o] - outs["library"]))) for o in ORDERS},
                     "all_ms": {o: [round(x, 2) for x in v] for o, v in times.items()}})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "all_ms"}), flush=True)
    return rows


def _profile(args) -> dict:
    """XLA's per-op times of one ``train2d`` call per order, summed by op kind (ms)."""
    fn, a = _case(2, args.steps)
    out = {}
    for order in ORDERS:
        use(order)
        f = backend.jit(lambda *x: fn(*x))
        jax.block_until_ready(f(*a))
        with tempfile.TemporaryDirectory() as tmp:
            jax.profiler.start_trace(tmp, create_perfetto_trace=True)
            wall = _timed(f, a)
            jax.profiler.stop_trace()
            trace = json.load(gzip.open(next(Path(tmp).rglob("*.trace.json.gz"))))
        kinds = collections.Counter()
        for e in trace["traceEvents"] if isinstance(trace, dict) else trace:
            name = e.get("name", "")
            if e.get("ph") != "X" or name.startswith(("$", "end: ")) or "Execute" in name:
                continue
            kinds[re.sub(r"\.\d+$", "", name)] += e.get("dur", 0) / 1e3
        total = sum(kinds.values())
        out[order] = {"wall_ms_per_step": round(1e3 * wall / args.steps, 2),
                      "op_ms_total": round(total, 1),
                      "top_kinds_ms": {k: round(v, 1) for k, v in kinds.most_common(8)},
                      "top_kinds_share": {k: round(v / total, 3) for k, v in
                                          kinds.most_common(8)}}
        print(order, json.dumps(out[order]), flush=True)
    return out


WHOLE = ("patch128", "stack3d")


def _one(case: str, order: str) -> dict:
    """A fresh process's cold and warm ``segment`` call on ``case`` with variant ``order``."""
    use(order)
    return {"case": case, "order": order, **whole_run(case)}


def _child(args: list) -> dict:
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(args)}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _whole() -> dict:
    rows = []
    for case in WHOLE:
        for order in ("s15", "library"):
            rows.append(_child(["--one", case, order]))
            print(json.dumps(rows[-1]), flush=True)
    by = {(r["case"], r["order"]): r for r in rows}
    ratios = {c: {"warm_s15_over_library": round(
                      by[c, "s15"]["warm_s"] / by[c, "library"]["warm_s"], 3),
                  "cold_s15_over_library": round(
                      by[c, "s15"]["cold_s"] / by[c, "library"]["cold_s"], 3),
                  "per_step_s15_over_library": round(
                      (by[c, "s15"]["warm_s"] / by[c, "s15"]["train_steps"])
                      / (by[c, "library"]["warm_s"] / by[c, "library"]["train_steps"]), 3)}
              for c in WHOLE}
    print(json.dumps(ratios), flush=True)
    return {"rows": rows, "ratios": ratios}


def _write(path: Path, record: dict, start: dict) -> None:
    """``record`` with ``start`` (:func:`provenance.run_record` taken when the run began: the
    commit it ran) and the load average at its end."""
    io.write_json(path, {**record, **start, "load_average_end": list(os.getloadavg())},
                  overwrite=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="Adam steps per 2-D training call "
                    "(3-D: an eighth)")
    ap.add_argument("--repeat", type=int, default=5, help="alternating timed pairs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_step")
    ap.add_argument("--profile", action="store_true", help="XLA op times by kind (train2d)")
    ap.add_argument("--whole", action="store_true", help="whole runs in fresh processes")
    ap.add_argument("--no-components", action="store_true")
    ap.add_argument("--one", nargs=2, metavar=("CASE", "ORDER"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(_one(*args.one)), flush=True)
        return 0
    argv = list(sys.argv[1:] if argv is None else argv)
    start = provenance.run_record(ROOT, ["benchmarks/bench_conv_bwd.py", *argv])
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_components or args.profile:
        record = {}
        if not args.no_components:
            record["rows"] = _components(args)
        if args.profile:
            record["profile_train2d"] = _profile(args)
        _write(args.out / "components.json", record, start)
    if args.whole:
        _write(args.out / "whole.json", _whole(), start)
    use("library")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
