"""The ``textures`` preset on equal-mean texture images it was not tuned on (issue 15, item 5).

Fixed before the run (2026-11-27): every pair of scikit-image's three texture photographs
(brick, grass, gravel; the first of a pair is the foreground), two geometries (``split``: left |
right as in the paper; ``disc``: a centred disc of radius size/4), two noise levels (10 and 25 %
of the image maximum, the paper's convention), 128x128 (photos block-averaged by 2), noise seed
0, key 0, one box per region as the start (25x25; disc: one in the disc's centre, one in the top
left corner). Methods, all with the library's default lam (0.03) and the same boxes:

* ``textures`` — ``Self2SegConfig.preset("textures")`` (two CNN experts, blind-spot data terms,
  mu = 0) with the primal–dual settings of the texture experiment (``pd_tol = 1e-5``,
  ``pd_max_iter = 20000``: weak data terms need many iterations, ``experiments.textures``;
  the preset itself carries them since this run);
* ``nuclei`` — the library default (CNN foreground on a constant background), same pd settings;
* ``chan_vese`` — convex Chan–Vese (no mean difference to find: expected to fail).

Only brick|grass at the split geometry was looked at before (the preset's origin,
``results/textures_blind_spot.json``, at 256x256); the other 11 images are new to it.
Dice is label-free (max over the two labellings).

    python benchmarks/textures_preset.py      # -> results/textures_preset.json
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import textures as tx  # noqa: E402

from self2seg_jax import api, baselines, provenance  # noqa: E402
from self2seg_jax.config import Self2SegConfig  # noqa: E402
from self2seg_jax.initialisation import Boxes  # noqa: E402

SIZE, BOX = 128, 25
NOISES = (10.0, 25.0)
GEOMETRIES = ("split", "disc")
PAIRS = list(itertools.combinations(tx.TEXTURES, 2))
PD = dict(pd_tol=tx.PD_TOL, pd_max_iter=tx.PD_MAX_ITER)


def boxes_for(img: tx.TextureImage, geometry: str) -> Boxes:
    if geometry == "split":
        return tx.texture_boxes(SIZE, img.split, BOX)
    c0 = (SIZE - BOX) // 2
    return Boxes(fg=[(c0, c0, c0 + BOX, c0 + BOX)], bg=[(4, 4, 4 + BOX, 4 + BOX)])


def main() -> int:
    methods = {"textures": Self2SegConfig.preset("textures", **PD),
               "nuclei": Self2SegConfig.preset("nuclei", **PD)}
    rows = []
    for (left, right), geometry, noise in itertools.product(PAIRS, GEOMETRIES, NOISES):
        img = tx.two_texture_image(left, right, size=SIZE, noise=noise, seed=0, zoom=2,
                                   geometry=geometry)
        boxes = boxes_for(img, geometry)
        row = {"pair": f"{left}|{right}", "geometry": geometry, "noise": noise}
        for name, cfg in methods.items():
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = api.segment(jax.random.key(0), img.noisy, init=boxes, config=cfg)
            row[name] = round(tx.label_free_dice(res.mask, img.gt), 4)
            row[f"{name}_seconds"] = round(time.perf_counter() - t, 2)
            row[f"{name}_status"] = res.status
        t = time.perf_counter()
        cv = baselines.chan_vese(img.noisy, lam=Self2SegConfig().lam, init=boxes)
        row["chan_vese"] = round(tx.label_free_dice(cv, img.gt), 4)
        row["chan_vese_seconds"] = round(time.perf_counter() - t, 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    names = ("textures", "nuclei", "chan_vese")
    summary = {n: {"mean": round(float(np.mean([r[n] for r in rows])), 4),
                   "min": round(float(np.min([r[n] for r in rows])), 4)} for n in names}
    for other in ("nuclei", "chan_vese"):
        d = np.array([r["textures"] - r[other] for r in rows])
        summary[f"textures_vs_{other}_wtl"] = [int((d >= 0.005).sum()),
                                               int((abs(d) < 0.005).sum()),
                                               int((d <= -0.005).sum())]
    out = Path(__file__).resolve().parent / "results" / "textures_preset.json"
    out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows,
                               "summary": summary,
                               "machine": provenance.provenance(out.parent)}, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
