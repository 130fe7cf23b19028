r"""Pure energy functions of Self2Seg (arXiv 2309.10511v2).

Shapes: images, masks and data terms are ``(h, w)`` (leading batch axes broadcast where
stated). All images are assumed min–max normalised to ``[0, 1]``; energies are **sums**
over pixels, so the TV weight ``lam`` is measured against squared residuals of a
``[0, 1]`` image (typical useful values ``1e-3 .. 1e-1``; see :class:`Self2SegConfig`).

The joint energy, eq. (5), for fixed experts with data terms
``d_F = (f - D_F(f))**2`` and ``d_B = (f - D_B(f))**2``:

.. math::

   E(u) = i_{[0,1]}(u) + \lambda\,TV(u) + \sum_i u_i d_{F,i} + (1-u_i) d_{B,i}
          \;[+\; \tfrac{\mu}{2}\|u - u_R\|^2 \text{ (eq. (10))}]

"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from self2seg_jax import ops


def data_term(f: jax.Array, denoised: jax.Array, *, filter_size: int = 1) -> jax.Array:
    r"""Expert data term ``(f - D(f))**2`` or its mean-filtered variant (Example 1).

    With ``filter_size > 1`` returns ``[K_sigma * (f - D(f))]**2`` where ``K_sigma`` is the
    ``filter_size x filter_size`` mean filter: zero-mean noise averages out of the residual of
    a good expert, while a biased expert keeps a large filtered residual.

    Args:
      f: ``(*b, h, w)`` noisy image.
      denoised: ``(*b, h, w)`` expert output ``D(f)``.
      filter_size: odd mean-filter size; 1 means no filtering.

    Returns:
      ``(*b, h, w)`` non-negative data term.
    """
    res = f - denoised
    return ops.mean_filter(res, filter_size) ** 2


def joint_energy(
    u: jax.Array,
    d_fg: jax.Array,
    d_bg: jax.Array,
    lam: jax.Array | float,
    *,
    mu: jax.Array | float = 0.0,
    u_ref: jax.Array | None = None,
    isotropic: bool = True,
) -> jax.Array:
    r"""Joint energy eq. (5) (plus the reference-mask term of eq. (10) when ``mu > 0``).

    The indicator of ``[0, 1]`` is not evaluated: pass an admissible ``u``.

    Args:
      u: ``(*b, h, w)`` relaxed or binary mask (1 = foreground).
      d_fg, d_bg: ``(*b, h, w)`` data terms of the foreground / background experts.
      lam: TV weight.
      mu: weight of ``mu/2 ||u - u_ref||^2`` (ignored when ``u_ref`` is None).
      isotropic: isotropic (paper) or anisotropic TV.

    Returns:
      ``(*b,)`` energy.
    """
    e = lam * ops.tv(u, isotropic=isotropic)
    e = e + jnp.sum(u * d_fg + (1.0 - u) * d_bg, axis=(-2, -1))
    if u_ref is not None:
        e = e + 0.5 * mu * jnp.sum((u - u_ref) ** 2, axis=(-2, -1))
    return e


def binary_energy(
    u: jax.Array,
    d_fg: jax.Array,
    d_bg: jax.Array,
    lam: jax.Array | float,
    *,
    tau: float = 0.5,
    isotropic: bool = True,
) -> jax.Array:
    r"""Energy (6) of the thresholded mask ``1{u >= tau}`` (Theorem 4): ``lam*Per + data``."""
    m = (u >= tau).astype(d_fg.dtype)
    return joint_energy(m, d_fg, d_bg, lam, isotropic=isotropic)


def chan_vese_energy(
    u: jax.Array,
    f: jax.Array,
    c1: jax.Array | float,
    c2: jax.Array | float,
    lam: jax.Array | float,
    *,
    isotropic: bool = True,
) -> jax.Array:
    r"""Convex Chan–Vese energy, in the Self2Seg parametrisation.

    ``lam * TV(u) + sum u (f - c1)^2 + (1 - u) (f - c2)^2``: the special case of eq. (5)
    with constant experts ``D_F = c1``, ``D_B = c2``. The paper's eq. (2) puts its weight on
    the data term instead (TV weight 1, data weight ``lam_2``); the minimisers coincide for
    ``lam = 1 / lam_2``.
    """
    return joint_energy(u, (f - c1) ** 2, (f - c2) ** 2, lam, isotropic=isotropic)


def region_means(f: jax.Array, u: jax.Array, eps: float = 1e-8) -> tuple[jax.Array, jax.Array]:
    """Chan–Vese update: the exact minimisers ``c1, c2`` of ``sum u (f-c1)^2 + (1-u)(f-c2)^2``."""
    c1 = jnp.sum(f * u, axis=(-2, -1)) / (jnp.sum(u, axis=(-2, -1)) + eps)
    c2 = jnp.sum(f * (1 - u), axis=(-2, -1)) / (jnp.sum(1 - u, axis=(-2, -1)) + eps)
    return c1, c2
