r"""Noise2Fast checkerboard sampling (paper §4.3) on N-D grids.

The voxels of a checkerboard (index sum even / odd) are squeezed along one spatial axis,
which halves that axis; for each spatial axis (last first) this gives the two (input, target)
pairs ``(x_even, x_odd)`` and ``(x_odd, x_even)``: four pairs for an image (the paper's
``f_even, f_odd, f'_even, f'_odd``), six for a volume. Operators act on the last ``ndim`` axes;
leading axes (channels, batch) are carried along.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _even_crop(x: jax.Array, ndim: int) -> tuple:
    lead = x.ndim - ndim
    return (Ellipsis,) + tuple(slice(0, n // 2 * 2) for n in x.shape[lead:])


def _rows_start_odd(spatial: tuple[int, ...], a: int) -> jax.Array:
    """Parity of the sum of the spatial indices other than axis ``a`` (bool, broadcastable to
    the shape squeezed along ``a``): where a checkerboard row starts on the odd colour."""
    if len(spatial) == 1:
        return jnp.zeros((1,), bool)
    par = sum(
        (jnp.arange(n) % 2).reshape([n if k == b else 1 for k in range(len(spatial))])
        for b, n in enumerate(spatial) if b != a
    )
    return par % 2 == 1


def checkerboard_pairs(x: jax.Array, ndim: int = 2, axis: int | None = None
                       ) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """The ``2 * ndim`` Noise2Fast (input, target) pairs of ``x`` (or the two of one ``axis``).

    In 2-D: ``x_even[i, j] = x[i, 2j + (i mod 2)]``, ``x_odd[i, j] = x[i, 2j + 1 - (i mod 2)]``
    (the two colours squeezed along x, shape ``(h, w/2)``), then the same squeezed along y.

    Args:
      x: ``(*b, *s)``; an odd size along a spatial axis is cropped by one.
      axis: only the pairs squeezed along this spatial axis (0-based among the ``ndim``).
    """
    x = x[_even_crop(x, ndim)]
    lead = x.ndim - ndim
    spatial = x.shape[lead:]
    pairs = []
    for a in reversed(range(ndim)) if axis is None else (axis,):
        ax = lead + a
        a0 = lax.slice_in_dim(x, 0, None, 2, axis=ax)
        a1 = lax.slice_in_dim(x, 1, None, 2, axis=ax)
        odd = _rows_start_odd(spatial, a)
        even_v, odd_v = jnp.where(odd, a1, a0), jnp.where(odd, a0, a1)
        pairs += [(even_v, odd_v), (odd_v, even_v)]
    return tuple(pairs)


def blind_spot(apply, x: jax.Array, ndim: int = 2, full: jax.Array | None = None) -> jax.Array:
    """Blind-spot (J-invariant) prediction of a Noise2Fast-trained map ``apply``.

    For each squeeze direction, ``apply(input)`` predicts the target voxels of both pairs;
    putting the predictions back at the target positions gives, at every voxel, a value
    computed only from voxels of the *other* colour (the directions are averaged). Because the
    output at a voxel never sees that voxel, ``E (x - out)^2 = E (clean - out)^2 + sigma^2``
    for pixel-independent zero-mean noise (Noise2Self), whereas ``apply(x)`` on the full image
    passes part of the noise through and rewards doing so in ``(x - apply(x))^2``.

    Args:
      apply: ``(*b, *s') -> (*b, *s')`` (the expert on a squeezed image).
      x: ``(*b, *s)``.
      full: ``(*b, *s)`` values for the voxels an odd size crops away (default ``x``).
    """
    crop = _even_crop(x, ndim)
    xc = x[crop]
    lead = xc.ndim - ndim
    spatial = xc.shape[lead:]
    pairs = checkerboard_pairs(xc, ndim)
    acc = jnp.zeros_like(xc)
    for k, a in enumerate(reversed(range(ndim))):
        ax = lead + a
        ev, od = pairs[2 * k]
        p_odd, p_even = apply(ev), apply(od)  # predictions of the odd / even coloured voxels
        odd = _rows_start_odd(spatial, a)
        a0 = jnp.where(odd, p_odd, p_even)  # values at index 2m along ax
        a1 = jnp.where(odd, p_even, p_odd)  # values at index 2m + 1
        acc = acc + jnp.stack([a0, a1], axis=ax + 1).reshape(xc.shape).astype(x.dtype)
    return (x if full is None else full).at[crop].set(acc / ndim)
