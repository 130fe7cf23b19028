"""The paper's comparison methods on the same machinery (paper §5, Table 1).

* :func:`chan_vese` — convex Chan–Vese (Chan, Esedoglu & Nikolova): alternating exact
  ``c1, c2`` updates (region means) and the same primal–dual u-step; it *is* Self2Seg with two
  constant experts.
* :func:`denoise_n2f` — Noise2Fast on the whole image (one expert, no regions).
* :func:`sequential` — Noise2Fast, then Chan–Vese on the denoised image.

``lam`` is the TV weight of eq. (5) on the image normalised to ``[0, 1]``, as in
:func:`self2seg_jax.segment` (the paper's eq. (2) weights the data term instead:
``lam_data = 1 / lam``).
"""

from __future__ import annotations

import jax
import numpy as np

from self2seg_jax import api, experts
from self2seg_jax.config import Self2SegConfig


def chan_vese(
    image,
    *,
    lam: float,
    init="otsu",
    max_outer: int = 50,
    mask_tol: float = 0.0,
    config: Self2SegConfig | None = None,
    return_result: bool = False,
):
    """Convex Chan–Vese segmentation; returns a bool ``(h, w)`` mask (foreground = brighter
    region for ``init="otsu"``, darker for ``"otsu_dark"``).

    Runs the alternating scheme with constant experts (exact ``c1, c2`` updates) until the
    mask no longer changes (``mask_tol``) or ``max_outer``; the energy never increases.
    ``config`` may carry primal–dual options; its expert options are overridden.
    """
    cfg = chan_vese_config(lam, max_outer=max_outer, mask_tol=mask_tol, config=config)
    res = api.segment(jax.random.key(0), image, init=init, config=cfg)
    return res if return_result else res.mask


def chan_vese_config(
    lam: float, *, max_outer: int = 50, mask_tol: float = 0.0, config: Self2SegConfig | None = None
) -> Self2SegConfig:
    """The :class:`Self2SegConfig` that makes the scheme convex Chan–Vese: two constant
    experts, no mean filter, no reference-mask term, no energy rule, no Noise2Fast init, no
    local refinement step after it; primal–dual options are taken from ``config``."""
    return (config or Self2SegConfig()).replace(
        lam=lam,
        fg_expert="constant",
        bg_expert="constant",
        init_denoise=False,
        max_outer=max_outer,
        mask_tol=mask_tol,
        energy_p=0.0,
        mu=0.0,
        data_filter=1,
        refine_size=0,
    )


def denoise_n2f(key: jax.Array, image, *, config: Self2SegConfig = Self2SegConfig()) -> np.ndarray:
    """Noise2Fast denoising of the whole ``(h, w)`` image with the configured CNN and schedule.

    Returns a float32 ``(h, w)`` array in the input's intensity scale.
    """
    a, nd = api.validate_image(image)
    f, lo, hi = api.normalise(a, config.normalise)
    train = config.spec(ndim=nd).train
    out = np.asarray(experts.denoise(api.check_key(key), f, config.learning_rate, train))
    if not np.all(np.isfinite(out)):
        raise FloatingPointError("Noise2Fast denoising produced non-finite values")
    return (out * (hi - lo) + lo).astype(np.float32)


def sequential(
    key: jax.Array,
    image,
    *,
    lam: float,
    init="otsu",
    config: Self2SegConfig = Self2SegConfig(),
    max_outer: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Sequential baseline: Noise2Fast denoising, then convex Chan–Vese on the result.

    ``init`` is applied to the denoised image (``"otsu"``, ``"otsu_dark"`` or a float
    threshold, as for the joint method; a mask or Boxes are used as given). Returns
    ``(mask, denoised)``.
    """
    den = denoise_n2f(key, image, config=config)
    mask = chan_vese(den, lam=lam, init=init, max_outer=max_outer, config=config)
    return mask, den
