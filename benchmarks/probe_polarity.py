"""Objects darker than their background: the bundled DSB2018 sample inverted (255 - image).

For the 128^2 comparison patch and the whole 512^2 sample (σ = 30, noise seeds 0-2, key = seed),
with the default configuration: Dice of the mask of ``init="otsu"`` on the original (bright
nuclei: the reference), of ``init="otsu"`` on the inverted image (its mask is the bright
*background*: Dice of the mask and of its complement), and of ``init="otsu_dark"`` on the
inverted image (the dark nuclei are the foreground, so the CNN expert models them).
Writes ``results/polarity.json``.

    python benchmarks/probe_polarity.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

import self2seg_jax as s2s
from self2seg_jax import provenance

ROOT = Path(__file__).resolve().parents[1]
IMAGES = {"patch128": (256, 128, 384, 256), "whole512": None}


def main() -> int:
    rows = []
    for name, crop in IMAGES.items():
        img, gt = s2s.data.load_sample(crop=crop) if crop else s2s.data.load_sample()
        for seed in (0, 1, 2):
            noisy = s2s.data.add_gaussian_noise(seed, img, 30.0)
            row = {"image": name, "seed": seed}
            for case, x, init in (("bright_otsu", noisy, "otsu"),
                                  ("dark_otsu", 255.0 - noisy, "otsu"),
                                  ("dark_otsu_dark", 255.0 - noisy, "otsu_dark")):
                m = np.asarray(s2s.segment(jax.random.key(seed), x, init=init).mask)
                row[case] = round(float(s2s.metrics.dice(m, gt)), 4)
                if case == "dark_otsu":
                    row["dark_otsu_complement"] = round(float(s2s.metrics.dice(~m, gt)), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = ("bright_otsu", "dark_otsu", "dark_otsu_complement", "dark_otsu_dark")
    summary = {name: {k: round(float(np.mean([r[k] for r in rows if r["image"] == name])), 4)
                      for k in keys} for name in IMAGES}
    print(json.dumps(summary))
    out = {"rows": rows, "mean_dice": summary, **provenance.run_record(ROOT)}
    (ROOT / "benchmarks" / "results" / "polarity.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
