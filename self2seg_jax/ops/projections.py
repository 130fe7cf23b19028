r"""Euclidean projections used by the primal–dual solver.

* :func:`project_box` — onto ``[0, 1]`` pointwise (the admissible set of eq. (5));
* :func:`project_simplex` — onto the probability simplex along a class axis (eq. (13));
* :func:`project_dual_ball` — a dual field (component form, see
  :mod:`self2seg_jax.ops.differences`) onto ``{|p(x)| <= radius}`` pointwise: the prox of the
  conjugate of ``radius * TV``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from self2seg_jax.ops.differences import pointwise_norm


def project_box(u: jax.Array) -> jax.Array:
    """Pointwise projection onto ``[0, 1]``."""
    return jnp.clip(u, 0.0, 1.0)


def project_simplex(v: jax.Array, axis: int = 0) -> jax.Array:
    """Projection onto the probability simplex ``{u >= 0, sum_axis u = 1}`` at every point.

    ``u = max(v - t, 0)`` with the threshold ``t`` found by sorting (Held et al. 1974; Duchi et
    al. 2008), ``O(C log C)`` per point for ``C = v.shape[axis]``.
    """
    v = jnp.moveaxis(v, axis, 0)
    c = v.shape[0]
    srt = -jnp.sort(-v, axis=0)  # descending
    css = jnp.cumsum(srt, axis=0) - 1.0
    k = jnp.arange(1, c + 1, dtype=v.dtype).reshape((c,) + (1,) * (v.ndim - 1))
    rho = jnp.sum(srt - css / k > 0, axis=0, keepdims=True)  # >= 1 always
    t = jnp.take_along_axis(css, rho - 1, axis=0) / rho.astype(v.dtype)
    return jnp.moveaxis(jnp.maximum(v - t, 0.0), 0, axis)


def project_dual_ball(ps, radius, *, isotropic: bool = True) -> tuple[jax.Array, ...]:
    """Project the field ``ps`` (tuple of components) onto ``{|p(x)| <= radius}``.

    Isotropic (pointwise Euclidean norm of the components): ``p * radius / max(radius, |p|)``,
    the corrected form of the paper's ``P_{2,inf,lambda}``; anisotropic: clip each component.
    ``radius`` may be traced.
    """
    if isotropic:
        scale = radius / jnp.maximum(radius, pointwise_norm(ps))
        return tuple(p * scale for p in ps)
    return tuple(jnp.clip(p, -radius, radius) for p in ps)
