"""Run a committed evaluation protocol (``benchmarks/protocols/*.toml``); rows to ``rows.jsonl``.

    python benchmarks/run_protocol.py benchmarks/protocols/dsb2018_v2.toml
    python benchmarks/report_protocol.py benchmarks/results/dsb2018_v2     # tables from rows

Every cell (method x noise level x noise seed x scale) is one compiled call over all its images
and the protocol's whole lambda grid (:mod:`experiments.protocol`). Cells run seed-major (seed 0's
patches at every level, then its whole image, then seed 1, ...) so that a run cut short by
``--budget`` holds whole seeds; finished cells are skipped on a rerun (resumable), rows
are appended as each cell finishes, and ``meta.json`` records each run's command, provenance and
the protocol file's SHA-256. Methods whose configuration, data and start coincide at a level
(the library default and reading A at noise 10) run once; the copy's rows say ``same_as``.

Smoke run (seconds, not for reporting): ``--size 32 --patches 0 1 --grid 0.01 0.03 --seeds 0
--levels 30 --no-whole --out /tmp/proto``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import protocol as P  # noqa: E402


def run_info(proto_path: Path, commit: str | None) -> dict:
    from self2seg_jax.provenance import provenance

    info = {
        "command": "python " + shlex.join(sys.argv),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()),
        "protocol_sha256": hashlib.sha256(proto_path.read_bytes()).hexdigest(),
        **provenance(Path(__file__).resolve().parent),
    }
    if commit:  # a copied tree (device machine) has stale git metadata: say what ran
        info["git_reported"] = {"commit": info.get("commit"), "clean": info.get("clean")}
        info["commit"], info["clean"] = commit, None
    return info


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def append_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("protocol", type=Path)
    ap.add_argument("--out", type=Path, default=None,
                    help="results folder (default: benchmarks/results/<protocol name>)")
    ap.add_argument("--levels", type=float, nargs="+", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-image cells")
    ap.add_argument("--whole-only", action="store_true", help="only the whole-image cells")
    ap.add_argument("--budget", type=float, default=None,
                    help="start no new cell after this many seconds")
    ap.add_argument("--commit", default=None, help="commit that ran (copied trees)")
    ap.add_argument("--size", type=int, default=None, help="patch size (smoke runs only)")
    ap.add_argument("--patches", type=int, nargs="+", default=None, help="(smoke runs only)")
    ap.add_argument("--grid", type=float, nargs="+", default=None, help="(smoke runs only)")
    args = ap.parse_args(argv)

    proto = P.load(args.protocol)
    smoke = args.size is not None or args.patches is not None or args.grid is not None
    out = args.out or Path(__file__).resolve().parent / "results" / proto.name
    if smoke and args.out is None:
        ap.error("smoke options (--size/--patches/--grid) need an explicit --out")
    out.mkdir(parents=True, exist_ok=True)
    rows_path, meta_path = out / "rows.jsonl", out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
    info = run_info(args.protocol, args.commit)
    info["smoke"] = smoke
    meta["protocol"] = str(args.protocol)
    meta["runs"].append(info)
    meta_path.write_text(json.dumps(meta, indent=1))

    levels = args.levels or proto.report.get("order_levels", proto.data["levels"])
    seeds = args.seeds or proto.data["noise_seeds"]
    methods = args.methods or list(proto.methods)
    unknown = set(methods) - set(proto.methods)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}")
    scales = [] if args.whole_only else ["patch"]
    if proto.data.get("whole_image") and not args.no_whole:
        scales.append("whole")
    done = {(r["method"], r["level"], r["seed"], r["scale"]) for r in load_rows(rows_path)}
    cells = [(scale, seed, float(level)) for seed in seeds for scale in scales for level in levels]
    t0 = time.perf_counter()
    print(f"protocol {proto.name}: {len(cells)} (scale, seed, level) groups x {len(methods)} "
          f"methods -> {out}", flush=True)
    for scale, seed, level in cells:
        todo = [m for m in methods if (m, level, seed, scale) not in done]
        if not todo:
            continue
        if args.budget is not None and time.perf_counter() - t0 > args.budget:
            print(f"budget of {args.budget:.0f} s spent: stopping before {scale} seed {seed} "
                  f"level {level:g}", flush=True)
            break
        ims = P.images(proto, level, seed, scale, size=args.size,
                       indices=args.patches if scale == "patch" else None)
        st = P.starts(proto, ims, seed,
                      denoise=any(P.needs_denoiser(proto, m) for m in todo))
        ran = {}
        for method in todo:
            m = proto.methods[method]
            ident = (P.method_config(proto, method, level), m["data"], m["start"])
            t = time.perf_counter()
            if ident in ran:
                rows = [{**r, "method": method, "same_as": ran[ident][0]} for r in ran[ident][1]]
            else:
                rows = P.run_cell(proto, method, level, seed, ims, st, grid=args.grid)
                ran[ident] = (method, rows)
            append_rows(rows_path, rows)
            fixed = proto.raw["lambda"]["fixed"]
            j = rows[0]["lams"].index(fixed) if fixed in rows[0]["lams"] else 0
            mean_fixed = sum(r["dice"][j] for r in rows) / len(rows)
            best = sum(max(r["dice"]) for r in rows) / len(rows)
            print(f"[{time.perf_counter() - t0:7.1f} s] {scale} seed {seed} noise {level:g} "
                  f"{method}: {time.perf_counter() - t:.1f} s, mean Dice at lam {rows[0]['lams'][j]:g} "
                  f"{mean_fixed:.3f}, per-image best {best:.3f}", flush=True)
    print(f"protocol {proto.name}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
