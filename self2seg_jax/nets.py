"""The expert CNN (Flax). Imported by :mod:`self2seg_jax.experts` only when a network is
built, so that processes that only run stored programs do not import Flax."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from self2seg_jax import ops


class _Conv(nn.Module):
    """A 3x3 (2-D) or 3x3x3 (3-D) convolution with bias, channel-last. ``factorised`` (3-D
    only): a 3x3 in-plane convolution ``(1, 3, 3, c_in, c)`` followed by a 3-tap convolution
    along the first spatial axis ``(3, 1, 1, c, c)`` — the same 3x3x3 receptive field with
    ``9 c_in + 3 c`` instead of ``27 c_in`` multiply-adds per output channel (a "(2+1)-D"
    convolution, no nonlinearity in between: the composition is a 3x3x3 convolution whose
    kernel has rank <= ``c`` across the two factors)."""

    features: int
    impl: str
    ndim: int
    factorised: bool = False

    @nn.compact
    def __call__(self, x, padding="SAME"):
        # Parameters are created in this order (kernel, [kernel_z,] bias): Flax draws each
        # one's initialisation key in creation order, so it fixes the initial weights.
        init, zeros = nn.initializers.lecun_normal(), nn.initializers.zeros_init()
        if self.factorised and self.ndim == 3:
            wxy = self.param("kernel", init, (1, 3, 3, x.shape[-1], self.features))
            wz = self.param("kernel_z", init, (3, 1, 1, self.features, self.features))
            b = self.param("bias", zeros, (self.features,))
            y = ops.conv(x, wxy, impl=self.impl, padding=padding)
            return ops.conv_bias(y, wz, b, impl=self.impl, padding=padding)
        k = (3,) * self.ndim
        w = self.param("kernel", init, k + (x.shape[-1], self.features))
        b = self.param("bias", zeros, (self.features,))
        return ops.conv_bias(x, w, b, impl=self.impl, padding=padding)


class N2FNet(nn.Module):
    """Expert CNN: ``depth`` x [3x3 conv, ReLU] -> 1x1 conv -> sigmoid.

    Zero ("SAME") padding (the authors reflect-pad, which doubles XLA:CPU's forward cost).
    ``factorised``: volumes' layers as (2+1)-D convolutions (:class:`_Conv`).
    Maps ``(*b, *s)`` to ``(*b, *s)`` (``channels = 0``) or ``(*b, L, *s)`` to ``(*b, L, *s)``.
    """

    width: int = 32
    depth: int = 4
    impl: str = "lax"
    ndim: int = 2
    channels: int = 0
    factorised: bool = False

    @nn.compact
    def __call__(self, x, valid=None, trim=False):
        """``valid`` (optional, ``(*b, *s)`` 0/1): where the pixels lie inside the image; hidden
        activations are zeroed outside, which reproduces the per-layer zero padding at the
        image border inside tiles and crops cut from a zero-padded image.

        ``trim``: ``VALID`` convolutions — the output lacks ``depth`` pixels on every side of
        each spatial axis (``(*b, *(s - 2 depth))``) and equals the ``SAME`` output there; only
        the pixels whose receptive field lies inside ``x`` are computed (crops and tiles read
        with a halo of ``depth`` pixels need no more)."""
        nd, nc = self.ndim, self.channels
        if nc:
            lead, core = x.shape[: -(nd + 1)], x.shape[-(nd + 1):]
            h = jnp.moveaxis(x.reshape((-1,) + core), 1, -1)
        else:
            lead, core = x.shape[:-nd], x.shape[-nd:]
            h = x.reshape((-1,) + core + (1,))
        v = None if valid is None else valid.reshape((-1,) + core[-nd:] + (1,)).astype(h.dtype)
        one = (slice(None),) + (slice(1, -1),) * nd
        for _ in range(self.depth):
            conv = _Conv(self.width, self.impl, nd, self.factorised)
            h = nn.relu(conv(h, "VALID" if trim else "SAME"))
            v = v[one] if trim and v is not None else v
            h = h if v is None else h * v
        h = nn.sigmoid(nn.Dense(max(nc, 1))(h))
        out = h.shape[1:1 + nd]
        if nc:
            return jnp.moveaxis(h, -1, 1).reshape(lead + core[:1] + out)
        return h[..., 0].reshape(lead + out)
