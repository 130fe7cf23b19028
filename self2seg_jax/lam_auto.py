"""``lam="auto"``: the TV weight chosen per image from its own noise, without labels.

Why a noise scale. After the first W-step the mask step sees the data terms ``d_i`` (one per
class). Whether a region of area ``A`` and perimeter ``P`` is kept depends on the sum of the
data-term difference over it against ``lam * P``. Over a region where nothing changes, that
sum is noise with standard deviation ``sigma * sqrt(A)``, ``sigma`` the per-pixel noise of the
difference; for a disc of radius ``r`` the noise sum is ``sigma * sqrt(pi) * r`` and the
boundary price ``2 * pi * r * lam``: with ``lam = kappa * sigma`` a spurious disc needs a noise
excursion of ``2 * sqrt(pi) * kappa`` standard deviations, **whatever its size**. So in 2-D one
dimensionless ``kappa`` fixes how strong a noise blob must be to survive, and
``lam = kappa * sigma`` follows the image's noise level and contrast (the data terms of
brighter objects or of noisier images are larger).

``sigma`` is measured on the image itself, with no ground truth and no extra training: the
data terms of the first W-step exactly as the mask step sees them (after ``data_filter``), the
difference of every two classes' terms, and the root mean square of its diagonal-neighbour
differences ``(D(x) - D(x + (1, ..., 1))) / sqrt(2)`` on the two diagonal sub-grids (the
signal cancels except at edges, which add a few per cent). The value ``kappa * sigma`` is
snapped to the nearest of :data:`LAM_GRID` (log scale), so a result is always one of a fixed,
reported set of values.

``kappa`` (:data:`KAPPA`) was fitted once, pooled over methods and noise levels, on the
*tuning* patches of the DSB2018 evaluation protocol only, and is evaluated on its evaluation
patches (``python benchmarks/lam_auto_protocol.py`` -> ``benchmarks/results/lam_auto/``).
With mean-filtered data terms the fitted ratio ``lam*/sigma`` was about the same as without
when ``sigma`` is measured after the filter (not before), hence the measurement above. Volumes
use the same value (there the size-independence argued above does not hold exactly).

Pure and jittable except :func:`choose` (host side: a Python float).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from self2seg_jax import alternating, backend

#: Candidate values of ``lam="auto"`` (log-spaced; the protocol's Self2Seg grid).
LAM_GRID = (5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 0.01, 0.02, 0.03, 0.05, 0.1)

#: ``lam = KAPPA * sigma`` (see the module docstring); fitted on the protocol's tuning split.
KAPPA = 0.7


def noise_scale(d: jax.Array) -> jax.Array:
    """Per-pixel noise ``sigma`` of the pairwise data-term differences.

    Args:
      d: ``(C, *s)`` float32 data terms (``C >= 2`` classes, any number of spatial axes).

    Returns:
      Scalar float32: the root mean square over class pairs ``i < j`` and the diagonal
      sub-grids of ``(D(x) - D(x + 1)) / sqrt(2)``, ``D = d_i - d_j``.
    """
    c = d.shape[0]
    even = (slice(None),) + tuple(slice(0, 2 * (n // 2), 2) for n in d.shape[1:])
    odd = (slice(None),) + tuple(slice(1, 2 * (n // 2), 2) for n in d.shape[1:])
    g = d[even] - d[odd]  # (C, ...) diagonal differences of every class's term
    # sum over pairs i < j of (g_i - g_j)^2 = C * sum_i (g_i - mean_k g_k)^2
    pairs = c * jnp.sum((g - jnp.mean(g, axis=0)) ** 2, axis=0)
    return jnp.sqrt(jnp.mean(pairs) / 2.0 / (c * (c - 1) / 2))


@backend.jit(static_argnames=("spec",))
def scale_of(ws: alternating.WStep, f, spec: alternating.Spec) -> jax.Array:
    """``sigma`` of the data terms of a W-step (:func:`noise_scale` of
    :func:`self2seg_jax.alternating.data_terms`). Scalar float32."""
    return noise_scale(alternating.data_terms(ws.params, ws.den, f, spec))


def first_step_scale(key, f, w0, labels0, hyper: alternating.Hyper,
                     spec: alternating.Spec) -> jax.Array:
    """``sigma`` after the first W-step of the run that :func:`self2seg_jax.alternating.run`
    would do with the same arguments (same key, start and experts; the W-step does not depend
    on ``lam``). Scalar float32."""
    _, ws = alternating.first_w_step(key, f, w0, labels0, hyper, spec)
    return scale_of(ws, f, spec)


def choose(sigma, kappa: float = KAPPA, grid=LAM_GRID) -> float:
    """The value of ``grid`` nearest to ``kappa * sigma`` in log scale (ties: the smaller);
    a non-finite or non-positive ``sigma`` raises ``ValueError``."""
    s = float(sigma)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"lam='auto': the data terms' noise scale is {s!r}; the experts "
                         "cannot tell the regions apart (set lam explicitly)")
    g = np.asarray(sorted(grid), np.float64)
    return float(g[int(np.argmin(np.abs(np.log(g) - math.log(kappa * s))))])
