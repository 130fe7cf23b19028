"""self2seg_jax — Self2Seg (Gruber et al., arXiv 2309.10511) in JAX.

Self-supervised joint segmentation and denoising of a single noisy image: a Chan–Vese-type
energy whose region fidelities are the errors of two expert denoisers trained Noise2Fast-style
on their own regions, minimised by alternating expert training and a primal–dual mask step.

Names and submodules are imported lazily (PEP 562): ``import self2seg_jax`` does not import
JAX until something that needs it is used, so ``self2seg --help`` answers at once.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY_NAMES = {
    "Boxes": "self2seg_jax.initialisation",
    "ClassBoxes": "self2seg_jax.initialisation",
    "segment_multiclass": "self2seg_jax.api",
    "Self2SegConfig": "self2seg_jax.config",
    "Self2SegResult": "self2seg_jax.api",
    "segment": "self2seg_jax.api",
    "segment_iter": "self2seg_jax.api",
    "segment_batch": "self2seg_jax.batch",
    "chan_vese": "self2seg_jax.baselines",
    "denoise_n2f": "self2seg_jax.baselines",
    "sequential": "self2seg_jax.baselines",
    "relaxed_mask": "self2seg_jax.diff",
    "space_mesh": "self2seg_jax.sharding",
    "batch_mesh": "self2seg_jax.batch",
}
_SUBMODULES = {
    "alternating", "api", "batch", "baselines", "cli", "config", "data", "diff", "energy",
    "distributed", "experts", "initialisation", "io", "lam_auto", "metrics", "ops", "pdhg",
    "progress",
    "provenance", "sharding", "viz",
}

__all__ = [
    "Boxes",
    "ClassBoxes",
    "Self2SegConfig",
    "Self2SegResult",
    "batch_mesh",
    "chan_vese",
    "data",
    "denoise_n2f",
    "metrics",
    "ops",
    "pdhg",
    "progress",
    "relaxed_mask",
    "segment",
    "segment_batch",
    "segment_iter",
    "segment_multiclass",
    "sequential",
    "space_mesh",
]


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
