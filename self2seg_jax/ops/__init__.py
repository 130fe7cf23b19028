"""Array operators, split by concept (each acts on the last ``ndim`` spatial axes):

* :mod:`~self2seg_jax.ops.differences` — gradient, divergence, (Huber) total variation;
* :mod:`~self2seg_jax.ops.projections` — box, simplex and dual-ball projections;
* :mod:`~self2seg_jax.ops.checkerboard` — Noise2Fast checkerboard pairs and blind-spot outputs;
* :mod:`~self2seg_jax.ops.convolution` — the experts' convolution, the mean filter and box sums.
"""

from self2seg_jax.ops.checkerboard import blind_spot, checkerboard_pairs
from self2seg_jax.ops.convolution import box_sum, conv, conv_bias, conv_loopsafe, mean_filter
from self2seg_jax.ops.differences import div, grad, grad_norm_sq_bound, pointwise_norm, tv
from self2seg_jax.ops.projections import project_box, project_dual_ball, project_simplex

__all__ = [
    "blind_spot", "box_sum", "checkerboard_pairs", "conv", "conv_bias", "conv_loopsafe", "div",
    "grad", "grad_norm_sq_bound", "mean_filter", "pointwise_norm", "project_box",
    "project_dual_ball", "project_simplex", "tv",
]
