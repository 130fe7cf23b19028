"""self2seg_jax — Self2Seg (Gruber et al., arXiv 2309.10511) in JAX.

Self-supervised joint segmentation and denoising of a single noisy image: a Chan–Vese-type
energy whose region fidelities are the errors of two expert denoisers trained Noise2Fast-style
on their own regions, minimised by alternating expert training and a primal–dual mask step.
"""

from self2seg_jax import data, metrics, ops, pdhg
from self2seg_jax.api import Self2SegResult, segment
from self2seg_jax.baselines import chan_vese, denoise_n2f, sequential
from self2seg_jax.config import Self2SegConfig
from self2seg_jax.diff import relaxed_mask
from self2seg_jax.initialisation import Boxes

__version__ = "0.1.0"

__all__ = [
    "Boxes",
    "Self2SegConfig",
    "Self2SegResult",
    "chan_vese",
    "data",
    "denoise_n2f",
    "metrics",
    "ops",
    "pdhg",
    "relaxed_mask",
    "segment",
    "sequential",
]
