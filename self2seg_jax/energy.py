r"""The Self2Seg energy (arXiv 2309.10511v2, eqs. (5), (10), (13)) as pure functions.

For ``C`` classes with probabilities ``u = (u_0, ..., u_{C-1})`` on the simplex at every point
(class 0 = background; two classes: ``u = (1 - v, v)`` with ``v`` the foreground mask) and data
terms ``d_i = sum_channels [K (f - D_i(f))]^2`` of the class experts ``D_i``:

.. math::

   E(u) = \sum_i \langle d_i, u_i \rangle + \tfrac{\lambda}{2} \sum_i TV(u_i)
          \;[+\; \tfrac{\mu}{4} \|u - u_R\|^2]

Each interface between two classes appears in the TV of both, hence ``lambda/2``: for two
classes this is exactly eq. (5), ``lambda TV(v) + sum v d_1 + (1 - v) d_0``, and the reference
term is eq. (10)'s ``mu/2 ||v - v_R||^2``. Images are scaled to ``[0, 1]``
(``Self2SegConfig.normalise``) and energies are **sums** over pixels (see
:class:`self2seg_jax.Self2SegConfig` for ``lambda``'s scale). Shapes: ``u``, ``d`` are
``(C, *s)`` with ``len(s) == ndim``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from self2seg_jax import ops


def data_terms(f: jax.Array, preds: jax.Array, *, filter_size: int = 1, ndim: int = 2,
               channels: bool = False) -> jax.Array:
    r"""Data terms ``d_i = sum_channels [K (f - P_i)]^2`` of the experts' predictions ``P_i``.

    ``K`` is the ``filter_size^ndim`` mean filter (paper Example 1; 1 = no filter): zero-mean
    noise averages out of the residual of a good expert, a biased expert keeps a large one.

    Args:
      f: ``(*s)`` or ``(L, *s)`` (``channels``) normalised image.
      preds: ``(C, *f.shape)`` expert predictions (outputs, or blind-spot predictions).

    Returns:
      ``(C, *s)`` non-negative data terms.
    """
    sq = ops.mean_filter(f[None] - preds, filter_size, ndim) ** 2
    return jnp.sum(sq, axis=1) if channels else sq


def energy(u: jax.Array, d: jax.Array, lam, *, mu=0.0, u_ref: jax.Array | None = None,
           ndim: int = 2, spacing=None, isotropic: bool = True) -> jax.Array:
    """The energy above for probabilities ``u`` (relaxed or one-hot) and data terms ``d``."""
    e = jnp.sum(jnp.sum(u * d, axis=0)) + 0.5 * lam * jnp.sum(
        ops.tv(u, ndim, spacing, isotropic=isotropic))
    if u_ref is not None:
        e = e + 0.25 * mu * jnp.sum((u - u_ref) ** 2)
    return e


def one_hot(labels: jax.Array, num_classes: int, dtype=jnp.float32) -> jax.Array:
    """``(C, *s)`` indicator functions of an integer label image ``(*s)``."""
    return jax.nn.one_hot(labels, num_classes, axis=0, dtype=dtype)


def labels_energy(labels: jax.Array, d: jax.Array, lam, *, ndim: int = 2, spacing=None,
                  isotropic: bool = True) -> jax.Array:
    """Energy of a label image (eq. (6) for two classes, the binary energy of Theorem 4)."""
    return energy(one_hot(labels, d.shape[0], d.dtype), d, lam, ndim=ndim, spacing=spacing,
                  isotropic=isotropic)
