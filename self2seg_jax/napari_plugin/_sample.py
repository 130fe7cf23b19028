"""Sample data: the bundled DSB2018 nuclei crop with Gaussian noise (std 30, seed 0)."""

from __future__ import annotations


def noisy_nuclei():
    """``[(image, {"name": ...})]``: the 128x128 comparison patch of the benchmarks, noisy."""
    from self2seg_jax import data

    clean, _ = data.load_sample(crop=(256, 128, 384, 256))
    return [(data.add_gaussian_noise(0, clean, 30.0), {"name": "noisy nuclei"})]
